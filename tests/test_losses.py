import math

import numpy as np
import pytest
import torch

from raft_trainer import losses, reference
from raft_trainer.stages import selection


def padded(rows: list[list[float]], fill: float = 0.0) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([row + [fill] * (width - len(row)) for row in rows], dtype=torch.float64)


def lengths_mask(lengths: list[int]) -> torch.Tensor:
    return torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]


# The worked example: two sequences, epsilon_low 0.2 and epsilon_high 0.3, so rho is clipped to [0.8, 1.3].
#   sequence 0, A = +1, ratios 1.0, 1.5, 0.5:
#     rho 1.0: max(-1.0, -1.0) = -1.0                 not clipped
#     rho 1.5: max(-1.5, -1.3) = -1.3                 clipped (the gain from a ratio above 1.3 is cut off)
#     rho 0.5: max(-0.5, -0.8) = -0.5                 not clipped (PPO's pessimism keeps the worse, unclipped term)
#   sequence 1, A = -1, ratios 1.1, 0.7:
#     rho 1.1: max(1.1, 1.1) = 1.1                    not clipped
#     rho 0.7: max(0.7, 0.8) = 0.8                    clipped (pushing a wrong token below 0.8 gains nothing)
#   token-mean: (-1.0 - 1.3 - 0.5 + 1.1 + 0.8) / 5 = -0.9 / 5 = -0.18; clipped 2 of 5 tokens = 0.4;
#   ratio mean (1.0 + 1.5 + 0.5 + 1.1 + 0.7) / 5 = 0.96.
#   A sequence-mean would give ((-2.8 / 3) + (1.9 / 2)) / 2 = 0.0083 instead: the lengths must not be averaged away.
WORKED_OLD = [[-1.0, -2.0, -0.5], [-0.3, -1.2]]
WORKED_RATIOS = [[1.0, 1.5, 0.5], [1.1, 0.7]]
WORKED_NEW = [[old + math.log(rho) for old, rho in zip(olds, rhos)] for olds, rhos in zip(WORKED_OLD, WORKED_RATIOS)]
WORKED_ADVANTAGES = [1.0, -1.0]


def test_clipped_policy_loss_worked_example():
    # The padding position holds garbage (-inf and NaN) that the mask must keep out of the loss and the gradient.
    log_probs = padded(WORKED_NEW, fill=float("nan")).requires_grad_()
    old_log_probs = padded(WORKED_OLD, fill=-float("inf"))
    loss, clip_fraction, ratio_mean = losses.clipped_policy_loss(
        log_probs, old_log_probs, torch.tensor(WORKED_ADVANTAGES), lengths_mask([3, 2]), 0.2, 0.3
    )
    assert loss.item() == pytest.approx(-0.18)
    assert clip_fraction.item() == pytest.approx(0.4)
    assert ratio_mean.item() == pytest.approx(0.96)
    loss.backward()
    # d loss_t / d log_prob_t = -A * rho / 5 where the unclipped term is taken, 0 where the clip is active.
    expected = torch.tensor([[-1.0, 0.0, -0.5], [1.1, 0.0, 0.0]], dtype=torch.float64) / 5
    torch.testing.assert_close(log_probs.grad, expected)


def test_clipped_policy_loss_accepts_per_token_advantages():
    advantages = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, 0.0]], dtype=torch.float64)
    loss, _, _ = losses.clipped_policy_loss(
        padded(WORKED_NEW), padded(WORKED_OLD), advantages, lengths_mask([3, 2]), 0.2, 0.3
    )
    assert loss.item() == pytest.approx(-0.18)


def test_clipped_policy_loss_matches_the_reference_on_random_batches():
    generator = np.random.default_rng(0)
    for _ in range(20):
        lengths = generator.integers(1, 9, size=generator.integers(1, 6)).tolist()
        old = [generator.normal(-2.0, 1.0, size=n).tolist() for n in lengths]
        # Log-ratios of std 0.4 put a good share of the tokens outside [0.8, 1.28].
        new = [(np.asarray(o) + generator.normal(0.0, 0.4, size=len(o))).tolist() for o in old]
        advantages = generator.choice([-1.0, 0.0, 1.0, 0.5, -2.0], size=len(lengths)).tolist()
        for dual_clip in (None, 3.0):
            expected = reference.clipped_policy_loss(new, old, advantages, 0.2, 0.28, dual_clip=dual_clip)
            loss, clip_fraction, ratio_mean = losses.clipped_policy_loss(
                padded(new), padded(old), torch.tensor(advantages), lengths_mask(lengths), 0.2, 0.28, dual_clip
            )
            np.testing.assert_allclose([loss.item(), clip_fraction.item(), ratio_mean.item()], expected, rtol=1e-10)


def test_raft_plus_plus_on_the_first_step_has_the_sft_gradient():
    # At the stage's first step the policy is the sampling policy: rho = 1 everywhere, and with A = 1 the gradient of
    # the clipped loss is the gradient of the SFT loss -mean(log_prob) (the values differ: -1 against the NLL).
    log_probs = torch.tensor([[-0.7, -1.9, -0.2], [-1.1, -0.4, 0.0]], dtype=torch.float64, requires_grad=True)
    mask = lengths_mask([3, 2])
    loss, clip_fraction, ratio_mean = losses.clipped_policy_loss(
        log_probs, log_probs.detach(), torch.ones(2), mask, 0.2, 0.2
    )
    assert (loss.item(), clip_fraction.item(), ratio_mean.item()) == (-1.0, 0.0, 1.0)
    (ppo_grad,) = torch.autograd.grad(loss, log_probs)
    (sft_grad,) = torch.autograd.grad(losses.token_mean(-log_probs, mask), log_probs)
    torch.testing.assert_close(ppo_grad, sft_grad)
    assert sft_grad[0, 0].item() == pytest.approx(-1 / 5)


def test_dual_clip_caps_the_loss_of_negative_advantages():
    # A = -1 and rho = 5: the ordinary clip takes max(5, 1.2) = 5, the dual clip caps it at 3 and stops its gradient;
    # a positive advantage with the same ratio is clipped to -1.2 either way.
    log_probs = torch.tensor([[math.log(5.0)], [math.log(5.0)]], dtype=torch.float64, requires_grad=True)
    old, mask, advantages = torch.zeros(2, 1, dtype=torch.float64), torch.ones(2, 1), torch.tensor([-1.0, 1.0])
    plain, _, _ = losses.clipped_policy_loss(log_probs, old, advantages, mask, 0.2, 0.2)
    assert plain.item() == pytest.approx((5.0 - 1.2) / 2)
    capped, clip_fraction, _ = losses.clipped_policy_loss(log_probs, old, advantages, mask, 0.2, 0.2, dual_clip=3.0)
    assert capped.item() == pytest.approx((3.0 - 1.2) / 2)
    assert clip_fraction.item() == pytest.approx(0.5)  # only the positive one counts as clipped, as in verl
    (grad,) = torch.autograd.grad(capped, log_probs)
    assert grad.abs().sum().item() == 0.0


def test_clipped_policy_loss_of_an_empty_mask_is_zero_with_finite_gradients():
    log_probs = torch.randn(2, 3, requires_grad=True)
    loss, clip_fraction, ratio_mean = losses.clipped_policy_loss(
        log_probs, torch.randn(2, 3), torch.ones(2), torch.zeros(2, 3, dtype=torch.bool), 0.2, 0.2
    )
    assert (loss.item(), clip_fraction.item(), ratio_mean.item()) == (0.0, 0.0, 0.0)
    loss.backward()
    assert torch.equal(log_probs.grad, torch.zeros(2, 3))


def test_low_var_kl_values_clamp_and_gradient():
    # d = ref - log_prob: 0 -> 0; 1 -> e - 2 = 0.71828; -1 -> e^-1 + 1 - 1 = 0.36788; 3 -> e^3 - 4 = 16.09, clamped
    # to 10; 100 -> clamped too, with d itself clamped to 20 first so nothing overflows.
    log_probs = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([0.0, 1.0, -1.0, 3.0, 100.0], dtype=torch.float64)
    kl = losses.low_var_kl(log_probs, ref)
    torch.testing.assert_close(kl.detach(), torch.tensor([0.0, math.e - 2, math.exp(-1), 10.0, 10.0]).double())
    (grad,) = torch.autograd.grad(kl.sum(), log_probs)
    # d kl / d log_prob = 1 - exp(d): 0, 1 - e, 1 - e^-1; and 0 where the clamp holds.
    torch.testing.assert_close(grad, torch.tensor([0.0, 1 - math.e, 1 - math.exp(-1), 0.0, 0.0]).double())
    unclamped = losses.low_var_kl(log_probs.detach(), ref, max_value=None)
    assert unclamped[3].item() == pytest.approx(math.exp(3) - 4)


def test_low_var_kl_matches_the_reference():
    generator = torch.Generator().manual_seed(1)
    log_probs, ref = -torch.rand(4, 7, generator=generator) * 4, -torch.rand(4, 7, generator=generator) * 4
    for max_value in (10.0, 1.0, None):
        expected = reference.low_var_kl(log_probs.numpy(), ref.numpy(), max_value=max_value)
        np.testing.assert_allclose(
            losses.low_var_kl(log_probs, ref, max_value).numpy(), expected, rtol=1e-5, atol=1e-6
        )
        assert (losses.low_var_kl(log_probs, ref, max_value) >= 0).all()


def test_entropy_from_logits():
    # Uniform over 8 tokens: log 8. Logits in the thousands: a certain token (entropy 0) and, with two tied at the
    # top, log 2 (a naive softmax would overflow to NaN; logsumexp - sum p * l would lose float32 digits). Two equal
    # logits among a masked (-inf) vocabulary: log 2 as well.
    inf = float("inf")
    logits = torch.tensor(
        [[0.0] * 8, [5000.0, 0.0] + [-3000.0] * 6, [4000.0, 4000.0] + [0.0] * 6, [1.0, -inf, 1.0] + [-inf] * 5]
    )
    expected = [math.log(8), 0.0, math.log(2), math.log(2)]
    torch.testing.assert_close(losses.entropy_from_logits(logits), torch.tensor(expected))
    np.testing.assert_allclose(reference.entropy(logits[:3].numpy()), expected[:3], atol=1e-6)


def test_entropy_from_logits_matches_the_reference_and_torch_distributions():
    logits = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3
    entropy = losses.entropy_from_logits(logits)
    assert entropy.shape == (3, 5)
    np.testing.assert_allclose(entropy.numpy(), reference.entropy(logits.numpy()), rtol=1e-10)
    torch.testing.assert_close(entropy, torch.distributions.Categorical(logits=logits).entropy())
    # The entropy bonus backpropagates like torch's own entropy.
    logits.requires_grad_()
    (grad,) = torch.autograd.grad(losses.entropy_from_logits(logits).sum(), logits)
    (expected,) = torch.autograd.grad(torch.distributions.Categorical(logits=logits).entropy().sum(), logits)
    torch.testing.assert_close(grad, expected)


def test_selected_token_log_probs():
    logits = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([[1, 5, 0, 2], [3, 3, -100, -100]])
    selected = losses.selected_token_log_probs(logits, labels)
    expected = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    torch.testing.assert_close(selected, expected)
    # The SFT loss of RAFT from the same log-probs is the reference's total NLL over total tokens.
    mask = labels >= 0
    rows = [selected[i][mask[i]].tolist() for i in range(2)]
    assert losses.token_mean(-selected, mask).item() == pytest.approx(reference.sft_loss(rows))


def test_equal_reward_groups_on_ragged_shuffled_groups():
    nan = float("nan")
    groups_rewards = {
        7: [1.0, 1.0, 1.0],  # all correct: dropped
        -2: [0.0, 1.0],  # mixed: kept
        42: [0.5],  # a single reward: nothing to compare, dropped
        3: [-1.0, -1.0, -1.0, -1.0],  # all wrong: dropped
        9: [1.0, nan, -1.0],  # mixed among the valid ones: kept, except the NaN candidate
        5: [1.0, nan, 1.0],  # equal once the NaN is left out: dropped
        11: [nan, nan],  # no reward at all: dropped
        100: [0.25, 0.75, 0.25, 0.25],  # continuous rewards, one differs: kept
    }
    rewards = torch.tensor([reward for values in groups_rewards.values() for reward in values])
    groups = torch.tensor([group for group, values in groups_rewards.items() for _ in values])
    expected_dropped = torch.tensor(
        [True] * 3 + [False] * 2 + [True] + [True] * 4 + [False, True, False] + [True] * 3 + [True] * 2 + [False] * 4
    )
    permutation = torch.randperm(len(rewards), generator=torch.Generator().manual_seed(4))
    dropped = selection.equal_reward_groups(rewards[permutation], groups[permutation])
    assert torch.equal(dropped, expected_dropped[permutation])
    # The reference judges whole groups; a kept group keeps all its candidates with a reward.
    kept_groups = reference.reinforce_rej_keep(list(groups_rewards.values()))
    assert kept_groups == [False, True, False, False, True, False, False, True]
    expected_from_reference = torch.tensor(
        [not keep or math.isnan(r) for keep, values in zip(kept_groups, groups_rewards.values()) for r in values]
    )
    assert torch.equal(expected_dropped, expected_from_reference)


def test_equal_reward_groups_matches_the_reference_on_random_groups():
    generator = np.random.default_rng(5)
    for _ in range(20):
        num = int(generator.integers(1, 30))
        group_ids = generator.choice([-5, 0, 2, 17, 1000], size=num)
        rewards = generator.choice([0.0, 1.0, np.nan], size=num, p=[0.45, 0.45, 0.1])
        dropped = selection.equal_reward_groups(torch.tensor(rewards), torch.tensor(group_ids))
        for group in np.unique(group_ids):
            members = np.flatnonzero(group_ids == group)
            (keep,) = reference.reinforce_rej_keep([rewards[members].tolist()])
            assert dropped[members].tolist() == [not keep or bool(np.isnan(rewards[i])) for i in members]


def test_token_mean_ignores_masked_garbage():
    values = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert losses.token_mean(values, mask).item() == pytest.approx((1 + 2 + 4 + 0) / 4)
