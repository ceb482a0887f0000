import numpy as np
import torch

from raft_trainer import reference
from raft_trainer.stages import selection


def contiguous_groups(sizes: list[int]) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


def test_best_per_group_matches_the_reference():
    rewards = torch.tensor([[0.1, 0.7, 0.7, 0.2], [0.9, 0.1, 0.3, 0.95], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    kept = selection.best_per_group(rewards.view(-1), contiguous_groups([4, 4, 4])).view(3, 4)
    assert kept.sum(dim=1).tolist() == [1, 1, 1]
    assert kept.int().argmax(dim=1).tolist() == reference.best_of_k(rewards.tolist()) == [1, 3, 0]


def test_best_per_group_with_groups_of_any_size_in_any_order():
    # Candidates from a file join the model's own: prompts have different numbers of candidates.
    groups_rewards = [[0.2, 0.9, 0.1], [0.5], [0.3, 0.3, 0.8, 0.8, 0.1], [0.4, 0.6]]
    scores = torch.tensor([reward for rewards in groups_rewards for reward in rewards])
    groups = contiguous_groups([len(rewards) for rewards in groups_rewards])
    kept = selection.best_per_group(scores, groups)
    starts = [0, 3, 4, 9]
    assert kept.nonzero().view(-1).tolist() == [
        start + k for start, k in zip(starts, reference.best_of_k(groups_rewards))
    ]
    # Shuffled, with other group ids: one candidate per group, with the group's best score (which of two tied ones
    # is kept depends on the order, so only the scores are compared).
    permutation = torch.randperm(len(scores), generator=torch.Generator().manual_seed(0))
    shuffled = selection.best_per_group(scores[permutation], (groups * 7 + 3)[permutation])
    kept_in_shuffle = permutation[shuffled]
    assert sorted(groups[kept_in_shuffle].tolist()) == [0, 1, 2, 3]
    assert sorted(scores[kept_in_shuffle].tolist()) == sorted(scores[kept].tolist())


def test_top_of_pool_matches_the_reference():
    scores = torch.tensor([0.3, 0.9, 0.1, 0.9, 0.5, -1.0])
    kept = selection.top_of_pool(scores, 3)
    assert kept.nonzero().view(-1).tolist() == sorted(reference.top_of_pool(scores.tolist(), 3)) == [1, 3, 4]


def test_nan_is_never_kept_and_a_prompt_without_rewards_keeps_nothing():
    nan = float("nan")
    scores = torch.tensor([[nan, -5.0, nan], [nan, nan, nan]])
    kept = selection.best_per_group(scores.view(-1), contiguous_groups([3, 3]))
    assert kept.tolist() == [False, True, False, False, False, False]
    assert selection.top_of_pool(torch.tensor([nan, 1.0, nan, 0.5]), 3).tolist() == [False, True, False, True]


def test_kl_penalty_changes_which_candidate_is_kept():
    rewards = torch.tensor([1.0, 0.9])
    log_probs, ref_log_probs = torch.tensor([-1.0, -5.0]), torch.tensor([-5.0, -5.0])
    one_prompt = torch.tensor([0, 0])
    assert selection.select(rewards, "local", one_prompt, 1).tolist() == [True, False]
    scores = selection.kl_penalized_scores(rewards, log_probs, ref_log_probs, beta=0.1)
    np.testing.assert_allclose(scores, reference.kl_penalized_score([1.0, 0.9], [-1.0, -5.0], [-5.0, -5.0], 0.1))
    assert selection.select(scores, "local", one_prompt, 1).tolist() == [False, True]


def test_select_groups_local_ranking_by_prompt():
    scores = torch.tensor([0.1, 0.5, 0.9, 0.2, 0.3, 0.4])
    assert selection.select(scores, "local", contiguous_groups([3, 3]), 2).tolist() == [0, 0, 1, 0, 0, 1]
    assert selection.select(scores, "local", contiguous_groups([2, 2, 2]), 3).tolist() == [0, 1, 1, 0, 0, 1]
    assert selection.select(scores, "global", torch.zeros(6), 2).tolist() == [0, 1, 1, 0, 0, 0]


def flat_groups(groups_rewards: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Flat scores and group ids of per-group lists, and each group's first flat index."""
    scores = torch.tensor([reward for rewards in groups_rewards for reward in rewards], dtype=torch.float64)
    sizes = [len(rewards) for rewards in groups_rewards]
    starts = np.cumsum([0] + sizes[:-1]).tolist()
    return scores, contiguous_groups(sizes), starts


def test_accept_per_group_with_threshold_and_top_m():
    # Binary rewards, up to 2 per prompt, threshold 1:
    #   group 0 [1, 0, 1, 1]: the correct ones are 0, 2, 3; the first two by index are kept -> 0, 2
    #   group 1 [0, 0, 0]: its best is below the threshold -> nothing
    #   group 2 [1]: -> 0
    #   group 3 [0, 1]: -> 1
    groups_rewards = [[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0], [0.0, 1.0]]
    scores, groups, starts = flat_groups(groups_rewards)
    kept = selection.accept_per_group(scores, groups, per_group=2, threshold=1.0)
    assert kept.nonzero().view(-1).tolist() == [0, 2, 7, 9]
    assert reference.accepted_per_group(groups_rewards, threshold=1.0, per_group=2) == [[0, 2], [], [0], [1]]
    # No limit keeps every correct one; no threshold keeps the best two whatever they are.
    assert selection.accept_per_group(scores, groups, None, 1.0).nonzero().view(-1).tolist() == [0, 2, 3, 7, 9]
    assert selection.accept_per_group(scores, groups, 2).nonzero().view(-1).tolist() == [0, 2, 4, 5, 7, 8, 9]


def test_accept_per_group_orders_by_score_before_index():
    # Continuous rewards, 2 per group, threshold 0.5: [0.6, 0.9, 0.7, 0.9] keeps the two 0.9 (indices 1 and 3), not
    # the first two above the threshold; [0.4, 0.55] keeps only 0.55.
    groups_rewards = [[0.6, 0.9, 0.7, 0.9], [0.4, 0.55]]
    scores, groups, _ = flat_groups(groups_rewards)
    assert selection.accept_per_group(scores, groups, 2, 0.5).nonzero().view(-1).tolist() == [1, 3, 5]
    assert reference.accepted_per_group(groups_rewards, threshold=0.5, per_group=2) == [[1, 3], [1]]


def test_accept_per_group_keeps_distinct_completions():
    # One prompt, all correct, texts a a b a c: two distinct ones are a (index 0) and b (index 2); with room for four,
    # a, b and c (0, 2, 4): the copies of a never come back.
    scores = torch.ones(5)
    groups = torch.zeros(5, dtype=torch.long)
    keys = torch.tensor([10, 10, 11, 10, 12])
    assert selection.accept_per_group(scores, groups, 2, 1.0, keys).nonzero().view(-1).tolist() == [0, 2]
    assert selection.accept_per_group(scores, groups, 4, 1.0, keys).nonzero().view(-1).tolist() == [0, 2, 4]
    texts = [["a", "a", "b", "a", "c"]]
    assert reference.accepted_per_group([[1.0] * 5], 1.0, 4, texts) == [[0, 2, 4]]
    # Equal keys in different groups are different prompts' completions: both are kept.
    kept = selection.accept_per_group(torch.ones(3), torch.tensor([0, 1, 1]), 2, None, torch.tensor([5, 5, 5]))
    assert kept.tolist() == [True, True, False]


def test_accept_per_group_never_keeps_nan_or_excluded():
    nan = float("nan")
    scores = torch.tensor([nan, 0.2, nan, nan, nan, 1.0, 0.9])
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    assert selection.accept_per_group(scores, groups, 3).tolist() == [False, True, False, False, False, True, True]
    assert reference.accepted_per_group([[nan, 0.2, None], [nan, None], [1.0, 0.9]], per_group=3) == [[1], [], [0, 1]]
    # A truncated completion is excluded by making its score NaN: the best of group 2 goes, the next one stays.
    truncated = torch.tensor([False, False, False, False, False, True, False])
    kept = selection.accept_per_group(selection.exclude(scores, truncated), groups, 1)
    assert kept.tolist() == [False, True, False, False, False, False, True]
    assert not selection.accept_per_group(torch.empty(0), torch.empty(0, dtype=torch.long), 2).any()


def test_accept_per_group_matches_the_reference_on_random_shuffled_groups():
    generator = np.random.default_rng(6)
    for _ in range(50):
        num = int(generator.integers(1, 40))
        group_ids = generator.choice([-3, 0, 4, 9, 250, 31], size=num)
        # Few distinct values so that ties, thresholds and duplicate texts all happen.
        rewards = generator.choice([0.0, 0.5, 1.0, np.nan], size=num, p=[0.35, 0.2, 0.35, 0.1])
        keys = generator.integers(0, 4, size=num)
        per_group = [None, 0, 1, 2, 3][int(generator.integers(0, 5))]
        threshold = [None, 0.5, 1.0][int(generator.integers(0, 3))]
        distinct = bool(generator.integers(0, 2))
        duplicate_keys = torch.tensor(keys) if distinct else None
        scores, groups = torch.tensor(rewards), torch.tensor(group_ids)
        kept = selection.accept_per_group(scores, groups, per_group, threshold, duplicate_keys)
        # The reference sees each group's candidates in flat order, which is what "earliest first" means.
        members = [np.flatnonzero(group_ids == group) for group in np.unique(group_ids)]
        texts = [[str(keys[i]) for i in indices] for indices in members] if distinct else None
        accepted = reference.accepted_per_group(
            [rewards[indices].tolist() for indices in members], threshold, per_group, texts
        )
        expected = sorted(int(indices[k]) for indices, ks in zip(members, accepted) for k in ks)
        assert kept.nonzero().view(-1).tolist() == expected


def test_accept_per_group_of_one_is_best_per_group():
    generator = torch.Generator().manual_seed(7)
    for _ in range(20):
        scores = torch.randint(0, 3, (25,), generator=generator).double()
        scores[torch.rand(25, generator=generator) < 0.2] = float("nan")
        groups = torch.randint(0, 6, (25,), generator=generator) * 3 - 5
        assert torch.equal(selection.accept_per_group(scores, groups, 1), selection.best_per_group(scores, groups))


def test_top_of_pool_with_a_threshold():
    # The best three of the pool are 0.9, 0.9 and 0.5 (indices 1, 3, 4); at threshold 0.6 only two are good enough.
    scores = torch.tensor([0.3, 0.9, 0.1, 0.9, 0.5])
    assert selection.top_of_pool(scores, 3, threshold=0.5).nonzero().view(-1).tolist() == [1, 3, 4]
    assert selection.top_of_pool(scores, 3, threshold=0.6).nonzero().view(-1).tolist() == [1, 3]
    assert selection.top_of_pool(scores, 3, threshold=2.0).sum().item() == 0
    assert selection.top_of_pool(scores, 3).nonzero().view(-1).tolist() == [1, 3, 4]
