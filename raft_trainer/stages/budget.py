"""How a stage spends its sampling budget across its prompts (`sample_allocation`).

"uniform" gives every prompt `num_generations` candidates. "gvm" is GVM-RAFT (Yao et al., NeurIPS 2025, arXiv
2505.02391, code RLHFlow/GVM): a first draw of `gvm_first_draw` candidates per prompt estimates each prompt's
acceptance rate p_i and the mean gradient norm G_i of its accepted candidates; the rest of the stage's budget is
then shared in proportion to

    G_i / sqrt(p_i + alpha / p_i ** (beta - 1)),

which minimises the variance of the stage's gradient for that many samples. A prompt with no accepted candidate in
the first draw gets no more; one the model always solves has a small G_i (a confident model's log-likelihood has a
small gradient) and gets few. The stage's total stays `prompts x num_generations`, so runs compare at equal
completions. `reference.gvm_sample_sizes` is the plain definition this is tested against.
"""

import math

import torch

from . import Pool


def prompt_statistics(
    prompt_of: list[int], num_prompts: int, accepted: torch.Tensor, grad_norms: torch.Tensor
) -> tuple[list[float], list[float]]:
    """Each prompt's acceptance rate among its candidates (`prompt_of[j]`: candidate j's prompt) and the mean
    gradient norm of its accepted ones (0 where none was accepted)."""
    drawn, accepted_count, norm_sum = [0] * num_prompts, [0] * num_prompts, [0.0] * num_prompts
    for prompt, is_accepted, norm in zip(prompt_of, accepted.tolist(), grad_norms.tolist()):
        drawn[prompt] += 1
        if is_accepted:
            accepted_count[prompt] += 1
            norm_sum[prompt] += norm
    rates = [count / n if n else 0.0 for count, n in zip(accepted_count, drawn)]
    mean_norms = [total / count if count else 0.0 for total, count in zip(norm_sum, accepted_count)]
    return rates, mean_norms


def gvm_allocation(
    accept_rates: list[float], grad_norms: list[float], budget: int, alpha: float, beta: float
) -> list[int]:
    """Whole sample counts for the prompts, summing to `budget`, in proportion to G / sqrt(p + alpha / p^(beta-1))
    (0 where p or G is 0), rounded by largest remainders. When no prompt has a share, the budget is split evenly."""
    shares = [
        g / math.sqrt(p + alpha / p ** (beta - 1)) if p > 0 and g > 0 else 0.0
        for p, g in zip(accept_rates, grad_norms)
    ]
    if sum(shares) == 0:
        shares = [1.0] * len(shares)
    return largest_remainder(shares, budget)


def largest_remainder(shares: list[float], total: int) -> list[int]:
    """Integers proportional to `shares` that add up to `total`: the floors, then one more each for the largest
    remainders (the earlier prompt first on ties)."""
    exact = [total * share / sum(shares) for share in shares]
    counts = [math.floor(value) for value in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def merged_scored(first: dict, second: dict) -> dict:
    """Two draws' scored candidates (`StageTrainer.scored_candidates`' dicts) as one, each prompt's candidates
    together in the order of the stage's draw, the first draw's first; the reward functions' logged metrics are
    averaged over the candidates."""
    groups = first["candidates"]["group"] + second["candidates"]["group"]
    order = sorted(range(len(groups)), key=groups.__getitem__)  # stable: the first draw stays first
    candidates = {
        name: [(first["candidates"][name] + second["candidates"][name])[i] for i in order]
        for name in first["candidates"]
    }
    merged = {name: torch.cat([first[name], second[name]])[order] for name in Pool.TENSORS}
    sizes = len(first["rewards"]), len(second["rewards"])
    metrics = {}
    for name in first["reward_metrics"].keys() | second["reward_metrics"].keys():
        weighted = [
            (draw["reward_metrics"][name], size)
            for draw, size in zip((first, second), sizes)
            if name in draw["reward_metrics"]
        ]
        metrics[name] = sum(value * size for value, size in weighted) / max(1, sum(size for _, size in weighted))
    return {"reward_metrics": metrics, "candidates": candidates, **merged}
