"""The diffusion examples end to end on tiny local models (`--tiny`), and the image evaluation they share."""

import json
import math
import os
import re

import numpy as np
import pytest
from PIL import Image

from raft_trainer.diffusion.denoising import LORA_WEIGHT_NAME
from raft_trainer.diffusion.image_evaluation import evaluate_images
from raft_trainer.diffusion.tiny import tiny_aesthetic_scorer, tiny_clip_score, tiny_sd_pipeline
from raft_trainer.files import stage_file_path

from .helpers import load_example

resolution = load_example("diffusion/raft_sd_resolution.py")
text_alignment = load_example("diffusion/raft_sd_text_alignment.py")

SEED = 3
# Two short stages of 16x16 images (a quarter of the tiny pipeline's work at 32x32), in one big generation batch.
SMALL_RUN = (
    "--tiny --height 16 --width 16 --num_stages 2 --prompts_per_stage 2 --num_generations 2 --num_inference_steps 2 "
    "--iterations_per_stage 2 --per_device_train_batch_size 2 --learning_rate 1e-1 --eval_images_per_prompt 1 "
    "--generation_batch_size 128 "
    f"--seed {SEED} --save_strategy no --report_to none --disable_tqdm true"
).split()
# What the examples generate with under SMALL_RUN (guidance 7.5 is the examples' default).
GENERATION = dict(
    images_per_prompt=1, seed=SEED, batch_size=128, height=16, width=16, num_inference_steps=2, guidance_scale=7.5
)


def brightness(images, **kwargs):
    return [float(np.asarray(image, dtype=np.float64).mean() / 255) for image in images]


def evaluate_sets(pipeline, prompt_sets: dict, reward_functions: dict) -> dict:
    return {
        name: evaluate_images(pipeline, prompts, reward_functions, **GENERATION)
        for name, prompts in prompt_sets.items()
    }


def assert_same_evaluation(actual: dict, expected: dict):
    """Equal {prompt set: {reward: {mean, std}}} evaluations, up to float rounding: the same weights make the same
    images up to the last bits, which CPU kernels round differently with tensor layouts."""
    assert actual.keys() == expected.keys()
    for set_name, scores in expected.items():
        assert actual[set_name].keys() == scores.keys()
        for name, score in scores.items():
            assert actual[set_name][name] == pytest.approx(score, rel=1e-5), (set_name, name)


def test_resolution_example_evaluates_before_and_after_on_cifar_labels(tmp_path, capsys):
    out = tmp_path / "run"
    summary = resolution.main([*SMALL_RUN, "--prompt_template", "a photo of a {}", "--output_dir", str(out)])

    assert (out / LORA_WEIGHT_NAME).is_file()
    assert all(os.path.isfile(stage_file_path(str(out), stage)) for stage in range(2))
    assert [record["stage"] for record in summary["stages"]] == [0, 1]
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation == summary["evaluation"]
    assert evaluation["settings"]["num_prompts"] == {"in_domain": 10, "out_of_domain": 100}
    for moment in ("before", "after"):
        assert set(evaluation[moment]) == {"in_domain", "out_of_domain"}
        for scores in evaluation[moment].values():
            assert set(scores) == {"aesthetic", "clip_score"}
            assert all(math.isfinite(score[key]) for score in scores.values() for key in ("mean", "std"))
    assert "out_of_domain   after" in capsys.readouterr().out  # the printed table
    grids = {
        moment: np.asarray(Image.open(out / "eval" / f"in_domain_{moment}.png").convert("RGB"), dtype=np.float64)
        for moment in ("before", "after")
    }
    assert grids["before"].shape == grids["after"].shape and grids["before"].shape[1] == 10 * 16  # a row of labels
    assert np.abs(grids["before"] - grids["after"]).mean() > 0  # training changed the images
    assert (out / "eval" / "out_of_domain_after.png").is_file()

    # The same numbers from an independent evaluation: the untouched pipeline, then with the saved LoRA loaded.
    prompt_sets = {
        "in_domain": [f"a photo of a {label}" for label in resolution.CIFAR10_LABELS],
        "out_of_domain": [f"a photo of a {label}" for label in resolution.CIFAR100_LABELS],
    }
    rewards = {"aesthetic": tiny_aesthetic_scorer(), "clip_score": tiny_clip_score()}
    pipeline = tiny_sd_pipeline()
    assert_same_evaluation(evaluation["before"], evaluate_sets(pipeline, prompt_sets, rewards))
    pipeline.load_lora_weights(str(out))
    assert_same_evaluation(evaluation["after"], evaluate_sets(pipeline, prompt_sets, rewards))
    before, after = (evaluation[moment]["in_domain"]["clip_score"]["mean"] for moment in ("before", "after"))
    assert after != pytest.approx(before, rel=1e-4)  # training changed the pipeline, far beyond rounding


def test_cifar_label_constants():
    assert len(set(resolution.CIFAR10_LABELS)) == 10 and len(set(resolution.CIFAR100_LABELS)) == 100
    assert not set(resolution.CIFAR10_LABELS) & set(resolution.CIFAR100_LABELS)


def test_text_alignment_example_reads_prompts_and_evaluates_them(tmp_path):
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("lower newer\n\n  wider \nlowest\n")
    out = tmp_path / "run"
    summary = text_alignment.main(
        [*SMALL_RUN, "--prompts", str(prompts_file), "--eval_aesthetic", "true", "--output_dir", str(out)]
    )

    assert (out / LORA_WEIGHT_NAME).is_file()
    prompts = ["lower newer", "wider", "lowest"]
    for stage in range(2):
        rows = [json.loads(line) for line in open(stage_file_path(str(out), stage))]
        assert {row["prompt"] for row in rows} <= set(prompts)
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation == summary["evaluation"]
    assert set(evaluation["after"]) == {"prompts"}
    assert set(evaluation["after"]["prompts"]) == {"clip_score", "aesthetic"}
    rewards = {"clip_score": tiny_clip_score(), "aesthetic": tiny_aesthetic_scorer()}
    assert_same_evaluation(evaluation["before"], evaluate_sets(tiny_sd_pipeline(), {"prompts": prompts}, rewards))


@pytest.mark.parametrize(
    ("example", "argv", "message"),
    [
        (text_alignment, ["--prompts", "no/such/prompts.txt"], "--prompts 'no/such/prompts.txt': no such file"),
        (resolution, ["--prompt_template", "a photo of a cat"], re.escape("--prompt_template must hold {} once")),
        (resolution, ["--eval_images_per_prompt", "0"], "--eval_images_per_prompt must be >= 1"),
    ],
)
def test_bad_arguments_are_rejected_before_anything_is_loaded(tmp_path, example, argv, message):
    with pytest.raises(ValueError, match=message):
        example.main(["--tiny", "--output_dir", str(tmp_path), *argv])


def test_empty_prompts_file_is_rejected(tmp_path):
    (tmp_path / "prompts.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="holds no prompt"):
        text_alignment.read_prompts(str(tmp_path / "prompts.txt"))


def test_evaluate_images_reports_mean_and_std_of_the_rewards_of_seeded_images():
    pipeline, prompts = tiny_sd_pipeline(), ["lower newer", "wider", "lowest"]
    scored = []

    def recording_brightness(images, prompts):
        values = brightness(images)
        scored.extend(zip(prompts, values))
        return values

    def evaluate(reward, seed=5, batch_size=4) -> dict:
        settings = dict(seed=seed, batch_size=batch_size, height=32, width=32, num_inference_steps=2)
        return evaluate_images(pipeline, prompts, {"brightness": reward}, 2, **settings)["brightness"]

    result = evaluate(recording_brightness)
    assert [prompt for prompt, _ in scored] == [prompt for prompt in prompts for _ in range(2)]
    values = [value for _, value in scored]
    assert result == {"mean": pytest.approx(np.mean(values)), "std": pytest.approx(np.std(values))}
    assert len(set(values)) == len(values)  # every image from its own noise

    # Each image's noise depends on the seed only, not on how the images are batched (batching may still move a
    # pixel by a rounding step).
    assert evaluate(brightness, batch_size=6) == pytest.approx(result, rel=1e-4)
    assert evaluate(brightness, seed=6) != pytest.approx(result, rel=1e-4)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(prompts=[]), "prompts must be a non-empty list"),
        (dict(reward_functions={}), "reward_functions is empty"),
        (dict(images_per_prompt=0), "images_per_prompt must be >= 1"),
        (dict(reward_functions={"short": lambda images, prompts: [0.0]}), "'short' returned 1 values for 2 images"),
    ],
)
def test_evaluate_images_rejects_bad_arguments(arguments, message):
    call = dict(prompts=["wider", "lower"], reward_functions={"brightness": brightness}, height=32, width=32)
    with pytest.raises(ValueError, match=message):
        evaluate_images(tiny_sd_pipeline(), **{**call, **arguments, "num_inference_steps": 1})
