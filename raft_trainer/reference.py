"""The maths of RAFT in plain numpy: the definitions the library is tested against.

Readable next to the paper (Dong et al., "RAFT: Reward rAnked FineTuning for Generative Foundation Model
Alignment", TMLR 2023). Nothing here touches a model; everything takes log-probabilities and rewards.
"""

from collections.abc import Sequence

import numpy as np


def sft_loss(token_log_probs: Sequence[Sequence[float]]) -> float:
    """The SFT loss of a set of sequences: total negative log-likelihood of their tokens over their token count."""
    total_nll = -sum(float(np.sum(tokens)) for tokens in token_log_probs)
    total_tokens = sum(len(tokens) for tokens in token_log_probs)
    return total_nll / total_tokens


def best_of_k(rewards: Sequence[Sequence[float]]) -> list[int]:
    """Local ranking: for each prompt, the index of its highest-reward candidate (the first one on ties)."""
    return [int(np.argmax(prompt_rewards)) for prompt_rewards in rewards]


def top_of_pool(scores: Sequence[float], num_kept: int) -> list[int]:
    """Global ranking (paper appendix A.2): indices of the `num_kept` highest scores of the pool, best first."""
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    return [int(i) for i in order[:num_kept]]


def kl_penalized_score(reward, log_prob, ref_log_prob, beta: float):
    """Paper Eq. 5: the ranking score r(x, y) - beta * (log p(y|x) - log p_ref(y|x)), with sequence log-probs."""
    return np.asarray(reward) - beta * (np.asarray(log_prob) - np.asarray(ref_log_prob))


def raft_alignment(
    stages_log_probs: Sequence[Sequence[Sequence[Sequence[float]]]],
    stages_rewards: Sequence[Sequence[Sequence[float]]],
) -> list[float]:
    """The SFT loss of each RAFT stage with local ranking.

    `stages_log_probs[t][i][k]` holds the token log-probs of candidate k for prompt i at stage t, and
    `stages_rewards[t][i][k]` its reward. Per stage, keep the best candidate of each prompt and return the SFT loss
    of the kept set (total NLL over total tokens), rounded to 4 decimals.
    """
    losses = []
    for log_probs, rewards in zip(stages_log_probs, stages_rewards, strict=True):
        kept = [candidates[k] for candidates, k in zip(log_probs, best_of_k(rewards), strict=True)]
        losses.append(round(sft_loss(kept), 4))
    return losses


def pairwise_reward_loss(chosen_rewards, rejected_rewards) -> float:
    """The reward-model loss of the paper (and of InstructGPT): mean of -log sigmoid(r_chosen - r_rejected)."""
    margin = np.asarray(chosen_rewards, dtype=float) - np.asarray(rejected_rewards, dtype=float)
    return float(np.mean(np.logaddexp(0.0, -margin)))


def rlhf_weight_update(weights, rewards, policy_log_probs, ref_log_probs, log_prob_grads, beta: float, lr: float):
    """One policy-gradient step with a KL penalty, the baseline RAFT is compared with.

    Per sample, the KL estimate is log p(y|x) - log p_ref(y|x) and the adjusted reward is r - beta * KL; the
    gradient is the mean over samples of adjusted reward times that sample's log-prob gradient.
    """
    adjusted = kl_penalized_score(rewards, policy_log_probs, ref_log_probs, beta)
    gradient = np.mean(adjusted[:, None] * np.asarray(log_prob_grads, dtype=float), axis=0)
    return np.asarray(weights, dtype=float) + lr * gradient


# RAFT++ and Reinforce-Rej (Xiong et al., "A Minimalist Approach to LLM Reasoning: from Rejection Sampling to
# Reinforce", arXiv 2504.11343, 2025; code: github.com/RLHFlow/Minimal-RL, built on verl). These take per-sequence
# lists of token log-probs (ragged) or plain arrays; the torch versions in `raft_trainer.losses` work on padded
# batches and are tested against these.


def _has_reward(reward) -> bool:
    return reward is not None and not np.isnan(reward)


def accepted_per_group(
    rewards: Sequence[Sequence[float | None]],
    threshold: float | None = None,
    per_group: int | None = 1,
    texts: Sequence[Sequence[str]] | None = None,
) -> list[list[int]]:
    """Local selection for binary or sparse rewards (RAFT as rejection sampling, Xiong et al. 2025).

    For each group (one prompt's candidates), walk the candidates in descending reward order, the earliest first on
    ties, and keep a candidate when it has a reward (not None or NaN), its reward is >= `threshold` (if given), and,
    when `texts` is given, no candidate with the same text was already kept in that group: a prompt contributes
    distinct completions only. Stop after `per_group` kept candidates (None: no limit). A group whose best reward is
    below the threshold keeps nothing. Returns the kept indices of each group, best first.
    """
    kept_per_group = []
    for k, group_rewards in enumerate(rewards):
        # Candidates without a reward sort last: they are never kept, so their place does not matter.
        order = sorted(
            range(len(group_rewards)),
            key=lambda i: (0, -group_rewards[i]) if _has_reward(group_rewards[i]) else (1, 0.0),
        )
        kept: list[int] = []
        kept_texts = set()
        for i in order:
            if per_group is not None and len(kept) >= per_group:
                break
            reward = group_rewards[i]
            if not _has_reward(reward) or (threshold is not None and reward < threshold):
                continue
            if texts is not None:
                if texts[k][i] in kept_texts:
                    continue
                kept_texts.add(texts[k][i])
            kept.append(i)
        kept_per_group.append(kept)
    return kept_per_group


def clipped_policy_loss(
    log_probs: Sequence[Sequence[float]],
    old_log_probs: Sequence[Sequence[float]],
    advantages: Sequence[float],
    epsilon_low: float,
    epsilon_high: float,
    dual_clip: float | None = None,
    token_weights: Sequence[Sequence[float]] | None = None,
) -> tuple[float, float, float]:
    """The PPO-clipped, importance-weighted loss of RAFT++ and Reinforce-Rej (Xiong et al. 2025).

    Sequence i has token log-probs `log_probs[i]` under the policy being trained and `old_log_probs[i]` under the
    policy that sampled it, and one advantage `advantages[i]` shared by all its tokens (1 for an accepted RAFT++
    sample; the reward itself for Reinforce-Rej). Per token, with rho = exp(log_prob - old_log_prob):

        loss_t = max(-A * rho, -A * clip(rho, 1 - epsilon_low, 1 + epsilon_high))  (= -min(rho A, clip(rho) A))

    With `dual_clip` = c (Minimal-RL and verl use c = 3), a token with a negative advantage has its loss capped at
    -A * c, so a very unlikely-under-the-old-policy token cannot push the loss without bound. `token_weights[i]`
    multiply sequence i's token losses (0 drops a token, as the high-entropy mask does; vLLM's importance weights)
    while every token still counts in the mean.

    Returns (loss, clip_fraction, ratio_mean), all three means over every token of every sequence ("token-mean"
    aggregation, verl's default and what Minimal-RL's runs use: long sequences weigh more; the paper's formula
    writes a mean per sequence instead): `clip_fraction` is the share of tokens where the
    clipped term is strictly larger than the unclipped one, that is where the clip is active and the token gives no
    gradient (verl's pg_clipfrac; the dual clip is not counted), and `ratio_mean` is the mean of rho.
    """
    losses, clipped, ratios = [], [], []
    weights = token_weights if token_weights is not None else [np.ones(len(new)) for new in log_probs]
    for new, old, advantage, weight in zip(log_probs, old_log_probs, advantages, weights, strict=True):
        rho = np.exp(np.asarray(new, dtype=float) - np.asarray(old, dtype=float))
        unclipped_loss = -advantage * rho
        clipped_loss = -advantage * np.clip(rho, 1.0 - epsilon_low, 1.0 + epsilon_high)
        loss = np.maximum(unclipped_loss, clipped_loss)
        if dual_clip is not None and advantage < 0:
            loss = np.minimum(loss, -advantage * dual_clip)
        losses.append(loss * np.asarray(weight, dtype=float))
        clipped.append(clipped_loss > unclipped_loss)
        ratios.append(rho)
    all_losses, all_clipped, all_ratios = (np.concatenate(values) for values in (losses, clipped, ratios))
    return float(np.mean(all_losses)), float(np.mean(all_clipped)), float(np.mean(all_ratios))


def reinforce_rej_keep(
    rewards_per_group: Sequence[Sequence[float | None]], threshold: float | None = None
) -> list[bool]:
    """Reinforce-Rej's prompt filter (Xiong et al. 2025): a group is kept when its rewards are not all
    equal, so prompts whose samples are all correct or all wrong are dropped. Candidates without a reward (None or
    NaN) are left out of the comparison; a group with fewer than two rewards has nothing to compare and is dropped.
    With `threshold`, a group is judged by its verdicts instead (accepted: reward >= threshold; rejected: below), so
    a group whose samples all pass, with different graded rewards, is dropped too: its advantages are all +1."""
    kept = []
    for group_rewards in rewards_per_group:
        valid = [reward for reward in group_rewards if _has_reward(reward)]
        if threshold is not None:
            valid = [reward >= threshold for reward in valid]
        kept.append(len(valid) > 1 and min(valid) != max(valid))
    return kept


def low_var_kl(log_probs, ref_log_probs, max_value: float | None = 10.0) -> np.ndarray:
    """The "k3" estimate of KL(policy || reference) per token (Schulman, "Approximating KL divergence", 2020), used
    as the KL loss of the paper's runs (verl's kl_penalty "low_var_kl", coefficient 0.001): with
    d = ref_log_prob - log_prob, k3 = exp(d) - d - 1, which is >= 0 and unbiased for tokens sampled from the policy.
    verl clamps it to at most 10 (`max_value`; None: no clamp)."""
    d = np.asarray(ref_log_probs, dtype=float) - np.asarray(log_probs, dtype=float)
    kl = np.exp(d) - d - 1.0
    return kl if max_value is None else np.minimum(kl, max_value)


def entropy(logits) -> np.ndarray:
    """Entropy of the softmax of `logits` [..., vocab] at each position: logsumexp(l) - sum softmax(l) * l, with the
    largest logit subtracted first so large logits do not overflow."""
    logits = np.asarray(logits, dtype=float)
    shifted = logits - np.max(logits, axis=-1, keepdims=True)
    log_normalizer = np.log(np.sum(np.exp(shifted), axis=-1))
    probs = np.exp(shifted - log_normalizer[..., None])
    return log_normalizer - np.sum(probs * shifted, axis=-1)


def high_entropy_mask(entropies: Sequence[float], quantile: float) -> np.ndarray:
    """The tokens a `top_entropy_quantile` of `quantile` trains (Wang et al. 2025, "Beyond the 80/20 rule"): those
    whose entropy is at least the (1 - quantile) quantile (linear interpolation) of all the tokens' entropies."""
    entropies = np.asarray(entropies, dtype=float)
    return entropies >= np.quantile(entropies, 1 - quantile)


def importance_sampling_weights(
    log_probs: Sequence[float],
    sampling_log_probs: Sequence[float],
    mode: str,
    clip_min: float | None,
    clip_max: float | None,
) -> np.ndarray:
    """TRL's correction for a sampler (vLLM) whose log-probs differ from the policy's: per token the ratio
    exp(log_prob - sampling_log_prob), or with a `sequence_*` mode one ratio for the whole sequence, exp of the summed
    differences; `*_truncate` clips it into [clip_min, clip_max], `*_mask` sets it to 0 outside."""
    differences = np.asarray(log_probs, dtype=float) - np.asarray(sampling_log_probs, dtype=float)
    if mode.startswith("sequence"):
        differences = np.full_like(differences, differences.sum())
    ratios = np.exp(differences)
    low = -np.inf if clip_min is None else clip_min
    high = np.inf if clip_max is None else clip_max
    if mode.endswith("truncate"):
        return np.clip(ratios, low, high)
    return np.where((ratios < low) | (ratios > high), 0.0, ratios)


def gvm_sample_sizes(accept_rates, grad_norms, budget: int, alpha: float = 1e-3, beta: float = 2.0) -> np.ndarray:
    """GVM-RAFT's allocation (Yao et al. 2025, arXiv 2505.02391): prompt i's share of a budget of samples is
    proportional to G_i / sqrt(p_i + alpha / p_i^(beta - 1)), where p_i is its acceptance rate and G_i the gradient
    norm of its accepted samples, and 0 where p_i or G_i is 0 (an even split if every share is 0). The shares are made
    whole numbers that add up to the budget by largest remainders: floors first, then one more each for the largest
    fractional parts, the lower index first on ties."""
    p, g = np.asarray(accept_rates, dtype=float), np.asarray(grad_norms, dtype=float)
    shares = np.zeros_like(p)
    solved = (p > 0) & (g > 0)
    shares[solved] = g[solved] / np.sqrt(p[solved] + alpha / p[solved] ** (beta - 1))
    if shares.sum() == 0:
        shares = np.ones_like(p)
    exact = budget * shares / shares.sum()
    counts = np.floor(exact).astype(int)
    remainders = exact - counts
    for i in np.lexsort((np.arange(len(p)), -remainders))[: budget - counts.sum()]:
        counts[i] += 1
    return counts


def output_layer_gradient_norm(hidden_states, logits, targets) -> float:
    """The norm of the gradient of a completion's negative log-likelihood, -sum_t log softmax(W h_t)[y_t], with
    respect to the output layer's weight W (logits = W h), built as the explicit matrix sum_t (softmax(W h_t) -
    e_{y_t}) h_t^T. `hidden_states` [T, d] are the output layer's inputs at the completion's positions, `logits`
    [T, V] its outputs there, `targets` [T] the completion's tokens."""
    hidden_states, logits = np.asarray(hidden_states, dtype=float), np.asarray(logits, dtype=float)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    gradient = np.zeros((logits.shape[1], hidden_states.shape[1]))
    for h, p, y in zip(hidden_states, probs, targets):
        error = p.copy()
        error[y] -= 1.0
        gradient += np.outer(error, h)
    return float(np.linalg.norm(gradient))


def reinforce_rej_advantages(
    rewards_per_group: Sequence[Sequence[float]], threshold: float | None = None, baseline: str = "none"
) -> list[list[float]]:
    """Reinforce-Rej's advantages of the kept groups' samples (Xiong et al. 2025): the reward, or with `threshold`
    +1 for an accepted and -1 for a rejected sample; with `baseline="group_mean"` minus the group's mean of them."""
    advantages = []
    for rewards in rewards_per_group:
        values = np.asarray(
            [reward if threshold is None else (1.0 if reward >= threshold else -1.0) for reward in rewards],
            dtype=float,
        )
        advantages.append((values - values.mean() if baseline == "group_mean" else values).tolist())
    return advantages
