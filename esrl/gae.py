"""On-policy building blocks: GAE, reward scaling, log-probs, the PPO loss, minibatches.

GAE (Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized
Advantage Estimation", arXiv 1506.02438) with terminated and truncated kept apart:
a terminal state has value 0, while a time-limit truncation bootstraps from the value of
the final observation, ``next_values[t] = V(s_{t+1})`` with ``s_{t+1}`` the observation
that ended the episode (``info["final_obs"]``). Either way the advantage recursion stops
at the episode boundary::

    delta_t = r_t + gamma * (1 - terminated_t) * next_values_t - values_t
    A_t     = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}

Non-finite data (a NaN reward or observation from one environment) never reaches the
parameters: `gae` stops the recursion at a step the caller marks invalid (its advantage
and target are 0), `ppo_loss` gives such a step zero weight in every term and in the
advantage statistics, a non-finite discounted return restarts its accumulator and
`merge_batch` leaves masked rows out of running statistics.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from esrl.normalize import (
    ObsStats,
    accumulate,
    obs_std,
    update_obs_stats,
    zero_moments,
)
from esrl.policy import PolicyOutput

LOG_2PI_E = 1.0 + jnp.log(2.0 * jnp.pi)


class Batch(NamedTuple):
    """Training data of one update ([T, N, ...], or flat [B, ...] for an MLP)."""

    obs: jax.Array
    reset: jax.Array
    """A recurrent policy's carry is zeroed after this step (episode end or invalid)."""
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    advantage: jax.Array
    target: jax.Array
    valid: jax.Array | None = None
    """Steps that count in the loss (the others hold finite placeholders, e.g. 0);
    None: all of them."""


class Losses(NamedTuple):
    """Loss terms and diagnostics of a minibatch (means over an update when logged)."""

    policy_loss: jax.Array
    value_loss: jax.Array
    entropy: jax.Array
    approx_kl: jax.Array
    clip_fraction: jax.Array


def gae(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    truncated: jax.Array,
    gamma: float,
    lam: float,
    valid: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Advantages and value targets (advantages + values) by a reverse `lax.scan`.

    Where ``valid`` is False the advantage and target are 0 whatever the data (NaN
    included) and the recursion stops there: the step before keeps its own TD error,
    bootstrapped from its ``next_values`` (which the caller vouches for).

    Args:
        rewards, values, next_values, terminated, truncated, valid: [T, ...]
            time-major; any trailing axes (environments) are batched.
    """
    not_terminal = 1.0 - terminated.astype(values.dtype)
    not_done = 1.0 - jnp.logical_or(terminated, truncated).astype(values.dtype)
    deltas = rewards + gamma * not_terminal * next_values - values
    if valid is None:
        valid = jnp.ones(deltas.shape, bool)
    _, advantages = jax.lax.scan(
        _gae_step,
        jnp.zeros_like(values[0]),
        (deltas, gamma * lam * not_done, valid),
        reverse=True,
    )
    return advantages, jnp.where(valid, advantages + values, 0.0)


def _gae_step(next_advantage: jax.Array, xs) -> tuple[jax.Array, jax.Array]:
    delta, decay, valid = xs
    advantage = jnp.where(valid, delta + decay * next_advantage, 0.0)
    return advantage, advantage


def discounted_returns(
    initial: jax.Array, rewards: jax.Array, done: jax.Array, gamma: float
) -> tuple[jax.Array, jax.Array]:
    """Running discounted returns of the current episodes, reset after each ``done``.

    A non-finite return (a NaN or inf reward) restarts the accumulator too, so it
    does not last until the episode ends.

    Args:
        initial: [N] the accumulators carried over from the previous rollout.
        rewards, done: [T, N].
    Returns:
        the accumulators after the rollout [N] and the return at every step [T, N].
    """
    return jax.lax.scan(partial(_return_step, gamma=gamma), initial, (rewards, done))


def _return_step(acc: jax.Array, xs, gamma: float) -> tuple[jax.Array, jax.Array]:
    reward, done = xs
    ret = acc * gamma + reward
    return jnp.where(done | ~jnp.isfinite(ret), 0.0, ret), ret


def merge_batch(
    stats: ObsStats, batch: jax.Array, mask: jax.Array | None = None
) -> ObsStats:
    """Fold a batch [B, *shape] into running statistics (`esrl.normalize`'s Welford),
    only the rows where ``mask`` [B] (default: all)."""
    mask = jnp.ones(batch.shape[:1], bool) if mask is None else mask
    moments = accumulate(zero_moments(stats, (1,)), stats, batch[None], mask[None])
    return update_obs_stats(stats, moments)


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``x`` where ``mask`` (0 if nowhere); the other entries count for nothing
    (keep them finite under `jax.grad`: their zero cotangent times NaN is NaN)."""
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def keep_where(mask: jax.Array, x: jax.Array) -> jax.Array:
    """``x`` [*batch, ...] where ``mask`` [*batch], else 0."""
    return jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim)), x, 0)


def unmasked_if_all_valid(step, learner, carry0, batch: Batch):
    """``step(carry0, batch, learner)``, with the unmasked loss where every step is
    valid: the very computation (and numbers, bit for bit) of a finite run before
    masking existed, as XLA compiles masked means differently. Under ``vmap`` (over
    seeds) always masked: a batched cond would run both."""

    @jax.custom_batching.custom_vmap
    def choose(learner, carry0, batch):
        everything = partial(step, carry0, batch._replace(valid=None))
        masked = partial(step, carry0, batch)
        return jax.lax.cond(jnp.all(batch.valid), everything, masked, learner)

    @choose.def_vmap
    def _batched(axis_size, in_batched, learner, carry0, batch):
        axes = jax.tree.map(lambda batched: 0 if batched else None, tuple(in_batched))
        out = jax.vmap(lambda lr, c, b: step(c, b, lr), in_axes=axes)(
            learner, carry0, batch
        )
        return out, jax.tree.map(lambda _: True, out)

    return choose(learner, carry0, batch)


def scale_reward(stats: ObsStats, reward: jax.Array) -> jax.Array:
    """reward / std of the discounted returns (keeps the sign and zero of rewards)."""
    return reward / obs_std(stats)


def log_prob(out: PolicyOutput, action: jax.Array, discrete: bool) -> jax.Array:
    """log pi(action): categorical over logits, or diagonal Gaussian (summed)."""
    if discrete:
        logp = jax.nn.log_softmax(out.logits)
        return jnp.take_along_axis(logp, action[..., None].astype(jnp.int32), -1)[
            ..., 0
        ]
    z = (action - out.logits) * jnp.exp(-out.log_std)
    return jnp.sum(-0.5 * z * z - out.log_std - 0.5 * jnp.log(2.0 * jnp.pi), axis=-1)


def entropy(out: PolicyOutput, discrete: bool) -> jax.Array:
    """Entropy of the action distribution."""
    if discrete:
        logp = jax.nn.log_softmax(out.logits)
        return -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return jnp.sum(out.log_std + 0.5 * LOG_2PI_E, axis=-1)


def ppo_loss(
    out: PolicyOutput,
    batch: Batch,
    discrete: bool,
    *,
    clip_eps: float = 0.2,
    clip_value: bool = True,
    vf_coef: float = 0.5,
    ent_coef: float = 0.01,
    normalize_advantages: bool = True,
) -> tuple[jax.Array, Losses]:
    """Clipped surrogate + vf_coef * (clipped) value loss - ent_coef * entropy.

    With ``batch.valid``, every term, diagnostic and the advantage statistics are
    means over the valid steps only; the others must hold finite numbers (their
    gradient is multiplied by 0) and count for nothing. ``valid=None``: all steps.
    """
    log_ratio = log_prob(out, batch.action, discrete) - batch.log_prob
    mean, std = jnp.mean, jnp.std
    if batch.valid is not None:
        mean = partial(masked_mean, mask=batch.valid)
        std = lambda x: jnp.sqrt(mean(jnp.square(x - mean(x))))
        log_ratio = jnp.where(batch.valid, log_ratio, 0.0)  # no overflow to ignore
    ratio = jnp.exp(log_ratio)
    adv = batch.advantage
    if normalize_advantages:
        adv = (adv - mean(adv)) / (std(adv) + 1e-8)
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    policy_loss = -mean(jnp.minimum(ratio * adv, clipped * adv))
    value_loss = jnp.square(out.value - batch.target)
    if clip_value:
        v_clip = batch.value + jnp.clip(out.value - batch.value, -clip_eps, clip_eps)
        value_loss = jnp.maximum(value_loss, jnp.square(v_clip - batch.target))
    value_loss = 0.5 * mean(value_loss)
    ent = mean(entropy(out, discrete))
    total = policy_loss + vf_coef * value_loss - ent_coef * ent
    approx_kl = mean(ratio - 1.0 - log_ratio)
    clip_fraction = mean((jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32))
    return total, Losses(policy_loss, value_loss, ent, approx_kl, clip_fraction)


def split_envs(x: jax.Array, perm: jax.Array, m: int) -> jax.Array:
    """[T, N, ...] -> [M, T, N / M, ...] after permuting environments."""
    x = jnp.take(x, perm, axis=1)
    return jnp.swapaxes(x.reshape(x.shape[0], m, -1, *x.shape[2:]), 0, 1)


def split_rows(x: jax.Array, perm: jax.Array, m: int) -> jax.Array:
    """[T, N, ...] -> [M, T * N / M, ...] after permuting all rows."""
    x = x.reshape(-1, *x.shape[2:])[perm]
    return x.reshape(m, -1, *x.shape[1:])
