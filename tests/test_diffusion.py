"""DiffusionRAFTTrainer on a tiny Stable Diffusion pipeline built from configs (32x32 images, milliseconds a step)."""

import os
import sys
import types

import numpy as np
import pytest
import torch
from datasets import Dataset
from diffusers import DDIMScheduler, StableDiffusionPipeline
from PIL import Image

from raft_trainer import DiffusionRAFTConfig, DiffusionRAFTTrainer
from raft_trainer.diffusion.denoising import LORA_WEIGHT_NAME
from raft_trainer.diffusion.tiny import tiny_aesthetic_scorer, tiny_clip_score, tiny_sd_pipeline

from .helpers import check_two_stage_resume, config_maker, stage_rows

PROMPTS = ["lower newer", "wider", "lowest", "low wider"]


def brightness(images, **kwargs):
    return [float(np.asarray(image, dtype=np.float64).mean() / 255) for image in images]


def redness(images, **kwargs):
    return [float(np.asarray(image, dtype=np.float64)[..., 0].mean() / 255) for image in images]


@pytest.fixture
def prompts():
    return Dataset.from_dict({"prompt": PROMPTS})


@pytest.fixture
def make_args(tmp_path):
    return config_maker(
        tmp_path,
        DiffusionRAFTConfig,
        num_generations=3,
        height=32,
        width=32,
        num_inference_steps=3,
        iterations_per_stage=3,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
    )


def images_of(pipeline, seed: int = 0) -> np.ndarray:
    output = pipeline(
        PROMPTS[:2], height=32, width=32, num_inference_steps=3, generator=torch.Generator().manual_seed(seed)
    )
    return np.stack([np.asarray(image, dtype=np.float64) for image in output.images])


def test_keeps_the_best_image_of_each_prompt_and_saves_it(prompts, make_args):
    args = make_args()
    trainer = DiffusionRAFTTrainer(tiny_sd_pipeline(), brightness, args=args, train_dataset=prompts)
    trainer.train()

    rows = stage_rows(args.output_dir)
    assert list(rows[0]) == ["stage", "group", "prompt_index", "prompt", "reward", "selected", "image"]
    assert len(rows) == len(PROMPTS) * 3
    stages_dir = os.path.join(args.output_dir, "stages")
    for start in range(0, len(rows), 3):
        candidates = rows[start : start + 3]
        assert len({row["prompt"] for row in candidates}) == 1
        best = max(range(3), key=lambda i: candidates[i]["reward"])
        assert [row["selected"] for row in candidates] == [i == best for i in range(3)]
        kept = candidates[best]
        # the saved PNG is the image that was scored
        assert brightness([Image.open(os.path.join(stages_dir, kept["image"]))]) == [kept["reward"]]
        assert all(row["image"] is None for row in candidates if not row["selected"])
    grid = Image.open(os.path.join(stages_dir, "stage_000_grid.png"))
    assert grid.width == 4 * 32 and grid.height > 32  # four kept images in a row, captions below
    (record,) = [record for record in trainer.state.log_history if "stage" in record]
    assert record["reward_kept_mean"] == pytest.approx(np.mean([r["reward"] for r in rows if r["selected"]]))
    assert trainer.state.global_step == 3  # iterations_per_stage optimizer steps


def test_global_ranking_keeps_the_top_of_the_pool(prompts, make_args):
    args = make_args(ranking="global", prompts_per_stage=2, num_generations=2, save_candidate_images=True)
    DiffusionRAFTTrainer(tiny_sd_pipeline(), brightness, args=args, train_dataset=prompts).train()
    rows = stage_rows(args.output_dir)
    assert len(rows) == 4 and all(row["image"] is not None for row in rows)  # every candidate saved
    top_two = sorted(rows, key=lambda row: row["reward"], reverse=True)[:2]
    assert [row for row in rows if row["selected"]] == [row for row in rows if row in top_two]


def test_saved_lora_loads_in_diffusers_and_reproduces_the_trained_pipeline(prompts, make_args, tmp_path):
    base = tiny_sd_pipeline()
    base.save_pretrained(tmp_path / "base")
    base_images = images_of(base)
    args = make_args(iterations_per_stage=5)
    trainer = DiffusionRAFTTrainer(base, brightness, args=args, train_dataset=prompts)
    trainer.train()
    trainer.save_model(str(tmp_path / "lora"))
    assert os.path.isfile(tmp_path / "lora" / LORA_WEIGHT_NAME)
    assert "RAFT" in (tmp_path / "lora" / "README.md").read_text()

    loaded = StableDiffusionPipeline.from_pretrained(tmp_path / "base")
    loaded.load_lora_weights(tmp_path / "lora")
    trained_images = images_of(trainer.pipeline)
    assert np.abs(trained_images - base_images).max() > 1  # the LoRA changed the pipeline
    np.testing.assert_allclose(images_of(loaded), trained_images, atol=1)  # 8-bit images: at most 1 level apart


def test_guidance_scale_and_negative_prompt_reach_the_pipeline(prompts, make_args):
    def first_images(**overrides):
        trainer = DiffusionRAFTTrainer(
            tiny_sd_pipeline(), brightness, args=make_args(**overrides), train_dataset=prompts
        )
        return np.stack([np.asarray(image, dtype=np.float64) for image in trainer.generate([0], PROMPTS[:1])["image"]])

    guided = first_images()
    assert np.array_equal(first_images(), guided)  # same seed, same images
    assert not np.array_equal(first_images(negative_prompt="wider"), guided)
    assert not np.array_equal(first_images(guidance_scale=1.0), guided)


def test_weighted_list_of_image_rewards(prompts, make_args):
    aesthetic, clip_score = tiny_aesthetic_scorer(), tiny_clip_score()
    args = make_args(reward_weights=[1.0, 0.5], save_candidate_images=True)
    DiffusionRAFTTrainer(tiny_sd_pipeline(), [aesthetic, clip_score], args=args, train_dataset=prompts).train()
    rows = stage_rows(args.output_dir)
    images = [Image.open(os.path.join(args.output_dir, "stages", row["image"])) for row in rows]
    prompts_of_rows = [row["prompt"] for row in rows]
    expected_aesthetic = aesthetic(images=images, prompts=prompts_of_rows)
    expected_clip = clip_score(images=images, prompts=prompts_of_rows)
    np.testing.assert_allclose([row["reward_aesthetic"] for row in rows], expected_aesthetic, rtol=1e-5)
    np.testing.assert_allclose([row["reward_clip_score"] for row in rows], expected_clip, rtol=1e-5)
    np.testing.assert_allclose(
        [row["reward"] for row in rows], np.add(expected_aesthetic, 0.5 * np.asarray(expected_clip)), rtol=1e-5
    )


@pytest.mark.parametrize(("prediction_type", "snr_gamma"), [("epsilon", None), ("v_prediction", 5.0)])
def test_denoising_loss_follows_the_definition(prompts, make_args, prediction_type, snr_gamma):
    pipeline = tiny_sd_pipeline()
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config, prediction_type=prediction_type)
    trainer = DiffusionRAFTTrainer(pipeline, brightness, args=make_args(snr_gamma=snr_gamma), train_dataset=prompts)
    generator = torch.Generator().manual_seed(1)
    batch = {
        "latent_moments": torch.randn(2, 8, 16, 16, generator=generator),
        "prompt_embeds": torch.randn(2, 77, 8, generator=generator),
    }
    torch.manual_seed(0)
    loss = trainer.compute_loss(trainer.model, batch)

    # The same draws, in the same order: the latent sample, the noise, the timesteps.
    torch.manual_seed(0)
    mean, log_var = batch["latent_moments"].chunk(2, dim=1)
    latents = (mean + torch.exp(0.5 * log_var.clamp(-30, 20)) * torch.randn_like(mean)) * 0.18215
    noise = torch.randn_like(latents)
    timesteps = torch.randint(0, 1000, (2,))
    alpha_bar = trainer.noise_scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    noisy = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
    with torch.no_grad():
        prediction = trainer.model(noisy, timesteps, batch["prompt_embeds"]).sample
    if prediction_type == "epsilon":
        target, weights = noise, torch.ones(2)
    else:
        target = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents
        snr = (alpha_bar / (1 - alpha_bar)).view(-1)
        weights = torch.clamp(snr, max=snr_gamma) / (snr + 1)
    expected = (((prediction - target) ** 2).mean(dim=(1, 2, 3)) * weights).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-6)


def test_resumed_run_ends_with_the_same_lora(prompts, make_args, tmp_path):
    # Stage 1 crashes while scoring: its images come back from the in-flight file (PNG, lossless), not generated.
    def make_trainer(reward, output_dir):
        args = make_args(output_dir=output_dir, num_stages=2, save_strategy="epoch")
        return DiffusionRAFTTrainer(tiny_sd_pipeline(), reward, args=args, train_dataset=prompts)

    check_two_stage_resume(make_trainer, brightness, tmp_path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"height": 30}, "height must be a positive multiple of 8"),
        ({"iterations_per_stage": 0}, "iterations_per_stage must be >= 1"),
        ({"lora_rank": 0}, "lora_rank must be >= 1"),
        ({"snr_gamma": -1.0}, "snr_gamma must be > 0"),
        ({"num_generations": 0}, "num_generations must be >= 1"),
    ],
)
def test_bad_configuration_is_rejected(make_args, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(**overrides)


def test_chat_prompts_are_rejected_before_anything_is_loaded(make_args):
    chat = Dataset.from_dict({"prompt": [[{"role": "user", "content": "a cat"}]]})
    with pytest.raises(ValueError, match="needs text prompts"):
        DiffusionRAFTTrainer("no/such-pipeline", brightness, args=make_args(), train_dataset=chat)


def test_log_completions_logs_the_kept_images_to_the_tracker(prompts, make_args, monkeypatch):
    logged = []
    fake_wandb = types.ModuleType("wandb")  # stands in for a running wandb session
    fake_wandb.run, fake_wandb.Table, fake_wandb.log = object(), (lambda dataframe: dataframe), logged.append
    fake_wandb.Image = lambda path: Image.open(path)
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    args = make_args(log_completions=True)
    trainer = DiffusionRAFTTrainer(tiny_sd_pipeline(), brightness, args=args, train_dataset=prompts)
    trainer.args.report_to = ["wandb"]  # set after construction, so the Trainer starts no real wandb run
    trainer.train()
    (table,) = [entry["stage_samples"] for entry in logged]
    kept = [row for row in stage_rows(args.output_dir) if row["selected"]]
    assert list(table["prompt"]) == [row["prompt"] for row in kept]
    assert brightness(list(table["image"])) == list(table["reward"]) == [row["reward"] for row in kept]


def test_pipeline_kwargs_from_the_command_line_load_in_half_precision(prompts, make_args, tmp_path):
    tiny_sd_pipeline().save_pretrained(tmp_path / "base")
    args = make_args(pipeline_init_kwargs='{"torch_dtype": "float16"}')  # JSON text, as a flag gives it
    assert args.pipeline_init_kwargs == {"torch_dtype": "float16"}
    trainer = DiffusionRAFTTrainer(str(tmp_path / "base"), brightness, args=args, train_dataset=prompts)
    assert trainer.pipeline.vae.dtype == torch.float16
    lora = [parameter for name, parameter in trainer.model.named_parameters() if "lora" in name]
    assert lora and all(parameter.dtype == torch.float32 for parameter in lora)  # the LoRA trains in float32
    with pytest.raises(ValueError, match="pipeline_init_kwargs\\['torch_dtype'\\] = 'half16' is not a torch dtype"):
        make_args(pipeline_init_kwargs={"torch_dtype": "half16"})
    with pytest.raises(ValueError, match="pipeline_init_kwargs must be a dict or JSON text"):
        make_args(pipeline_init_kwargs="{torch_dtype: float16}")


def test_evaluate_scores_one_seeded_image_per_held_out_prompt_and_writes_their_grid(prompts, make_args):
    held_out = Dataset.from_dict({"prompt": ["newer lowest", "wide", "lower"]})
    args = make_args()
    trainer = DiffusionRAFTTrainer(
        tiny_sd_pipeline(), [brightness, redness], args=args, train_dataset=prompts, eval_dataset=held_out
    )
    metrics = trainer.evaluate()
    # by hand: each prompt's image from its own generator, with the training sampler's settings
    seeds = np.random.SeedSequence([args.seed, 0]).generate_state(3)
    images = trainer.pipeline(
        list(held_out["prompt"]),
        height=32,
        width=32,
        num_inference_steps=3,
        guidance_scale=trainer.args.guidance_scale,
        generator=[torch.Generator().manual_seed(int(seed)) for seed in seeds],
    ).images
    for name, function in (("brightness", brightness), ("redness", redness)):
        assert metrics[f"eval_reward/{name}"] == pytest.approx(np.mean(function(images)))
    assert metrics["eval_reward"] == pytest.approx(np.mean(brightness(images)) + np.mean(redness(images)))
    assert trainer.evaluate()["eval_reward"] == metrics["eval_reward"]  # the same noise at every evaluation
    grid = Image.open(os.path.join(args.output_dir, "eval", "eval_step_000000.png"))
    assert grid.size[0] == 3 * 32 and grid.size[1] > 32  # three images in a row, their rewards below


def test_evaluation_each_stage_leaves_training_as_it_was(prompts, make_args):
    def lora_after(**evaluation):
        args = make_args(num_stages=2, output_dir=make_args().output_dir + str(len(evaluation)), **evaluation)
        held_out = Dataset.from_dict({"prompt": ["wide", "lower"]}) if evaluation else None
        trainer = DiffusionRAFTTrainer(
            tiny_sd_pipeline(), brightness, args=args, train_dataset=prompts, eval_dataset=held_out
        )
        trainer.train()
        evaluations = [record for record in trainer.state.log_history if "eval_reward" in record]
        weights = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
        return weights, evaluations, args

    plain, none, _ = lora_after()
    evaluated, evaluations, args = lora_after(eval_strategy="epoch")
    assert none == [] and len(evaluations) == 2  # one evaluation a stage
    assert sorted(os.listdir(os.path.join(args.output_dir, "eval"))) == [
        f"eval_step_{step:06d}.png" for step in sorted({record["step"] for record in evaluations})
    ]
    assert plain.keys() == evaluated.keys()
    assert all(torch.equal(plain[name], evaluated[name]) for name in plain)


def test_evaluation_settings_are_checked_before_the_pipeline_loads(prompts, make_args):
    with pytest.raises(ValueError, match="eval_strategy='epoch' needs held-out prompts: pass eval_dataset"):
        DiffusionRAFTTrainer(
            "no/such-pipeline", brightness, args=make_args(eval_strategy="epoch"), train_dataset=prompts
        )
    chat = Dataset.from_dict({"prompt": [[{"role": "user", "content": "a cat"}]]})
    with pytest.raises(ValueError, match=r"eval_dataset\['cats'\]\['prompt'\] holds chat messages"):
        DiffusionRAFTTrainer(
            "no/such-pipeline", brightness, args=make_args(), train_dataset=prompts, eval_dataset={"cats": chat}
        )
