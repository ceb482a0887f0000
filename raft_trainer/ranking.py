"""Which candidates a RAFT stage keeps: pure tensor functions, no model, no I/O.

A NaN score means "no reward": such a candidate is never kept, and a prompt whose candidates all lack a reward
keeps nothing that stage.
"""

import torch


def kl_penalized_scores(
    rewards: torch.Tensor, log_probs: torch.Tensor, ref_log_probs: torch.Tensor, beta: float
) -> torch.Tensor:
    """Paper Eq. 5: r - beta * (log p(y|x) - log p_ref(y|x)), with sequence log-probs."""
    return rewards - beta * (log_probs - ref_log_probs)


def best_per_prompt(scores: torch.Tensor) -> torch.Tensor:
    """Local ranking. `scores` is [num_prompts, K]; returns a bool mask of the same shape with the highest score of
    each prompt marked (the first one on ties)."""
    valid = ~torch.isnan(scores)
    best = torch.where(valid, scores, -torch.inf).argmax(dim=1)
    kept = torch.zeros_like(scores, dtype=torch.bool)
    kept[torch.arange(scores.shape[0]), best] = True
    return kept & valid


def top_of_pool(scores: torch.Tensor, num_kept: int) -> torch.Tensor:
    """Global ranking (paper appendix A.2). `scores` is [N]; returns a bool mask marking the `num_kept` highest
    scores of the whole pool (earlier candidates first on ties)."""
    valid = ~torch.isnan(scores)
    order = torch.sort(torch.where(valid, scores, -torch.inf), descending=True, stable=True).indices
    kept = torch.zeros_like(scores, dtype=torch.bool)
    kept[order[:num_kept]] = True
    return kept & valid


def select(scores: torch.Tensor, ranking: str, num_generations: int, num_kept: int) -> torch.Tensor:
    """The kept mask [N] for a stage's flat scores: local ranking groups them by prompt, `num_generations` each."""
    if ranking == "local":
        return best_per_prompt(scores.view(-1, num_generations)).view(-1)
    return top_of_pool(scores, num_kept)
