import pytest

from raft_trainer import RAFTConfig


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_stages", 0, "num_stages must be >= 1"),
        ("prompts_per_stage", 0, "prompts_per_stage must be >= 1"),
        ("num_generations", 0, "num_generations must be >= 1"),
        ("ranking", "best", "ranking must be 'local' or 'global'"),
        ("generation_batch_size", 0, "generation_batch_size must be >= 1"),
        ("max_steps", 10, "max_steps is not used by RAFT"),
        ("beta", -0.1, "beta must be >= 0"),
        ("temperature", 0.0, "temperature must be > 0"),
        ("top_k", -1, "top_k must be >= 0"),
        ("top_p", 1.5, r"top_p must be in \(0, 1\]"),
        ("max_prompt_length", 0, "max_prompt_length must be >= 1 or None"),
        ("max_completion_length", 0, "max_completion_length must be >= 1"),
        ("epochs_per_stage", 0, "epochs_per_stage must be >= 1"),
    ],
)
def test_invalid_values_are_rejected_with_the_field_named(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        RAFTConfig(output_dir=str(tmp_path), **{field: value})


def test_one_trainer_epoch_per_stage_and_per_stage_logging(tmp_path):
    args = RAFTConfig(output_dir=str(tmp_path), num_stages=7)
    assert args.num_train_epochs == 7
    assert args.logging_strategy == "epoch"


def test_global_ranking_draws_k_times_more_prompts_with_one_candidate_each(tmp_path):
    local = RAFTConfig(output_dir=str(tmp_path), prompts_per_stage=5, num_generations=4)
    global_ = RAFTConfig(output_dir=str(tmp_path), prompts_per_stage=5, num_generations=4, ranking="global")
    assert (local.prompts_drawn_per_stage, local.generations_per_prompt) == (5, 4)
    assert (global_.prompts_drawn_per_stage, global_.generations_per_prompt) == (20, 1)


def test_every_raft_field_is_documented():
    import dataclasses

    from transformers import TrainingArguments

    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    for field in dataclasses.fields(RAFTConfig):
        if field.name not in inherited:
            assert field.metadata.get("help"), field.name
            assert f"{field.name} (`" in RAFTConfig.__doc__ + RAFTConfig.__mro__[1].__doc__, field.name
