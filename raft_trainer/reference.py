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
