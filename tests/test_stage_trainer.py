import json

import pytest
from datasets import Dataset, load_dataset

from raft_trainer import RAFTTrainer
from raft_trainer.stage_trainer import stage_prompt_indices, validate_prompt_dataset, write_stage_file

from .conftest import share_of_apple


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


def test_a_stage_where_nothing_gets_a_reward_fails_clearly(make_model, tokenizer, prompts, make_args):
    trainer = RAFTTrainer(
        make_model(),
        lambda completions, **kw: [None] * len(completions),
        args=make_args(),
        train_dataset=prompts,
        processing_class=tokenizer,
    )
    with pytest.raises(RuntimeError, match="stage 0 kept no candidate"):
        trainer.train()
