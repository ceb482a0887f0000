"""The one check of what the trainers are given (`RAFTTrainer.check_arguments`): TRL's `reward_funcs`, its former name
`reward_fn`, and the messages that name the fix."""

import pytest

from raft_trainer import RAFTTrainer

from .helpers import read_stage, share_of_apple


def test_trl_keywords_work_as_in_grpo_trainer(make_model, tokenizer, prompts, make_args):
    args = make_args()
    trainer = RAFTTrainer(
        model=make_model(), reward_funcs=share_of_apple, args=args, train_dataset=prompts, processing_class=tokenizer
    )
    trainer.train()
    assert len(read_stage(args, 0)) == 4 * args.num_generations


def test_the_former_name_reward_fn_is_still_accepted(make_model, tokenizer, prompts, make_args):
    trainer = RAFTTrainer(
        make_model(), reward_fn=share_of_apple, args=make_args(), train_dataset=prompts, processing_class=tokenizer
    )
    assert trainer.reward_names == ["share_of_apple"]


@pytest.mark.parametrize(
    "rewards, message",
    [
        (dict(reward_funcs=share_of_apple, reward_fn=share_of_apple), "give one"),
        (dict(), "reward_funcs is missing"),
    ],
)
def test_reward_funcs_and_reward_fn_are_one_argument(make_model, tokenizer, prompts, make_args, rewards, message):
    with pytest.raises(ValueError, match=message):
        RAFTTrainer(make_model(), args=make_args(), train_dataset=prompts, processing_class=tokenizer, **rewards)


def test_a_missing_train_dataset_is_named(make_model, tokenizer, make_args):
    with pytest.raises(ValueError, match="train_dataset is required"):
        RAFTTrainer(make_model(), share_of_apple, args=make_args(), processing_class=tokenizer)


def test_a_reward_model_path_that_does_not_exist_is_named(tmp_path):
    from raft_trainer.rewards import as_reward_functions

    missing = str(tmp_path / "no" / "such" / "reward-model")
    with pytest.raises(ValueError, match="does not exist"):
        as_reward_functions(missing)


def test_an_empty_candidates_file_says_which_phase_to_rerun(tmp_path):
    from raft_trainer.phases import read_jsonl

    path = tmp_path / "candidates_000.jsonl"
    path.write_text("")
    with pytest.raises(ValueError, match="--phase generate --stage 0"):
        read_jsonl(str(path), "generate", 0)


def test_per_function_rewards_leave_out_what_the_sample_filter_dropped(make_model, tokenizer, prompts, make_args):
    def one(completions, **kwargs):
        return [1.0] * len(completions)

    def length(completions, **kwargs):
        return [float(len(text.split())) for text in completions]

    def drop_short(completions, **kwargs):  # drops every candidate of fewer than 4 words
        return [len(text.split()) >= 4 for text in completions]

    args = make_args()
    trainer = RAFTTrainer(
        make_model(),
        [one, length],
        args=args,
        train_dataset=prompts,
        processing_class=tokenizer,
        sample_filter=drop_short,
    )
    trainer.train()
    rows = read_stage(args, 0)
    record = next(r for r in trainer.state.log_history if r.get("stage") == 0)
    lengths = [row["reward_length"] for row in rows if not row["filtered"]]
    assert any(rows["filtered"])
    assert record["reward_mean/length"] == pytest.approx(sum(lengths) / len(lengths))


def test_the_trl_grpo_quickstart_runs_with_raft_swapped_in(tmp_path, monkeypatch, tokenizer):
    # TRL's quickstart, GRPOTrainer replaced by RAFTTrainer and nothing else changed:
    #     trainer = GRPOTrainer(model="Qwen/Qwen2-0.5B-Instruct", reward_funcs=accuracy_reward, train_dataset=dataset)
    #     trainer.train()
    # offline, with a tiny local chat model and a dataset in DeepMath's format (chat prompts, a `solution` column).
    from datasets import Dataset
    from trl.rewards import accuracy_reward

    from raft_trainer.tasks.toy.tiny import tiny_causal_lm

    from .helpers import CHAT_TEMPLATE

    monkeypatch.chdir(tmp_path)
    tokenizer.chat_template = CHAT_TEMPLATE
    tiny_causal_lm(tokenizer, n_positions=256).save_pretrained("tiny-chat")
    tokenizer.save_pretrained("tiny-chat")
    dataset = Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": "say a word"}]] * 16, "solution": ["$1$"] * 16}
    )

    trainer = RAFTTrainer(model="tiny-chat", reward_funcs=accuracy_reward, train_dataset=dataset)
    trainer.train()

    assert trainer.args.num_stages == 4  # RAFTConfig's defaults, in tiny-chat-RAFT/ as TRL names its output
    assert sorted(path.name for path in (tmp_path / "tiny-chat-RAFT" / "stages").iterdir()) == [
        f"stage_00{t}.jsonl" for t in range(4)
    ]
