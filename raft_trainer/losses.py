"""The losses of RAFT, RAFT++ and Reinforce-Rej as pure torch functions on padded batches: no model, no I/O.

Xiong et al., "A Minimalist Approach to LLM Reasoning: from Rejection Sampling to Reinforce" (arXiv 2504.11343,
2025; code github.com/RLHFlow/Minimal-RL, built on verl) compare three ways to learn from a stage of sampled and
rewarded completions:

- RAFT keeps the accepted completions (reward 1, correct) and trains on them with the plain SFT loss, the mean
  negative log-likelihood of their tokens. Nothing here is needed for it beyond `selected_token_log_probs`.
- RAFT++ trains on the same accepted completions, but each token's loss is importance-weighted by
  rho = pi_theta / pi_old, the ratio between the policy being trained and the policy that sampled the stage, and
  PPO-clipped: -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A) with A = 1. On the stage's first step rho is
  1 and the gradient is the SFT gradient; later steps stop pushing a token once its ratio has left the clip range.
- Reinforce-Rej drops the prompts whose completions all got the same reward (all correct or all wrong: no contrast)
  and trains on every completion of the other prompts with that same clipped loss, using its reward as advantage,
  so wrong completions (negative advantage) are pushed down. The paper's rewards are +1 / -1; with 0 / 1 rewards
  (as Minimal-RL's released reward functions return) the wrong completions get advantage 0 and teach nothing.

All three may add a small KL loss to the initial model (the "k3" estimate `low_var_kl`, coefficient about 0.001 in
the paper's runs). Tensors are [B, T] with a completion `mask` [B, T] (bool or 0/1) marking the tokens that count;
means are "token-mean" over the masked tokens of the whole batch, as in verl. `raft_trainer.reference` holds the
same maths in plain numpy, which the tests check these against.
"""

import math

import torch

# exp(20) is about 5e8: far outside any clip range, and finite in float32 and bfloat16.
_MAX_LOG_RATIO = 20.0


def token_mean(
    values: torch.Tensor, mask: torch.Tensor, num_tokens: torch.Tensor | float | None = None
) -> torch.Tensor:
    """The mean of `values` [B, T] over the tokens where `mask` is set (0 when none is): verl's "token-mean".
    Masked-out positions may hold anything, even NaN or inf, without reaching the result or its gradient.

    `num_tokens`: divide the masked sum by this instead of the batch's own token count. A batch that is one
    micro-batch of several accumulated into one optimizer step passes the token count of all of them, so that the
    micro-batches' losses add up to the token-mean of the whole step (as the Trainer's `num_items_in_batch` does for
    a model's own loss), whatever their lengths."""
    mask = mask.bool()
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    # clamp instead of a branch: the empty batch gives 0 and gradients stay finite.
    denominator = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens, device=values.device)
    return total / denominator.clamp(min=1)


def selected_token_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label] at each position: `logits` [..., V] score `labels` [...] position by position (shift
    a causal LM's outputs first). Labels below 0 (the -100 of Hugging Face's ignored positions) give a meaningless
    value instead of an error; mask them. Computed as logit - logsumexp, which never materializes log_softmax."""
    safe_labels = labels.clamp(min=0).unsqueeze(-1)
    return logits.gather(-1, safe_labels).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def clipped_policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    dual_clip: float | None = None,
    num_tokens: torch.Tensor | float | None = None,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss of RAFT++ and Reinforce-Rej: per token, with rho = exp(log_prob - old_log_prob),

        loss_t = max(-A * rho, -A * clip(rho, 1 - epsilon_low, 1 + epsilon_high))

    averaged over the masked tokens of the batch. `log_probs` [B, T] carries the gradient; `old_log_probs` [B, T] are
    the sampling policy's, taken as constants; `advantages` is [B] (one per sequence, broadcast over its tokens) or
    [B, T]. With `dual_clip` = c (Minimal-RL and verl use 3), a token with a negative advantage has its loss capped at
    -A * c. The log-ratio is clamped to +-20 so exp cannot overflow; that changes nothing a clip range would keep.
    `num_tokens` is `token_mean`'s: the token count of the whole accumulated batch when this is one micro-batch.
    `token_weights` [B, T] multiply each token's loss (0 leaves a token out, e.g. a low-entropy one, or an importance
    weight between vLLM's and the policy's sampling); the denominator stays the count of masked tokens.

    Returns (loss, clip_fraction, ratio_mean): `clip_fraction` is the share of masked tokens whose clipped term is
    strictly larger than the unclipped one, that is where the clip is active and the token gives no gradient (verl's
    pg_clipfrac, dual clip not counted), and `ratio_mean` the token-mean of rho; both are detached.
    """
    mask = mask.bool()
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    advantages = advantages.to(log_probs.dtype)
    # Zero the log-ratio of padding before exp: padding may hold -inf log-probs, whose inf ratio would turn the zero
    # gradient of a masked position into NaN.
    log_ratio = torch.where(mask, log_probs - old_log_probs.detach(), torch.zeros_like(log_probs))
    ratio = torch.exp(log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO))
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - epsilon_low, 1.0 + epsilon_high)
    losses = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        losses = torch.where(advantages < 0, torch.minimum(losses, -advantages * dual_clip), losses)
    if token_weights is not None:
        losses = losses * token_weights.to(losses.dtype)
    loss = token_mean(losses, mask, num_tokens if num_tokens is not None else mask.sum())
    with torch.no_grad():
        clip_fraction = token_mean((clipped > unclipped).to(log_probs.dtype), mask)
        ratio_mean = token_mean(ratio, mask)
    return loss, clip_fraction, ratio_mean


def minus_group_mean(advantages: list[float], groups: list[int]) -> list[float]:
    """Each advantage minus the mean of its group's (one prompt's samples): GRPO's centring, without its scaling."""
    totals: dict[int, list[float]] = {}
    for advantage, group in zip(advantages, groups, strict=True):
        totals.setdefault(group, []).append(advantage)
    means = {group: sum(values) / len(values) for group, values in totals.items()}
    return [advantage - means[group] for advantage, group in zip(advantages, groups)]


def importance_sampling_weights(
    log_probs: list[float],
    sampling_log_probs: list[float | None] | None,
    mode: str,
    clip_min: float | None,
    clip_max: float | None,
) -> list[float]:
    """Per completion token, the importance weight pi(y_t) / pi_sampler(y_t) between the policy's log-probs and the
    sampler's (vLLM's) of one sampled completion, as TRL's `vllm_importance_sampling_*` define it (the twin of
    `reference.importance_sampling_weights`): per token (`token_*`) or one for the whole sequence, the product of its
    tokens' ratios (`sequence_*`); outside [clip_min, clip_max] clipped (`*_truncate`) or 0 (`*_mask`). A token the
    sampler gave no log-prob for (None) has ratio 1; a completion with none at all (not sampled by vLLM, or replaced
    by a sample filter) weighs 1 throughout."""
    if sampling_log_probs is None or len(sampling_log_probs) != len(log_probs):
        return [1.0] * len(log_probs)
    differences = torch.tensor(
        [0.0 if sampled is None else old - sampled for old, sampled in zip(log_probs, sampling_log_probs)],
        dtype=torch.float64,
    )
    log_ratios = differences.sum().expand_as(differences) if mode.startswith("sequence") else differences
    ratios = log_ratios.exp()
    low = -math.inf if clip_min is None else clip_min
    high = math.inf if clip_max is None else clip_max
    if mode.endswith("truncate"):
        ratios = ratios.clamp(low, high)
    else:
        ratios = ratios.masked_fill((ratios < low) | (ratios > high), 0.0)
    return ratios.tolist()


def low_var_kl(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, max_value: float | None = 10.0) -> torch.Tensor:
    """The "k3" estimate of KL(policy || reference) per token (Schulman 2020; verl's kl_penalty "low_var_kl"): with
    d = ref_log_prob - log_prob, exp(d) - d - 1, never negative. Clamped at `max_value` (verl's 10; None: no clamp),
    and d is clamped to +-20 first, as in current verl, so a far-off token gives a finite value and gradient.
    Aggregate it with `token_mean` and add coefficient * that to the loss."""
    d = (ref_log_probs - log_probs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    kl = torch.exp(d) - d - 1.0
    return kl if max_value is None else kl.clamp(max=max_value)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) [..., V] at each position, as -sum p log p with log p = log_softmax(l) =
    l - logsumexp(l). verl's logsumexp(l) - sum p * l is the same number, but subtracting two values in the
    thousands loses float32 digits when the logits are large; log_softmax shifts by the largest logit first.
    Logits of -inf (a masked vocabulary) count as probability 0 instead of giving NaN."""
    log_probs = torch.log_softmax(logits, dim=-1)
    finite_log_probs = log_probs.clamp(min=torch.finfo(log_probs.dtype).min)  # 0 * -inf would be NaN
    return -(log_probs.exp() * finite_log_probs).sum(dim=-1)
