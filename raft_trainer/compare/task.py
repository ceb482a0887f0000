"""What every method of a comparison starts from: one SFT policy, one reward model, one prompt set."""

import os
from collections.abc import Callable
from dataclasses import dataclass

from datasets import Dataset
from transformers import AutoTokenizer

from ..models import resolve_model_name
from ..tasks.prompt_datasets import load_prompts
from ..tasks.toy.pipeline import prepare_models
from ..tasks.toy.world import make_world, true_score
from .settings import CompareArguments


@dataclass
class ComparisonTask:
    policy: str  # the SFT policy (id or path, with its tokenizer)
    reward_model: str  # the reward model (id or path, with its tokenizer)
    train_prompts: Dataset  # `prompt`: what every method trains on
    curve_prompts: Dataset  # `prompt`: held out; the curve along each run, and the learning-rate choice
    curve_chosen: Dataset | None  # `prompt`, `completion`: chosen responses to the curve prompts (perplexity)
    test_prompts: Dataset  # `prompt`: held out, disjoint from curve_prompts; the final table
    test_chosen: Dataset | None  # `prompt`, `completion`: held-out chosen responses, for the perplexity
    true_score: Callable[[str, str], float] | None  # the ground truth, where known (miniature world)


def load_task(args: CompareArguments) -> ComparisonTask:
    """The miniature world (its SFT start, reward model and ground truth, trained or taken from the cache) when no
    model is named; else the named models and dataset. The held-out prompts are split into the curve's and the final
    table's."""
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
    if len(held_out) <= args.num_curve_prompts:
        raise ValueError(
            f"num_curve_prompts ({args.num_curve_prompts}) leaves no held-out prompt for the final table: the "
            f"held-out split has {len(held_out)} prompts."
        )
    curve = range(args.num_curve_prompts)
    test = range(args.num_curve_prompts, len(held_out))
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
