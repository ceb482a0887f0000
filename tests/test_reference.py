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


def test_accepted_per_group():
    # Group 0: rewards 0.2, 1, 1, 0.7: in descending order 1 (index 1), 1 (index 2, later on the tie), 0.7, 0.2.
    # Group 1: best 0.4, below the threshold 0.5: keeps nothing. Group 2: one candidate without a reward.
    rewards = [[0.2, 1.0, 1.0, 0.7], [0.4, 0.1], [None]]
    assert reference.accepted_per_group(rewards) == [[1], [0], []]
    assert reference.accepted_per_group(rewards, threshold=0.5, per_group=3) == [[1, 2, 3], [], []]
    assert reference.accepted_per_group(rewards, per_group=None) == [[1, 2, 3, 0], [0, 1], []]
    # Texts: index 2 repeats index 1, so the second place goes to index 3.
    texts = [["w", "x", "x", "y"], ["p", "q"], ["r"]]
    assert reference.accepted_per_group(rewards, 0.5, 2, texts) == [[1, 3], [], []]


def test_clipped_policy_loss_worked_example():
    # Clip range [0.8, 1.3]. Sequence 0 (A = 1), ratios 1.0, 1.5, 0.5 -> token losses -1.0, -1.3 (clipped), -0.5;
    # sequence 1 (A = -1), ratios 1.1, 0.7 -> 1.1, 0.8 (clipped). Token-mean -0.9 / 5 = -0.18, clip fraction 2 / 5,
    # ratio mean 4.8 / 5 = 0.96.
    old = [[-1.0, -2.0, -0.5], [-0.3, -1.2]]
    ratios = [[1.0, 1.5, 0.5], [1.1, 0.7]]
    new = [[o + np.log(r) for o, r in zip(olds, rs)] for olds, rs in zip(old, ratios)]
    loss, clip_fraction, ratio_mean = reference.clipped_policy_loss(new, old, [1.0, -1.0], 0.2, 0.3)
    assert (loss, clip_fraction, ratio_mean) == pytest.approx((-0.18, 0.4, 0.96))
    # A zero advantage gives a zero loss and is never counted as clipped, whatever its ratio.
    assert reference.clipped_policy_loss([[0.0, 3.0]], [[0.0, 0.0]], [0.0], 0.2, 0.2)[:2] == (0.0, 0.0)


def test_clipped_policy_loss_dual_clip():
    # A = -2, ratio 4: the ordinary clip keeps max(8, 2.4) = 8; the dual clip (c = 3) caps it at 2 * 3 = 6.
    new, old = [[np.log(4.0)]], [[0.0]]
    assert reference.clipped_policy_loss(new, old, [-2.0], 0.2, 0.2)[0] == pytest.approx(8.0)
    assert reference.clipped_policy_loss(new, old, [-2.0], 0.2, 0.2, dual_clip=3.0)[0] == pytest.approx(6.0)
    # Positive advantages are untouched by the dual clip: A = 2, ratio 4 -> -2 * 1.2.
    assert reference.clipped_policy_loss(new, old, [2.0], 0.2, 0.2, dual_clip=3.0)[0] == pytest.approx(-2.4)


def test_reinforce_rej_keep():
    nan = float("nan")
    rewards = [[1, 1, 1, 1], [0, 1, 0, 0], [-1, -1], [1], [1, nan, 1], [1, nan, -1], [], [0.3, 0.7]]
    assert reference.reinforce_rej_keep(rewards) == [False, True, False, False, False, True, False, True]


def test_low_var_kl():
    # d = ref - log_prob: 0 -> 0, 1 -> e - 2, -1 -> 1/e, 4 -> e^4 - 5 = 49.6, clamped to 10.
    log_probs, ref = [0.0, -1.0, 0.0, -4.0], [0.0, 0.0, -1.0, 0.0]
    np.testing.assert_allclose(reference.low_var_kl(log_probs, ref), [0.0, np.e - 2, np.exp(-1), 10.0])
    assert reference.low_var_kl(log_probs, ref, max_value=None)[3] == pytest.approx(np.exp(4) - 5)


def test_entropy():
    # Uniform over 4: log 4. p = (1/2, 1/4, 1/4) from logits log p: -(1/2 log 1/2 + 2 * 1/4 log 1/4) = 1.5 log 2.
    np.testing.assert_allclose(reference.entropy([[0.0, 0.0, 0.0, 0.0]]), [np.log(4)])
    np.testing.assert_allclose(reference.entropy(np.log([0.5, 0.25, 0.25]) + 7.0), 1.5 * np.log(2))
