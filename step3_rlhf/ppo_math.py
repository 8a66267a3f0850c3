"""The arithmetic of PPO: per-token rewards with a KL penalty, GAE, the clipped losses and how they are averaged.

Every tensor over answer positions comes with ``mask`` (1 on real answer tokens, 0 after the end),
so tokens after the end-of-text never count.
"""
from __future__ import annotations

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    out = (values - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str, norm_length: int | None = None) -> torch.Tensor:
    """One loss from per-token ``values``: ``token_mean`` weighs every answer token alike (long answers count
    more), ``sequence_mean`` averages each answer over its tokens, then over the answers (each answer alike),
    ``dr_grpo`` sums each answer's tokens and divides by ``norm_length`` per answer (Dr. GRPO: a constant, so
    neither an answer's length nor the batch's token count rescales its gradient)."""
    if mode == "token_mean":
        return masked_mean(values, mask)
    if mode == "sequence_mean":
        has_tokens = (mask.sum(1) > 0).to(values.dtype)
        return masked_mean(masked_mean(values, mask, dim=1), has_tokens)
    if mode == "dr_grpo":
        if not norm_length:
            raise ValueError("--loss_aggregation dr_grpo needs the constant length (--max_answer_seq_len)")
        return (values * mask).sum() / (values.shape[0] * norm_length)
    raise ValueError(f"--loss_aggregation {mode!r} is not token_mean, sequence_mean or dr_grpo")


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL(policy || reference) estimate with log r = log policy - log reference (Schulman's k1-k3):
    k1 = log r (DeepSpeed-Chat), k2 = (log r)^2 / 2, k3 = (1/r - 1) + log r."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"--kl_estimator {estimator!r} is not k1, k2 or k3")


def token_rewards(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    scores: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_coef: float,
    clip_reward_value: float,
    estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """−kl_coef·KL on every answer token plus the clipped score on the last one; also returns the KL."""
    kl = kl_penalty(logprobs, ref_logprobs, estimator) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)
    clipped = scores.clamp(-clip_reward_value, clip_reward_value)
    has_answer = mask.sum(1) > 0
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows[has_answer], last[has_answer]] += clipped[has_answer].to(rewards.dtype)
    return rewards, kl


def overlong_penalty(lengths: torch.Tensor, start: int, max_length: int) -> torch.Tensor:
    """DAPO's soft overlong penalty: 0 up to ``start`` tokens, then falling linearly to -1 at ``max_length`` (the
    longest answer sampled), so an answer cut off at the limit costs a full point and one just past ``start``
    almost nothing."""
    return -((lengths.float() - start) / max(max_length - start, 1)).clamp(0.0, 1.0)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over answer positions; returns (advantages, returns)."""
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    cliprange_high: float | None = None,
    aggregation: str = "token_mean",
    *,
    sequence_level: bool = False,
    norm_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate (ratio kept in [1 - cliprange, 1 + cliprange_high]), with the clip fraction
    and the approximate KL between old and new policy.

    ``sequence_level`` (GSPO): one ratio per answer, exp of the mean per-token log-ratio over its tokens, set on
    each of its tokens and clipped per answer; otherwise one ratio per token.
    """
    high = cliprange if cliprange_high is None else cliprange_high
    log_ratio = (logprobs - old_logprobs) * mask
    if sequence_level:
        per_answer = log_ratio.sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)
        log_ratio = per_answer.expand_as(log_ratio) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + high)
    loss = aggregate(torch.max(unclipped, clipped), mask, aggregation, norm_length)
    with torch.no_grad():
        clip_frac = masked_mean(((ratio - 1.0 > high) | (ratio - 1.0 < -cliprange)).float(), mask)
        approx_kl = masked_mean(ratio - 1.0 - log_ratio, mask)
    return loss, {"clip_frac": float(clip_frac), "approx_kl": float(approx_kl)}


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> torch.Tensor:
    """Clipped value loss: the worse of the raw and clipped squared errors, halved (DeepSpeed-Chat)."""
    clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    var_returns = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    diff = returns - values
    var_diff = masked_mean((diff - masked_mean(diff, mask)) ** 2, mask)
    return float(1.0 - var_diff / var_returns.clamp(min=1e-8))


def logprobs_and_entropy(logits: torch.Tensor, tokens: torch.Tensor, *,
                         fp32: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(token) and the entropy of each position, both differentiable (for an entropy bonus); computed in
    fp32, or in the logits' dtype when ``fp32`` is False (an fp16/bf16 run without ``--compute_fp32_loss``)."""
    logp = torch.log_softmax(logits.float() if fp32 else logits, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), -(logp.exp() * logp).sum(-1)
