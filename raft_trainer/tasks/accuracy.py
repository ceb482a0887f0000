"""Held-out accuracy on a verifiable task: greedy, sampled and pass@k, with a 0/1 reward such as
`exact_answer_reward` or TRL's `accuracy_reward`."""

import math
from collections.abc import Callable

import torch
from datasets import Dataset
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from trl.data_utils import is_conversational

from ..rewards.rules import exact_answer_reward
from ..sequences import generate_completions, sampling_config, tokenize_prompts


@torch.no_grad()
def evaluate_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    reward_fn: Callable[..., list] = exact_answer_reward,
    temperature: float = 1.0,
    num_samples: int = 8,
    max_new_tokens: int = 16,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracy of `model` on the prompts of `dataset` (a `prompt` column and the columns `reward_fn` reads):

    - `greedy_accuracy`: share of prompts whose greedy completion is correct;
    - `sampled_accuracy`: share of correct completions among `num_samples` per prompt sampled at `temperature`
      (after `torch.manual_seed(seed)`);
    - `pass@{num_samples}`: share of prompts with at least one correct sampled completion;
    - `mean_length`: mean length of the greedy completions in tokens (the eos token included);
    - `truncated_share`: share of greedy completions cut at `max_new_tokens` before an eos token.

    `reward_fn` is called in TRL's convention, with the dataset's other columns as keywords (one entry per
    completion), and must return 1 (correct) or 0 for each completion.
    """
    if len(dataset) == 0:
        raise ValueError("dataset is empty: give at least one prompt to evaluate on.")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1; got {num_samples}.")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive (greedy accuracy is measured anyway); got {temperature}.")
    if reward_fn is exact_answer_reward and "answer" not in dataset.column_names:
        raise ValueError(
            "exact_answer_reward reads an `answer` column, which dataset lacks: add one (see arithmetic_dataset) or "
            "pass a reward_fn that reads the columns dataset has."
        )
    dataset, prompt_ids = tokenize_prompts(dataset, tokenizer, max_prompt_length=None)
    # The model's own eos token(s) end generation, as in training (a chat model's end of turn).
    eos_token_id = model.generation_config.eos_token_id
    bos_token_id = model.generation_config.bos_token_id
    sampling = sampling_config(
        tokenizer, max_new_tokens, temperature, eos_token_id=eos_token_id, bos_token_id=bos_token_id
    )
    greedy = greedy_config(sampling)

    greedy_ids = generate_completions(model, prompt_ids, greedy, 1, batch_size, show_progress=False)
    torch.manual_seed(seed)
    sampled_ids = generate_completions(model, prompt_ids, sampling, num_samples, batch_size, show_progress=False)
    greedy_correct = _correct(reward_fn, tokenizer, dataset, greedy_ids, 1)
    sampled_correct = _correct(reward_fn, tokenizer, dataset, sampled_ids, num_samples)

    eos_ids = set(sampling.eos_token_id)
    per_prompt = [sampled_correct[i : i + num_samples] for i in range(0, len(sampled_correct), num_samples)]
    return {
        "greedy_accuracy": _mean(greedy_correct),
        "sampled_accuracy": _mean(sampled_correct),
        f"pass@{num_samples}": _mean([any(samples) for samples in per_prompt]),
        "mean_length": _mean([len(ids) for ids in greedy_ids]),
        "truncated_share": _mean([not ids or ids[-1] not in eos_ids for ids in greedy_ids]),
    }


def greedy_config(sampling: GenerationConfig) -> GenerationConfig:
    """Greedy decoding with the lengths and special tokens of `sampling`."""
    return GenerationConfig(
        max_new_tokens=sampling.max_new_tokens,
        do_sample=False,
        pad_token_id=sampling.pad_token_id,
        eos_token_id=sampling.eos_token_id,
        bos_token_id=sampling.bos_token_id,
    )


def _correct(reward_fn, tokenizer, dataset: Dataset, completion_ids: list[list[int]], per_prompt: int) -> list[bool]:
    """Whether each completion (prompt-major, `per_prompt` per prompt) is correct according to `reward_fn`."""
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    prompts = [prompt for prompt in dataset["prompt"] for _ in range(per_prompt)]
    completions = texts
    if is_conversational({"prompt": prompts[0]}):
        completions = [[{"role": "assistant", "content": text}] for text in texts]
    columns = {
        name: [value for value in dataset[name] for _ in range(per_prompt)]
        for name in dataset.column_names
        if name != "prompt"
    }
    rewards = reward_fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
    if len(rewards) != len(completions):
        raise ValueError(
            f"reward_fn returned {len(rewards)} rewards for {len(completions)} completions: return one each."
        )
    correct = []
    for reward in rewards:
        reward = math.nan if reward is None else float(reward)
        if reward not in (0.0, 1.0):
            raise ValueError(
                f"evaluate_accuracy needs a reward_fn that returns 1 (correct) or 0 for every completion; got "
                f"{reward}. Use a 0/1 reward such as exact_answer_reward, or solutions that accuracy_reward can parse."
            )
        correct.append(reward == 1.0)
    return correct


def _mean(values: list) -> float:
    return sum(values) / len(values)
