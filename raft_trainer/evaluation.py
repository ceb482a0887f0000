"""Evaluate a policy on held-out data: the columns of the paper's Table 3.

`evaluate_model` evaluates any causal LM (a RAFT, PPO or GRPO policy alike); `evaluate_policy` evaluates a
`RAFTTrainer`'s policy with the trainer's own reward functions and generation settings.
"""

from collections.abc import Callable

import torch
from datasets import Dataset
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from .metrics import perplexity, text_metrics
from .sequences import completion_reward_inputs, generate_completions, sft_example, tokenize_prompts

# Scores candidates: called with their columns (`prompt`, `completion`, `completion_ids`) and the prompts' other
# dataset columns (one entry per candidate); returns one reward per candidate.
CandidateScorer = Callable[[dict[str, list], dict[str, list]], torch.Tensor]


@torch.no_grad()
def evaluate_policy(
    trainer,  # a RAFTTrainer (evaluation sits below the trainers: it imports none)
    prompts: Dataset,
    chosen: Dataset | None = None,
    true_score: Callable[[str, str], float] | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """`evaluate_model` for a RAFT trainer's policy, with its reward function(s) (weighted as in training) and its
    generation settings."""
    return evaluate_model(
        trainer.accelerator.unwrap_model(trainer.model),
        trainer.processing_class,
        prompts,
        lambda candidates, columns: trainer.score(candidates, columns)[0],
        trainer.generation_config,
        chosen=chosen,
        true_score=true_score,
        seed=seed,
        batch_size=trainer.args.generation_batch_size,
    )


@torch.no_grad()
def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Dataset,
    score: CandidateScorer,
    generation_config: GenerationConfig,
    chosen: Dataset | None = None,
    true_score: Callable[[str, str], float] | None = None,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, float]:
    """Sample one completion per held-out prompt with `model` and `generation_config` (after
    `torch.manual_seed(seed)`), and measure:

    - `reward`: mean of `score` on those completions (`reward_function_scorer` turns a reward function into one);
    - `true_score`: mean of `true_score(prompt, completion)`, when a ground truth is known (miniature world);
    - `perplexity`: of the held-out `chosen` responses (`prompt`, `completion` columns), when given;
    - `msttr_100`, `distinct_1`, `distinct_2`, `unique_1`, `unique_2`: diversity of the completions;
    - `length`: mean completion length in tokens.
    """
    prompts, prompt_ids = tokenize_prompts(prompts, tokenizer, max_prompt_length=None)
    torch.manual_seed(seed)
    completion_ids = generate_completions(model, prompt_ids, generation_config, 1, batch_size, show_progress=False)
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    candidates = {"prompt": list(prompts["prompt"]), "completion": texts, "completion_ids": completion_ids}
    columns = {name: list(prompts[name]) for name in prompts.column_names if name != "prompt"}
    rewards = torch.as_tensor(score(candidates, columns), dtype=torch.float64)

    results = {"reward": rewards.nanmean().item()}
    if true_score is not None:
        scores = [true_score(prompt, text) for prompt, text in zip(candidates["prompt"], texts)]
        results["true_score"] = sum(scores) / len(scores)
    if chosen is not None:
        results["perplexity"] = chosen_perplexity(model, tokenizer, chosen, batch_size)
    results.update(text_metrics(texts))
    results["length"] = sum(map(len, completion_ids)) / len(completion_ids)
    return results


def chosen_perplexity(model: PreTrainedModel, tokenizer, chosen: Dataset, batch_size: int = 64) -> float:
    """Perplexity of `model` on held-out responses (`prompt`, `completion` columns), each ended with eos."""
    _, chosen_prompt_ids = tokenize_prompts(chosen, tokenizer, max_prompt_length=None)
    chosen_ids = tokenizer(list(chosen["completion"]), add_special_tokens=False)["input_ids"]
    examples = [
        sft_example(prompt, completion + [tokenizer.eos_token_id])
        for prompt, completion in zip(chosen_prompt_ids, chosen_ids)
    ]
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    return perplexity(model, examples, collator, batch_size)


def reward_function_scorer(reward_fn: Callable[..., list]) -> CandidateScorer:
    """A `CandidateScorer` calling one reward function with TRL's keywords (`prompts=`, `completions=` as text, or
    as assistant messages for chat prompts, `completion_ids=`, and the other dataset columns)."""

    def score(candidates: dict[str, list], columns: dict[str, list]) -> torch.Tensor:
        values = reward_fn(prompts=candidates["prompt"], **completion_reward_inputs(candidates), **columns)
        return torch.tensor([torch.nan if value is None else float(value) for value in values], dtype=torch.float64)

    return score
