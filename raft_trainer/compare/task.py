"""What every method of a comparison starts from: one SFT policy, one reward model, one prompt set."""

import os
from collections.abc import Callable
from dataclasses import dataclass

from datasets import Dataset
from transformers import AutoTokenizer

from ..models import SMOLLM2, resolve_model_name
from ..rewards.rules import exact_answer_reward
from ..tasks import load_prompts
from ..tasks.arithmetic import arithmetic_dataset
from ..tasks.toy.pipeline import prepare_models
from ..tasks.toy.world import make_world, true_score
from .settings import CompareArguments

ARITHMETIC_TRAIN_PROMPTS = 250  # of the 400 distinct sums: 150 left for the held-out prompts


@dataclass
class ComparisonTask:
    policy: str  # the SFT policy (id or path, with its tokenizer)
    reward_model: str | None  # the reward model (id or path, with its tokenizer); None with a rule reward
    train_prompts: Dataset  # `prompt`: what every method trains on
    curve_prompts: Dataset  # `prompt`: held out; the curve along each run, and the learning-rate choice
    curve_chosen: Dataset | None  # `prompt`, `completion`: chosen responses to the curve prompts (perplexity)
    test_prompts: Dataset  # `prompt`: held out, disjoint from curve_prompts; the final table
    test_chosen: Dataset | None  # `prompt`, `completion`: held-out chosen responses, for the perplexity
    true_score: Callable[[str, str], float] | None  # the ground truth, where known (miniature world)
    reward_fn: Callable[..., list] | None = None  # a rule reward (verifiable task) instead of the reward model

    @property
    def verifiable(self) -> bool:
        """A 0/1 rule reward: the held-out reward is the accuracy (also measured greedily)."""
        return self.reward_fn is not None


def load_task(args: CompareArguments) -> ComparisonTask:
    """The miniature world (its SFT start, reward model and ground truth, trained or taken from the cache) when no
    model is named; with a `task`, its prompts and rule reward; else the named models and dataset. The held-out
    prompts are split into the curve's and the final table's."""
    if args.task is not None:
        return verifiable_task(args)
    if args.model_name_or_path is None:
        world = make_world(seed=args.seed, num_pairs=args.toy_num_pairs, num_eval=args.num_eval_prompts)
        models = prepare_models(
            world, os.path.expanduser(args.cache_dir), seed=args.seed, show_progress=not args.quiet
        )
        policy, reward_model, ground_truth = models.policy_path, models.reward_model_path, true_score
        train, held_out, chosen = world.train_prompts, world.eval_prompts, world.eval_chosen
    else:
        args.model_name_or_path = resolve_model_name(args.model_name_or_path)  # the packaged SmolLM2 by name
        check_shared_tokenizer(args)
        policy, reward_model, ground_truth = args.model_name_or_path, args.reward_model_name_or_path, None
        train, held_out, chosen = load_prompts(args)
    curve, test = split_held_out(held_out, args.num_curve_prompts)
    return ComparisonTask(
        policy=policy,
        reward_model=reward_model,
        train_prompts=train.select_columns(["prompt"]),
        curve_prompts=held_out.select(curve).select_columns(["prompt"]),
        curve_chosen=None if chosen is None else chosen.select(curve),
        test_prompts=held_out.select(test).select_columns(["prompt"]),
        test_chosen=None if chosen is None else chosen.select(test),
        true_score=ground_truth,
    )


def verifiable_task(args: CompareArguments) -> ComparisonTask:
    """The arithmetic task (`tasks/arithmetic.py`, sums of two numbers in 1..20 or the `level` asked, in the
    `wording` asked): 250 training problems (drawn with the run's seed), `num_eval_prompts` held-out ones (fixed for
    every seed), the exact final number as reward."""
    args.model_name_or_path = resolve_model_name(args.model_name_or_path or SMOLLM2)
    data = arithmetic_dataset(
        args.level,
        num_train=ARITHMETIC_TRAIN_PROMPTS,
        num_test=args.num_eval_prompts,
        seed=args.seed,
        wording=args.wording,
    )
    held_out = data["test"].select_columns(["prompt", "answer"])  # the reward reads `answer`
    curve, test = split_held_out(held_out, args.num_curve_prompts)
    return ComparisonTask(
        policy=args.model_name_or_path,
        reward_model=None,
        train_prompts=data["train"].select_columns(["prompt", "answer"]),
        curve_prompts=held_out.select(curve),
        curve_chosen=None,
        test_prompts=held_out.select(test),
        test_chosen=None,
        true_score=None,
        reward_fn=exact_answer_reward,
    )


def split_held_out(held_out: Dataset, num_curve_prompts: int) -> tuple[range, range]:
    """The indices of the curve's (validation) prompts and of the final table's."""
    if len(held_out) <= num_curve_prompts:
        raise ValueError(
            f"num_curve_prompts ({num_curve_prompts}) leaves no held-out prompt for the final table: the "
            f"held-out split has {len(held_out)} prompts."
        )
    return range(num_curve_prompts), range(num_curve_prompts, len(held_out))


def check_shared_tokenizer(args: CompareArguments) -> None:
    """TRL's PPO feeds the policy's token ids to the reward model: both must use the same vocabulary."""
    if "ppo" not in args.methods:
        return
    policy_vocab = AutoTokenizer.from_pretrained(args.model_name_or_path).get_vocab()
    reward_vocab = AutoTokenizer.from_pretrained(args.reward_model_name_or_path).get_vocab()
    if policy_vocab != reward_vocab:
        raise ValueError(
            f"reward_model_name_or_path: {args.reward_model_name_or_path!r} does not share the tokenizer of "
            f"{args.model_name_or_path!r}, and TRL's PPO scores the policy's token ids with it. Give a reward model "
            "trained from the policy's tokenizer, or leave ppo out of --methods."
        )
