"""The SDXL, SD3 and FLUX.1 examples end to end on tiny local models (`--tiny`)."""

import json

import pytest
from safetensors.torch import load_file

from raft_trainer.diffusion.denoising import LORA_WEIGHT_NAME
from raft_trainer.diffusion.image_evaluation import evaluate_images
from raft_trainer.diffusion.rewards import JPEGCompressibility
from raft_trainer.diffusion.tiny import tiny_flux_pipeline, tiny_sd3_pipeline, tiny_sdxl_pipeline

from .helpers import load_example, stage_rows

PROMPTS = ["lower newer", "wider", "lowest"]
# One short stage of 16x16 images, scored by the JPEG reward (no model to build).
SMALL_RUN = (
    "--tiny --height 16 --width 16 --num_stages 1 --prompts_per_stage 2 --num_generations 2 --num_inference_steps 2 "
    "--iterations_per_stage 2 --learning_rate 1e-1 --generation_batch_size 64 --reward jpeg_compressibility "
    "--seed 3 --save_strategy no --report_to none --disable_tqdm true"
).split()
EXAMPLES = {
    "raft_sdxl.py": (tiny_sdxl_pipeline, "unet.", {}),
    "raft_sd3.py": (tiny_sd3_pipeline, "transformer.", {"max_sequence_length": 16}),
    "raft_flux.py": (tiny_flux_pipeline, "transformer.", {"max_sequence_length": 16}),
}


@pytest.mark.parametrize("script", list(EXAMPLES))
def test_family_example_trains_saves_a_loadable_lora_and_evaluates_it(script, tmp_path):
    build, prefix, sequence = EXAMPLES[script]
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "run"
    summary = load_example(f"diffusion/{script}").main(
        [*SMALL_RUN, "--prompts", str(prompts_file), "--output_dir", str(out)]
    )

    assert all(key.startswith(prefix) for key in load_file(out / LORA_WEIGHT_NAME))
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation == summary["evaluation"]
    settings = evaluation["settings"]
    assert settings.get("max_sequence_length") == sequence.get("max_sequence_length")  # generated as trained
    # "after" is the tiny pipeline with the saved LoRA loaded, generated with the recorded settings.
    pipeline = build()
    pipeline.load_lora_weights(str(out))
    generation = {key: value for key, value in settings.items() if key not in ("num_prompts", "negative_prompt")}
    after = evaluate_images(pipeline, PROMPTS, {"jpeg_compressibility": JPEGCompressibility()}, **generation)
    assert after["jpeg_compressibility"] == pytest.approx(evaluation["after"]["prompts"]["jpeg_compressibility"])


@pytest.mark.parametrize(("first", "second"), [("pickscore", "aesthetic"), ("hpsv2", "clip_score")])
def test_family_example_ranks_by_two_weighted_rewards_and_evaluates_both(tmp_path, first, second):
    out = tmp_path / "run"
    run = [arg for arg in SMALL_RUN if arg not in ("--reward", "jpeg_compressibility")]
    summary = load_example("diffusion/raft_sdxl.py").main(
        [*run, "--reward", f"{first},{second}", "--reward_weights", "1.0", "0.5", "--output_dir", str(out)]
    )

    rows = stage_rows(str(out))
    assert rows and all(
        row["reward"] == pytest.approx(row[f"reward_{first}"] + 0.5 * row[f"reward_{second}"], abs=1e-5)
        for row in rows
    )
    # Ranked by the weighted sum: each prompt's kept image is its best by it.
    for prompt_index in {row["prompt_index"] for row in rows}:
        candidates = [row for row in rows if row["prompt_index"] == prompt_index]
        assert max(candidates, key=lambda row: row["reward"])["selected"]
    assert set(summary["evaluation"]["after"]["prompts"]) == {first, second}
    assert (out / LORA_WEIGHT_NAME).is_file()


@pytest.mark.parametrize("reward", ["imagereward", "pickscore,imagereward", "aesthetic,aesthetic", ","])
def test_family_example_rejects_an_unknown_reward_before_loading_anything(tmp_path, reward):
    with pytest.raises(
        ValueError, match="--reward must be one of aesthetic, clip_score, pickscore, hpsv2, jpeg_compr"
    ):
        load_example("diffusion/raft_sd3.py").main(["--tiny", "--reward", reward, "--output_dir", str(tmp_path)])
