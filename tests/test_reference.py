import numpy as np
import pytest

from raft_trainer import reference


def test_raft_alignment_example_from_the_spec():
    log_probs = [[[[-2.0, -1.8], [-1.5, -1.6]]], [[[-0.6, -0.5], [-0.7, -0.8]]], [[[-0.2, -0.1], [-0.3, -0.4]]]]
    rewards = [[[0.2, 0.4]], [[0.75, 0.7]], [[0.95, 0.8]]]
    assert reference.raft_alignment(log_probs, rewards) == [1.55, 0.55, 0.15]


def test_raft_alignment_weighs_tokens_not_sequences():
    # Two prompts; the kept candidates have 1 and 3 tokens: the loss is total NLL / total tokens = 6 / 4.
    log_probs = [[[[-9.0], [-3.0]], [[-1.0, -1.0, -1.0], [-5.0]]]]
    rewards = [[[0.0, 1.0], [1.0, 0.0]]]
    assert reference.raft_alignment(log_probs, rewards) == [1.5]


def test_best_of_k_takes_the_first_on_ties():
    assert reference.best_of_k([[0.1, 0.5, 0.5], [2.0, 1.0, 2.0]]) == [1, 0]


def test_top_of_pool():
    assert reference.top_of_pool([0.3, 0.9, 0.1, 0.9, 0.5], 3) == [1, 3, 4]


def test_rlhf_weight_update_example_from_the_spec():
    updated = reference.rlhf_weight_update(
        weights=[1.0, 1.0],
        rewards=[1.0, 1.0],
        policy_log_probs=[-1.5, -1.5],
        ref_log_probs=[-1.5, -1.5],
        log_prob_grads=[[0.5, -0.5], [0.5, -0.5]],
        beta=1.0,
        lr=0.1,
    )
    np.testing.assert_allclose(updated, [1.05, 0.95])


def test_rlhf_weight_update_penalises_drift_from_the_reference():
    # Sample 0 drifted (KL 2): its adjusted reward is 1 - 0.5 * 2 = 0, so only sample 1 moves the weights.
    updated = reference.rlhf_weight_update(
        weights=[0.0, 0.0],
        rewards=[1.0, 1.0],
        policy_log_probs=[-1.0, -2.0],
        ref_log_probs=[-3.0, -2.0],
        log_prob_grads=[[1.0, 0.0], [0.0, 1.0]],
        beta=0.5,
        lr=1.0,
    )
    np.testing.assert_allclose(updated, [0.0, 0.5])


def test_kl_penalized_score():
    np.testing.assert_allclose(reference.kl_penalized_score([1.0, 2.0], [-1.0, -4.0], [-2.0, -2.0], 0.1), [0.9, 2.2])


def test_pairwise_reward_loss():
    assert reference.pairwise_reward_loss([0.0], [0.0]) == pytest.approx(np.log(2))
    assert reference.pairwise_reward_loss([2.0, 1.0], [0.0, 3.0]) == pytest.approx(
        (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(2.0))) / 2
    )


def test_sft_loss():
    assert reference.sft_loss([[-1.0, -2.0], [-3.0]]) == pytest.approx(2.0)
