"""Evaluate a RAFT policy on held-out data: the columns of the paper's Table 3."""

from collections.abc import Callable

import torch
from datasets import Dataset

from .metrics import perplexity, text_metrics
from .raft_trainer import RAFTTrainer, tokenize_prompts
from .sequences import generate_completions, sft_example


@torch.no_grad()
def evaluate_policy(
    trainer: RAFTTrainer,
    prompts: Dataset,
    chosen: Dataset | None = None,
    true_score: Callable[[str, str], float] | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Sample one completion per held-out prompt with the trainer's policy and generation settings, and measure:

    - `reward`: mean reward of the trainer's reward function(s) on those completions;
    - `true_score`: mean of `true_score(prompt, completion)`, when a ground truth is known (miniature world);
    - `perplexity`: of the held-out `chosen` responses (`prompt`, `completion` columns), when given;
    - `msttr_100`, `distinct_1`, `distinct_2`, `unique_1`, `unique_2`: diversity of the completions;
    - `length`: mean completion length in tokens.
    """
    tokenizer = trainer.processing_class
    model = trainer.accelerator.unwrap_model(trainer.model)
    prompts, prompt_ids = tokenize_prompts(prompts, tokenizer, max_prompt_length=None)
    torch.manual_seed(seed)
    completion_ids = generate_completions(
        model, prompt_ids, trainer.generation_config, 1, trainer.args.generation_batch_size, show_progress=False
    )
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    candidates = {"prompt": list(prompts["prompt"]), "completion": texts, "completion_ids": completion_ids}
    columns = {name: list(prompts[name]) for name in prompts.column_names if name != "prompt"}
    rewards, _ = trainer.score(candidates, columns)

    results = {"reward": rewards.nanmean().item()}
    if true_score is not None:
        scores = [true_score(prompt, text) for prompt, text in zip(candidates["prompt"], texts)]
        results["true_score"] = sum(scores) / len(scores)
    if chosen is not None:
        _, chosen_prompt_ids = tokenize_prompts(chosen, tokenizer, max_prompt_length=None)
        chosen_ids = tokenizer(list(chosen["completion"]), add_special_tokens=False)["input_ids"]
        examples = [
            sft_example(prompt, completion + [tokenizer.eos_token_id])
            for prompt, completion in zip(chosen_prompt_ids, chosen_ids)
        ]
        results["perplexity"] = perplexity(model, examples, trainer.data_collator, trainer.args.generation_batch_size)
    results.update(text_metrics(texts))
    results["length"] = sum(map(len, completion_ids)) / len(completion_ids)
    return results
