"""Per-stage metrics of selection: how many candidates were accepted, and by how many prompts."""

import torch


def acceptance_metrics(accepted: torch.Tensor | None, groups: torch.Tensor, sampled: torch.Tensor) -> dict[str, float]:
    """Over the model's own samples (`sampled`; [N] masks, `groups` [N] ids), with `accepted`: `pass_rate`, the
    share accepted; `prompts_with_accepted`, the share of prompts (groups) with at least one accepted sample;
    `prompts_all_accepted`, the share with every sample accepted."""
    if not sampled.any():
        return {}
    metrics = {}
    if accepted is not None:
        accepted, groups = accepted[sampled], groups[sampled]
        ids, group_of = torch.unique(groups, return_inverse=True)
        accepted_count = torch.zeros(len(ids)).index_add_(0, group_of, accepted.float())
        size = torch.zeros(len(ids)).index_add_(0, group_of, torch.ones(len(groups)))
        metrics["pass_rate"] = accepted.float().mean().item()
        metrics["prompts_with_accepted"] = (accepted_count > 0).float().mean().item()
        metrics["prompts_all_accepted"] = (accepted_count == size).float().mean().item()
    return metrics
