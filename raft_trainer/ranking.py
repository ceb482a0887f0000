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


def best_per_group(scores: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Local ranking. `scores` and `groups` are [N], `groups` holding each candidate's prompt (any integer ids, any
    number of candidates each); returns a bool mask marking the highest score of each group (the earliest candidate
    on ties)."""
    valid = ~torch.isnan(scores)
    by_score = torch.sort(torch.where(valid, scores, -torch.inf), descending=True, stable=True).indices
    order = by_score[torch.sort(groups[by_score], stable=True).indices]  # by group, best first within each
    sorted_groups = groups[order]
    first_of_group = torch.ones_like(sorted_groups, dtype=torch.bool)
    first_of_group[1:] = sorted_groups[1:] != sorted_groups[:-1]
    kept = torch.zeros_like(scores, dtype=torch.bool)
    kept[order[first_of_group]] = True
    return kept & valid


def top_of_pool(scores: torch.Tensor, num_kept: int) -> torch.Tensor:
    """Global ranking (paper appendix A.2). `scores` is [N]; returns a bool mask marking the `num_kept` highest
    scores of the whole pool (earlier candidates first on ties)."""
    valid = ~torch.isnan(scores)
    order = torch.sort(torch.where(valid, scores, -torch.inf), descending=True, stable=True).indices
    kept = torch.zeros_like(scores, dtype=torch.bool)
    kept[order[:num_kept]] = True
    return kept & valid


def select(scores: torch.Tensor, ranking: str, groups: torch.Tensor, num_kept: int) -> torch.Tensor:
    """The kept mask [N] of a stage's flat scores: the best of each prompt's group (local ranking) or the `num_kept`
    best of the pool (global ranking)."""
    if ranking == "local":
        return best_per_group(scores, groups)
    return top_of_pool(scores, num_kept)
