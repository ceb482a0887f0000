import json
import mmap
import sys
import types

import pytest
import torch
from datasets import Dataset, load_dataset

from raft_trainer import RAFTTrainer
from raft_trainer.files import stage_file_path, write_stage_file
from raft_trainer.stages.prompts import stage_prompt_indices, validate_prompt_dataset

from .helpers import share_of_apple


def test_stages_walk_the_dataset_in_a_fresh_order_each_pass():
    drawn = [stage_prompt_indices(stage, 3, 6, seed=1) for stage in range(4)]
    assert sorted(drawn[0] + drawn[1]) == list(range(6))  # the first pass covers every prompt once
    assert sorted(drawn[2] + drawn[3]) == list(range(6))
    assert drawn[0] + drawn[1] != drawn[2] + drawn[3]  # and the next pass reshuffles
    assert stage_prompt_indices(2, 3, 6, seed=1) == drawn[2]  # a pure function of the stage: resumable
    assert stage_prompt_indices(0, 3, 6, seed=2) != drawn[0]


def test_stage_file_is_json_lines_written_atomically(tmp_path):
    path = tmp_path / "stages" / "stage_000.jsonl"
    columns = {
        "stage": [0, 0],
        "prompt": ["a", "b"],
        "completion": ["é", "x"],
        "reward": [0.5, None],
        "selected": [True, False],
    }
    write_stage_file(str(path), columns)
    assert [p.name for p in path.parent.iterdir()] == ["stage_000.jsonl"]  # no partial file left behind
    assert json.loads(path.read_text().splitlines()[1]) == {
        "stage": 0,
        "prompt": "b",
        "completion": "x",
        "reward": None,
        "selected": False,
    }
    rows = load_dataset("json", data_files=str(path), split="train")
    assert rows.to_dict() == columns


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        ([{"prompt": "hi"}], "must be a datasets.Dataset"),
        (Dataset.from_dict({"text": ["hi"], "id": [1]}), r"no 'prompt' column \(columns found: \['text', 'id'\]\)"),
        (Dataset.from_dict({"prompt": []}), "train_dataset is empty"),
        (Dataset.from_dict({"prompt": [1, 2]}), r"train_dataset\['prompt'\]\[0\] is 1: every prompt must be text"),
        (Dataset.from_dict({"prompt": [[{"role": "user", "content": "hi"}], []]}), r"\['prompt'\]\[1\] is \[\]"),
        (Dataset.from_list([{"prompt": "a"}, {"prompt": None}]), r"\['prompt'\]\[1\] is None"),
    ],
)
def test_unusable_datasets_are_rejected(dataset, message):
    with pytest.raises(ValueError, match=message):
        validate_prompt_dataset(dataset)


def test_dataset_is_checked_before_the_model_is_loaded(make_args):
    # The model id does not exist: the dataset error must come first, before any loading is tried.
    with pytest.raises(ValueError, match="no 'prompt' column"):
        RAFTTrainer("no/such-model", share_of_apple, args=make_args(), train_dataset=Dataset.from_dict({"q": ["x"]}))


def test_reward_weights_must_match_the_reward_functions(make_model, tokenizer, prompts, make_args):
    with pytest.raises(ValueError, match="reward_weights has 2 entries for 1 reward functions"):
        RAFTTrainer(
            make_model(),
            share_of_apple,
            args=make_args(reward_weights=[1.0, 2.0]),
            train_dataset=prompts,
            processing_class=tokenizer,
        )


def test_stages_where_nothing_gets_a_reward_are_passed_over_until_too_many_fail_clearly(
    make_model, tokenizer, prompts, make_args
):
    trainer = RAFTTrainer(
        make_model(),
        lambda completions, **kw: [None] * len(completions),
        args=make_args(max_empty_stages=1),
        train_dataset=prompts,
        processing_class=tokenizer,
    )
    with pytest.raises(RuntimeError, match="stage 0 kept no candidate.*0 of 16 candidates got a reward"):
        trainer.train()


def test_a_reward_function_returning_non_numbers_is_named(make_model, tokenizer, prompts, make_args):
    def wordy_reward(completions, **kwargs):
        return ["good"] * len(completions)

    trainer = RAFTTrainer(
        make_model(), wordy_reward, args=make_args(), train_dataset=prompts, processing_class=tokenizer
    )
    with pytest.raises(
        ValueError, match=r"'wordy_reward' returned 16 values \['good', 'good', 'good', 'good', \.\.\.\]"
    ):
        trainer.train()


def test_candidates_without_reward_are_never_kept_and_training_goes_on(make_model, tokenizer, prompts, make_args):
    def patchy_reward(prompts, completions, **kwargs):  # None: no reward; one prompt never gets any
        return [
            None if prompt == "tell me a word" or len(text.split()) % 2 else 1.0 + len(text) / 100
            for prompt, text in zip(prompts, completions)
        ]

    args = make_args(num_stages=3, num_generations=3, max_completion_length=6)
    trainer = RAFTTrainer(make_model(), patchy_reward, args=args, train_dataset=prompts, processing_class=tokenizer)
    trainer.train()
    records = [record for record in trainer.state.log_history if "stage" in record]
    assert len(records) == 3 and trainer.state.global_step == 3
    for stage, record in enumerate(records):
        rows = load_dataset("json", data_files=str(stage_file_path(args.output_dir, stage)), split="train")
        assert not any(kept and reward is None for kept, reward in zip(rows["selected"], rows["reward"]))
        groups = [rows[i : i + 3] for i in range(0, len(rows), 3)]
        assert record["num_kept"] == sum(any(r is not None for r in group["reward"]) for group in groups)
        assert record["num_without_reward"] == rows["reward"].count(None)
    assert all(0 < record["num_kept"] < 4 for record in records)  # a prompt was skipped each stage; training went on


def test_same_seed_same_stage_files(make_model, tokenizer, prompts, make_args, tmp_path):
    contents = []
    for run in ("a", "b"):
        args = make_args(num_stages=2, output_dir=str(tmp_path / run))
        RAFTTrainer(
            make_model(seed=0), share_of_apple, args=args, train_dataset=prompts, processing_class=tokenizer
        ).train()
        contents.append([(tmp_path / run / "stages" / f"stage_00{t}.jsonl").read_bytes() for t in range(2)])
    assert contents[0] == contents[1]


def test_log_completions_prints_the_kept_samples_and_logs_them_to_the_tracker(
    make_model, tokenizer, prompts, make_args, capsys, monkeypatch
):
    logged = []
    fake_wandb = types.ModuleType("wandb")  # stands in for a running wandb session
    fake_wandb.run, fake_wandb.Table, fake_wandb.log = object(), (lambda dataframe: dataframe), logged.append
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    args = make_args(log_completions=True)
    trainer = RAFTTrainer(make_model(), share_of_apple, args=args, train_dataset=prompts, processing_class=tokenizer)
    trainer.args.report_to = ["wandb"]  # set after construction, so the Trainer starts no real wandb run
    trainer.train()

    stage = load_dataset("json", data_files=stage_file_path(args.output_dir, 0), split="train")
    kept = stage.filter(lambda row: row["selected"])
    (table,) = [entry["stage_samples"] for entry in logged]
    assert list(table["completion"]) == list(kept["completion"])
    assert list(table["reward"]) == list(kept["reward"])
    printed = capsys.readouterr().out
    assert f"Step {trainer.state.global_step}" in printed  # TRL's sample table
    assert "stage   reward     kept" in printed  # the per-stage line, printed by default


class DeviceSpyReward(torch.nn.Module):
    """share_of_apple as a module that records where it is when it scores and where it is sent."""

    __name__ = "share_of_apple"

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.moves, self.scored_on = [], []

    def to(self, device):
        self.moves.append(torch.device(device).type)
        return super().to(device)

    def forward(self, **kwargs):
        self.scored_on.append(self.moves[-1] if self.moves else "never moved")
        return share_of_apple(**kwargs)


@pytest.mark.parametrize("offload", [False, True])
def test_offloaded_reward_models_visit_the_device_only_to_score(make_model, tokenizer, prompts, make_args, offload):
    reward = DeviceSpyReward()
    args = make_args(num_stages=2, offload_inactive_models=offload)
    trainer = RAFTTrainer(make_model(), reward, args=args, train_dataset=prompts, processing_class=tokenizer)
    trainer.train()
    device = trainer.accelerator.device.type
    if offload:
        assert reward.moves == [device, "cpu"] * 2  # to the device for each stage's scoring, then back
    else:
        assert reward.moves == [device]  # placed once, at construction
    assert reward.scored_on == [device] * 2


def test_stage_records_hold_each_phases_peak_memory(make_model, tokenizer, prompts, make_args):
    from raft_trainer.memory import process_peak_mb

    def share_of_apple_in_300_mb(**kwargs):  # scoring holds 300 MB for a moment, as a large reward model would
        # Fresh pages from the system (memory an allocator keeps from earlier tests would not raise the resident set).
        with mmap.mmap(-1, 300 * 2**20) as held:
            for page in range(0, len(held), mmap.PAGESIZE):
                held[page] = 1
            return share_of_apple(**kwargs)

    trainer = RAFTTrainer(
        make_model(), share_of_apple_in_300_mb, args=make_args(num_stages=2), train_dataset=prompts,
        processing_class=tokenizer,
    )  # fmt: skip
    trainer.train()
    records = [record for record in trainer.state.log_history if "stage" in record]
    assert len(records) == 2
    for record in records:  # on the CPU too: each phase's own peak resident set, not the process's peak so far
        generate, score, train = (record[f"memory/{phase}_peak_mb"] for phase in ("generate", "score", "train"))
        assert score > generate + 250 and score > train + 250, record
        assert process_peak_mb("cpu") >= score  # the run's peak survives the per-phase resets
