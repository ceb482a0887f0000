"""docs/grpo_config.md maps every field TRL's GRPOConfig adds to TrainingArguments, read from the installed trl: a
TRL release that adds a field fails here until the page says what it is in RAFTConfig."""

import dataclasses
import re
from pathlib import Path

import pytest
from transformers import TrainingArguments
from trl import GRPOConfig

from raft_trainer import RAFTConfig

PAGE = Path(__file__).resolve().parent.parent / "docs" / "grpo_config.md"
STATUSES = ("same", "other meaning", "equivalent", "does not apply", "not supported")


def mapped() -> dict[str, str]:
    """The page's first table: GRPOConfig field -> its status in RAFTConfig."""
    rows = {}
    for line in PAGE.read_text().split("## Shared names")[0].splitlines():
        match = re.match(r"\| `(\w+)` \| ([^|]+) \|", line)
        if match:
            rows[match.group(1)] = match.group(2).strip()
    return rows


def test_every_grpo_config_field_is_mapped_to_raft_config():
    grpo_fields = [
        f.name for f in dataclasses.fields(GRPOConfig) if f.name not in TrainingArguments.__dataclass_fields__
    ]
    rows = mapped()
    assert [name for name in grpo_fields if name not in rows] == []
    raft_fields = set(RAFTConfig.__dataclass_fields__)
    for name, status in rows.items():
        assert status.split(":")[0] in STATUSES, (name, status)
        # "same" and "other meaning" are exactly the names the two configurations share
        assert (status in ("same", "other meaning")) == (name in raft_fields), (name, status)
        if status.startswith("equivalent: "):
            named = re.findall(r"`([\w.]+)`", status)
            # a RAFTConfig field, or the one setting that stays with the model (its generation_config)
            allowed = raft_fields | {"generation_config.cache_implementation"}
            assert named and set(named) <= allowed, (name, status)


def test_the_shared_names_with_another_meaning_are_explained():
    rows = mapped()
    other = {name for name, status in rows.items() if status == "other meaning"}
    explained = set(re.findall(r"^\| `(\w+)` \|", PAGE.read_text().split("## Shared names")[1], re.M))
    assert other == explained == {"beta", "loss_type", "generation_batch_size"}


def grpo_config(tmp_path, **overrides) -> GRPOConfig:
    return GRPOConfig(
        output_dir=str(tmp_path / "grpo"),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=4,
        num_generations=4,
        report_to="none",
        **overrides,
    )


def test_a_grpo_config_carries_over(tmp_path, caplog):
    grpo = grpo_config(
        tmp_path,
        learning_rate=3e-6,
        temperature=0.7,
        max_completion_length=12,
        mask_truncated_completions=True,
        epsilon_high=0.28,
        beta=0.04,
        num_iterations=2,
        delta=3.0,
        disable_dropout=True,
        repetition_penalty=1.1,
        entropy_coef=0.01,
        loss_type="grpo",
        num_train_epochs=2,
    )
    with caplog.at_level("WARNING", logger="raft_trainer"):
        args = RAFTConfig.from_grpo_config(grpo, num_stages=3)
    carried = ("learning_rate", "temperature", "max_completion_length", "mask_truncated_completions", "epsilon_high")
    assert [getattr(args, name) for name in carried] == [getattr(grpo, name) for name in carried]
    assert (args.kl_loss_coef, args.beta, args.epochs_per_stage, args.dual_clip) == (0.04, 0.0, 2, 3.0)
    assert args.disable_dropout and args.loss_type == "raft" and args.num_stages == 3
    assert args.generation_batch_size == RAFTConfig.__dataclass_fields__["generation_batch_size"].default
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1  # one warning names every GRPO-only setting that was changed, and only those
    assert args.repetition_penalty == 1.1 and args.entropy_coef == 0.0  # entropy_coef shapes the clipped losses only
    assert "0.01 for entropy_coef" in warnings[0] and "repetition_penalty" not in warnings[0]
    assert "loss_type='grpo'" in warnings[0] and "temperature" not in warnings[0]
    assert "num_train_epochs=2 (a run's length is num_stages)" in warnings[0]
    assert RAFTConfig.from_grpo_config(grpo, loss_type="raft++").entropy_coef == 0.01


def test_a_grpo_config_at_its_defaults_carries_over_without_a_warning(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="raft_trainer"):
        args = RAFTConfig.from_grpo_config(grpo_config(tmp_path))
    assert caplog.records == []
    assert args.disable_dropout is None  # RAFT's own default: off for raft, on for the clipped losses


def test_raft_trainer_takes_a_grpo_config_and_refuses_other_args(tmp_path, make_model, tokenizer, prompts):
    from raft_trainer import RAFTTrainer

    from .helpers import share_of_apple

    grpo = grpo_config(tmp_path, max_completion_length=6, learning_rate=1e-3, disable_tqdm=True, save_strategy="no")
    trainer = RAFTTrainer(make_model(), share_of_apple, args=grpo, train_dataset=prompts, processing_class=tokenizer)
    assert isinstance(trainer.args, RAFTConfig) and trainer.args.learning_rate == 1e-3
    trainer.args.num_stages = trainer.args.num_train_epochs = 1
    trainer.train()
    assert trainer.state.global_step > 0
    with pytest.raises(ValueError, match="args must be a RAFTConfig"):
        RAFTTrainer(
            make_model(),
            share_of_apple,
            args=TrainingArguments(output_dir=str(tmp_path / "plain"), use_cpu=True),
            train_dataset=prompts,
            processing_class=tokenizer,
        )


def test_raft_trainer_takes_grpo_trainers_parameters_in_its_order(make_model, tokenizer, prompts, make_args):
    import inspect

    from trl import GRPOTrainer

    from raft_trainer import RAFTTrainer

    from .helpers import share_of_apple

    held_out = prompts.select(range(2))
    trainer = RAFTTrainer(make_model(), share_of_apple, make_args(), prompts, held_out, tokenizer)  # as GRPOTrainer
    assert trainer.eval_dataset is held_out and trainer.processing_class is tokenizer

    def positional(cls):
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
        return [p.name for p in parameters if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]

    ours = positional(RAFTTrainer)
    assert ours == positional(GRPOTrainer)[: len(ours)]
    assert ours[:6] == ["model", "reward_funcs", "args", "train_dataset", "eval_dataset", "processing_class"]


def test_continuous_batching_carries_over_under_either_of_grpos_names(tmp_path, caplog):
    settings = {"max_batch_tokens": 256}
    new = grpo_config(
        tmp_path, use_transformers_continuous_batching=True, transformers_continuous_batching_config=settings
    )
    with caplog.at_level("WARNING", logger="raft_trainer"):
        args = RAFTConfig.from_grpo_config(new)
        deprecated = RAFTConfig.from_grpo_config(grpo_config(tmp_path, use_transformers_paged=True))
    assert caplog.records == []
    assert args.continuous_batching == settings
    assert deprecated.use_transformers_continuous_batching and deprecated.continuous_batching == {}
    assert RAFTConfig.from_grpo_config(grpo_config(tmp_path)).continuous_batching is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(transformers_continuous_batching_config={"max_batch": 8}), r"does not take: \['max_batch'\]"),
        (dict(transformers_continuous_batching_config="{max"), "must be a dict or JSON text"),
        (dict(use_vllm=True), "set one of them"),
        (dict(repetition_penalty=1.2), "drops repetition_penalty"),
    ],
)
def test_continuous_batching_settings_are_checked_before_anything_runs(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        RAFTConfig(output_dir=str(tmp_path), use_transformers_continuous_batching=True, **settings)
    as_json = RAFTConfig(output_dir=str(tmp_path), transformers_continuous_batching_config='{"num_blocks": 16}')
    assert as_json.transformers_continuous_batching_config == {"num_blocks": 16}


def test_raft_trainer_samples_with_continuous_batching_when_asked(
    make_model, tokenizer, prompts, make_args, monkeypatch
):
    from transformers import GenerationMixin

    from raft_trainer import RAFTTrainer

    from .helpers import read_stage, share_of_apple

    calls = []
    generate_batch = GenerationMixin.generate_batch
    monkeypatch.setattr(GenerationMixin, "generate_batch", lambda *a, **k: calls.append(k) or generate_batch(*a, **k))
    args = make_args(
        use_transformers_continuous_batching=True, transformers_continuous_batching_config={"num_blocks": 64}
    )
    trainer = RAFTTrainer(make_model(), share_of_apple, args=args, train_dataset=prompts, processing_class=tokenizer)
    trainer.train()
    stage = read_stage(args, 0)
    assert len(calls) == 1 and calls[0]["continuous_batching_config"].num_blocks == 64
    assert calls[0]["generation_config"].num_return_sequences == args.num_generations
    counts = [list(stage["prompt_index"]).count(i) for i in sorted(set(stage["prompt_index"]))]
    assert counts == [args.num_generations] * args.prompts_per_stage  # every prompt's K candidates, none lost
    assert sum(stage["selected"]) == args.prompts_per_stage and trainer.state.global_step > 0
