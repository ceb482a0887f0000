"""The one check of what the trainers are given (raft_trainer/arguments.py): TRL's `reward_funcs`, its former name
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
