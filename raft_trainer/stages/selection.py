"""Which candidates a RAFT stage keeps: pure tensor functions, no model, no I/O.

A NaN score means "no reward": such a candidate is never kept, and a prompt whose candidates all lack a reward
keeps nothing that stage.
"""

from dataclasses import dataclass

import torch

from . import Candidates, Pool, Selection


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


def top_of_pool(scores: torch.Tensor, num_kept: int, threshold: float | None = None) -> torch.Tensor:
    """Global ranking (paper appendix A.2). `scores` is [N]; returns a bool mask marking the `num_kept` highest
    scores of the whole pool (earlier candidates first on ties). With `threshold`, only scores >= threshold are
    kept, so fewer than `num_kept` when the pool has fewer good enough."""
    if threshold is not None:
        scores = exclude(scores, scores < threshold)
    valid = ~torch.isnan(scores)
    order = torch.sort(torch.where(valid, scores, -torch.inf), descending=True, stable=True).indices
    kept = torch.zeros_like(scores, dtype=torch.bool)
    kept[order[:num_kept]] = True
    return kept & valid


def equal_reward_groups(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Reinforce-Rej's filter: a bool mask [N] of the candidates to drop, those whose group (prompt) has all-equal
    rewards, so they carry no contrast. `rewards` and `groups` are [N]; groups are any integer ids with any number
    of candidates each, in any order.

    NaN rewards (no reward) are left out when a group is judged, and a NaN candidate is always marked, so `~mask`
    never keeps a candidate without a reward. A group with fewer than two rewards has nothing to compare and is
    marked whole. Rewards are compared exactly (verl tests std > 0, which can differ by rounding for non-binary
    rewards).
    """
    _, group_index = torch.unique(groups, return_inverse=True)
    num_groups = int(group_index.max()) + 1 if len(groups) else 0
    valid = ~torch.isnan(rewards)
    values = rewards.to(torch.float64)
    # Per group, the largest and smallest valid reward; a group without any keeps -inf and +inf.
    highest = torch.full((num_groups,), -torch.inf, dtype=torch.float64, device=rewards.device)
    lowest = torch.full((num_groups,), torch.inf, dtype=torch.float64, device=rewards.device)
    highest = highest.scatter_reduce(0, group_index, torch.where(valid, values, -torch.inf), "amax")
    lowest = lowest.scatter_reduce(0, group_index, torch.where(valid, values, torch.inf), "amin")
    # A group with zero or one valid reward has highest <= lowest, so it is marked with the all-equal ones.
    contrasted = highest > lowest
    return ~contrasted[group_index] | ~valid


def mixed_groups(rewards: torch.Tensor, groups: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
    """Reinforce-Rej's kept mask [N] (the twin of `reference.reinforce_rej_keep`): every rewarded candidate of the
    groups whose rewards differ. With `threshold`, groups are judged by accepted (reward >= threshold) against
    rejected, since those verdicts, +1 and -1, are then the advantages: a group that passes whole has no contrast,
    however its graded rewards differ."""
    if threshold is not None:
        verdicts = (rewards >= threshold).to(rewards.dtype)
        rewards = torch.where(torch.isnan(rewards), rewards, verdicts)
    return ~equal_reward_groups(rewards, groups)


def select(
    scores: torch.Tensor,
    ranking: str,
    groups: torch.Tensor,
    num_kept: int,
    per_group: int = 1,
    duplicate_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """The kept mask [N] of a stage's flat scores (NaN: never kept): with local ranking the best `per_group`
    distinct candidates of each prompt's group (the best one when `per_group` is 1), with global ranking the
    `num_kept` best of the pool."""
    if ranking == "global":
        return top_of_pool(scores, num_kept)
    if per_group == 1 and duplicate_keys is None:
        return best_per_group(scores, groups)
    return accept_per_group(scores, groups, per_group, duplicate_keys=duplicate_keys)


def exclude(scores: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
    """`scores` with NaN where the bool mask `excluded` is set: the way to say "never keep these" (truncated
    completions, say) to every selection function here, which all skip NaN."""
    return scores.masked_fill(excluded, torch.nan)


def _first_of_runs(sorted_keys: list[torch.Tensor]) -> torch.Tensor:
    """For rows sorted so that equal key tuples are adjacent: True where a run of equal keys starts."""
    first = torch.zeros_like(sorted_keys[0], dtype=torch.bool)
    if len(first):
        first[0] = True
    for keys in sorted_keys:
        first[1:] |= keys[1:] != keys[:-1]
    return first


def _count_within_runs(flags: torch.Tensor, first_of_run: torch.Tensor) -> torch.Tensor:
    """How many of `flags` are set from the start of each position's run up to and including that position."""
    running = torch.cumsum(flags.long(), dim=0)
    before = running - flags.long()  # the count before each position
    positions = torch.arange(len(flags), device=flags.device)
    run_start = torch.where(first_of_run, positions, 0).cummax(dim=0).values
    return running - before[run_start]


def accept_per_group(
    scores: torch.Tensor,
    groups: torch.Tensor,
    per_group: int | None = 1,
    threshold: float | None = None,
    duplicate_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """Local selection for binary or sparse rewards (RAFT as rejection sampling, Xiong et al. 2025), the twin of
    `reference.accepted_per_group`. `scores` and `groups` are [N] (any integer group ids, any group sizes, any
    order); returns a bool mask of the kept candidates: per group, up to `per_group` of them (None: all) in
    descending score order, the earliest candidate first on ties, only those >= `threshold` (if given), never a NaN.
    With `duplicate_keys` [N] (ints; equal keys within a group mean the same completion text), a candidate whose
    key was already kept in its group is skipped, so a prompt contributes distinct completions only.
    """
    valid = ~torch.isnan(scores)
    if threshold is not None:
        valid &= scores >= threshold
    # Best first, earliest first on ties; then grouped (stable sorts keep that order inside each group).
    by_score = torch.sort(torch.where(valid, scores, -torch.inf), descending=True, stable=True).indices
    eligible = valid.clone()
    if duplicate_keys is not None:
        # Within each (group, key) run, in score order, a valid candidate after the run's first valid one is a copy.
        # That first copy was kept unless its group was already full, and then this one would not be kept either:
        # the same as the reference's "skip a text already kept".
        by_key = by_score[torch.sort(duplicate_keys[by_score], stable=True).indices]
        by_key = by_key[torch.sort(groups[by_key], stable=True).indices]
        first = _first_of_runs([groups[by_key], duplicate_keys[by_key]])
        copies_so_far = _count_within_runs(valid[by_key], first)
        eligible[by_key] = valid[by_key] & (copies_so_far == 1)
    order = by_score[torch.sort(groups[by_score], stable=True).indices]
    rank = _count_within_runs(eligible[order], _first_of_runs([groups[order]]))
    kept_in_order = eligible[order] if per_group is None else eligible[order] & (rank <= per_group)
    kept = torch.zeros_like(valid)
    kept[order] = kept_in_order
    return kept


@dataclass(frozen=True)
class SelectionRule:
    """How a stage chooses what it keeps from its pool, decided once by the run's configuration
    (`StageConfig.selection_rule`, which a trainer's config extends) and applied alike by the trainers and the score
    phase. The cycle calls `select`; nothing else in it knows which rule runs or which loss it feeds."""

    ranking: str  # "local": the best of each prompt's group; "global": the top of the pool
    num_kept: int  # global ranking: how many the pool keeps
    per_group: int = 1  # local ranking: how many distinct candidates a prompt may keep
    threshold: float | None = None  # a candidate is accepted only if its reward reaches it
    rejected_column: str | None = None  # a bool column marking candidates never accepted (truncated ones, say)
    distinct_columns: tuple[str, ...] = ()  # candidates equal in all these are one sample when several are kept
    contrast_groups: bool = False  # keep every eligible candidate of the groups with contrast (Reinforce-Rej)

    @property
    def rejects(self) -> bool:
        """Whether candidates are rejected on their own (a threshold, a rejected column), not only by rank."""
        return self.threshold is not None or self.rejected_column is not None

    def eligible(self, pool: Pool) -> torch.Tensor:
        """The mask of candidates any rule may keep: rewarded (and not filtered out), not in `rejected_column`."""
        eligible = ~torch.isnan(pool.rewards)
        if self.rejected_column is not None:
            eligible &= ~torch.tensor(pool.candidates[self.rejected_column], dtype=torch.bool)
        return eligible

    def accepted(self, pool: Pool) -> torch.Tensor:
        """The eligible candidates that reach the threshold, when there is one."""
        accepted = self.eligible(pool)
        if self.threshold is not None:
            accepted &= pool.rewards >= self.threshold
        return accepted

    def duplicate_keys(self, candidates: Candidates) -> torch.Tensor | None:
        """Equal ints for equal candidates (the same values in `distinct_columns`), so that a prompt keeps distinct
        ones only; None when the rule names no such column."""
        if not self.distinct_columns:
            return None
        keys: dict = {}
        rows = zip(*(candidates[name] for name in self.distinct_columns))
        return torch.tensor([keys.setdefault(row, len(keys)) for row in rows])

    def select(self, pool: Pool) -> Selection:
        """The stage's kept set. By rank: the best `per_group` distinct accepted candidates of each prompt (or the
        top `num_kept` of the pool), by the ranking score. With `contrast_groups`: every eligible candidate of the
        prompts whose rewards differ (with a threshold: that have accepted and rejected samples), wrong ones too."""
        accepted = self.accepted(pool)
        if self.contrast_groups:
            kept = mixed_groups(exclude(pool.rewards, ~self.eligible(pool)), pool.groups, self.threshold)
            contrast = "accepted and rejected samples" if self.threshold is not None else "rewards that differ"
            rule = f", and none of the {len(pool.groups.unique())} prompts had {contrast}"
        else:
            kept = select(
                exclude(pool.scores, ~accepted),
                self.ranking,
                pool.groups,
                self.num_kept,
                per_group=self.per_group,
                duplicate_keys=self.duplicate_keys(pool.candidates),
            )
            rule = f" (reward >= reward_threshold={self.threshold})" if self.threshold is not None else ""
        return Selection(kept, accepted if self.rejects else None, rule)


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
