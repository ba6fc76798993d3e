"""Generalized advantage estimation, discounted returns and reward scaling.

GAE (Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized
Advantage Estimation", arXiv 1506.02438) with terminated and truncated kept apart:
a terminal state has value 0, while a time-limit truncation bootstraps from the value of
the final observation, ``next_values[t] = V(s_{t+1})`` with ``s_{t+1}`` the observation
that ended the episode (``info["final_obs"]``). Either way the advantage recursion stops
at the episode boundary::

    delta_t = r_t + gamma * (1 - terminated_t) * next_values_t - values_t
    A_t     = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from esrl.normalize import (
    ObsStats,
    accumulate,
    obs_std,
    update_obs_stats,
    zero_moments,
)


def gae(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    truncated: jax.Array,
    gamma: float,
    lam: float,
) -> tuple[jax.Array, jax.Array]:
    """Advantages and value targets (advantages + values) by a reverse `lax.scan`.

    Args:
        rewards, values, next_values, terminated, truncated: [T, ...] time-major; any
            trailing axes (environments) are batched.
    """
    not_terminal = 1.0 - terminated.astype(values.dtype)
    not_done = 1.0 - jnp.logical_or(terminated, truncated).astype(values.dtype)
    deltas = rewards + gamma * not_terminal * next_values - values
    _, advantages = jax.lax.scan(
        _gae_step, jnp.zeros_like(values[0]), (deltas, gamma * lam * not_done),
        reverse=True,
    )
    return advantages, advantages + values


def _gae_step(next_advantage: jax.Array, xs) -> tuple[jax.Array, jax.Array]:
    delta, decay = xs
    advantage = delta + decay * next_advantage
    return advantage, advantage


def discounted_returns(
    initial: jax.Array, rewards: jax.Array, done: jax.Array, gamma: float
) -> tuple[jax.Array, jax.Array]:
    """Running discounted returns of the current episodes, reset after each ``done``.

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
    return jnp.where(done, 0.0, ret), ret


def merge_batch(stats: ObsStats, batch: jax.Array) -> ObsStats:
    """Fold a batch [B, *shape] into running statistics (`esrl.normalize`'s Welford)."""
    ones = jnp.ones((1, batch.shape[0]), bool)
    moments = accumulate(zero_moments(stats, (1,)), stats, batch[None], ones)
    return update_obs_stats(stats, moments)


def scale_reward(stats: ObsStats, reward: jax.Array) -> jax.Array:
    """reward / std of the discounted returns (keeps the sign and zero of rewards)."""
    return reward / obs_std(stats)
