import numpy as np
import torch

from raft_trainer import ranking, reference


def contiguous_groups(sizes: list[int]) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


def test_best_per_group_matches_the_reference():
    rewards = torch.tensor([[0.1, 0.7, 0.7, 0.2], [0.9, 0.1, 0.3, 0.95], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    kept = ranking.best_per_group(rewards.view(-1), contiguous_groups([4, 4, 4])).view(3, 4)
    assert kept.sum(dim=1).tolist() == [1, 1, 1]
    assert kept.int().argmax(dim=1).tolist() == reference.best_of_k(rewards.tolist()) == [1, 3, 0]


def test_best_per_group_with_groups_of_any_size_in_any_order():
    # Candidates from a file join the model's own: prompts have different numbers of candidates.
    groups_rewards = [[0.2, 0.9, 0.1], [0.5], [0.3, 0.3, 0.8, 0.8, 0.1], [0.4, 0.6]]
    scores = torch.tensor([reward for rewards in groups_rewards for reward in rewards])
    groups = contiguous_groups([len(rewards) for rewards in groups_rewards])
    kept = ranking.best_per_group(scores, groups)
    starts = [0, 3, 4, 9]
    assert kept.nonzero().view(-1).tolist() == [
        start + k for start, k in zip(starts, reference.best_of_k(groups_rewards))
    ]
    # Shuffled, with other group ids: one candidate per group, with the group's best score (which of two tied ones
    # is kept depends on the order, so only the scores are compared).
    permutation = torch.randperm(len(scores), generator=torch.Generator().manual_seed(0))
    shuffled = ranking.best_per_group(scores[permutation], (groups * 7 + 3)[permutation])
    kept_in_shuffle = permutation[shuffled]
    assert sorted(groups[kept_in_shuffle].tolist()) == [0, 1, 2, 3]
    assert sorted(scores[kept_in_shuffle].tolist()) == sorted(scores[kept].tolist())


def test_top_of_pool_matches_the_reference():
    scores = torch.tensor([0.3, 0.9, 0.1, 0.9, 0.5, -1.0])
    kept = ranking.top_of_pool(scores, 3)
    assert kept.nonzero().view(-1).tolist() == sorted(reference.top_of_pool(scores.tolist(), 3)) == [1, 3, 4]


def test_nan_is_never_kept_and_a_prompt_without_rewards_keeps_nothing():
    nan = float("nan")
    scores = torch.tensor([[nan, -5.0, nan], [nan, nan, nan]])
    kept = ranking.best_per_group(scores.view(-1), contiguous_groups([3, 3]))
    assert kept.tolist() == [False, True, False, False, False, False]
    assert ranking.top_of_pool(torch.tensor([nan, 1.0, nan, 0.5]), 3).tolist() == [False, True, False, True]


def test_kl_penalty_changes_which_candidate_is_kept():
    rewards = torch.tensor([1.0, 0.9])
    log_probs, ref_log_probs = torch.tensor([-1.0, -5.0]), torch.tensor([-5.0, -5.0])
    one_prompt = torch.tensor([0, 0])
    assert ranking.select(rewards, "local", one_prompt, 1).tolist() == [True, False]
    scores = ranking.kl_penalized_scores(rewards, log_probs, ref_log_probs, beta=0.1)
    np.testing.assert_allclose(scores, reference.kl_penalized_score([1.0, 0.9], [-1.0, -5.0], [-5.0, -5.0], 0.1))
    assert ranking.select(scores, "local", one_prompt, 1).tolist() == [False, True]


def test_select_groups_local_ranking_by_prompt():
    scores = torch.tensor([0.1, 0.5, 0.9, 0.2, 0.3, 0.4])
    assert ranking.select(scores, "local", contiguous_groups([3, 3]), 2).tolist() == [0, 0, 1, 0, 0, 1]
    assert ranking.select(scores, "local", contiguous_groups([2, 2, 2]), 3).tolist() == [0, 1, 1, 0, 0, 1]
    assert ranking.select(scores, "global", torch.zeros(6), 2).tolist() == [0, 1, 1, 0, 0, 0]
