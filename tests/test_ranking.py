import numpy as np
import torch

from raft_trainer import ranking, reference


def test_best_per_prompt_matches_the_reference():
    rewards = torch.tensor([[0.1, 0.7, 0.7, 0.2], [0.9, 0.1, 0.3, 0.95], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    kept = ranking.best_per_prompt(rewards)
    assert kept.sum(dim=1).tolist() == [1, 1, 1]
    assert kept.int().argmax(dim=1).tolist() == reference.best_of_k(rewards.tolist()) == [1, 3, 0]


def test_top_of_pool_matches_the_reference():
    scores = torch.tensor([0.3, 0.9, 0.1, 0.9, 0.5, -1.0])
    kept = ranking.top_of_pool(scores, 3)
    assert kept.nonzero().view(-1).tolist() == sorted(reference.top_of_pool(scores.tolist(), 3)) == [1, 3, 4]


def test_nan_is_never_kept_and_a_prompt_without_rewards_keeps_nothing():
    nan = float("nan")
    scores = torch.tensor([[nan, -5.0, nan], [nan, nan, nan]])
    assert ranking.best_per_prompt(scores).tolist() == [[False, True, False], [False, False, False]]
    assert ranking.top_of_pool(torch.tensor([nan, 1.0, nan, 0.5]), 3).tolist() == [False, True, False, True]


def test_kl_penalty_changes_which_candidate_is_kept():
    rewards = torch.tensor([1.0, 0.9])
    log_probs, ref_log_probs = torch.tensor([-1.0, -5.0]), torch.tensor([-5.0, -5.0])
    assert ranking.select(rewards, "local", 2, 1).tolist() == [True, False]
    scores = ranking.kl_penalized_scores(rewards, log_probs, ref_log_probs, beta=0.1)
    np.testing.assert_allclose(scores, reference.kl_penalized_score([1.0, 0.9], [-1.0, -5.0], [-5.0, -5.0], 0.1))
    assert ranking.select(scores, "local", 2, 1).tolist() == [False, True]


def test_select_groups_local_ranking_by_prompt():
    scores = torch.tensor([0.1, 0.5, 0.9, 0.2, 0.3, 0.4])
    assert ranking.select(scores, "local", 3, 2).tolist() == [False, False, True, False, False, True]
    assert ranking.select(scores, "local", 2, 3).tolist() == [False, True, True, False, False, True]
    assert ranking.select(scores, "global", 6, 2).tolist() == [False, True, True, False, False, False]
