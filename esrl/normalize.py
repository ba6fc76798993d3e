"""Observation normalisation with running statistics shared by the whole population.

As in OpenAI-ES (Salimans et al. 2017) and evosax: every member sees
``(obs - mean) / std`` with the statistics frozen for a generation; the rollout returns
per-member moments of the observations it saw, and `update_obs_stats` merges them
(Chan et al.'s parallel Welford update) once the generation is over. Moments are taken
around the current mean, which keeps the float32 sums well conditioned once a mean has
been merged; the first generation's are taken around 0, so an observation whose mean
is ~1000x its spread or more keeps a variance error of a few percent (measured against
float64: 2-10 % at mean 1e4, std 1).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class ObsStats:
    """Running mean and sum of squared deviations of observations (Welford)."""

    count: jax.Array
    """Observations merged so far (float32 scalar)."""
    mean: jax.Array
    """Running mean, shaped like one observation."""
    m2: jax.Array
    """Sum of squared deviations from the mean, shaped like one observation."""


class ObsMoments(NamedTuple):
    """Moments of the observations one member saw, taken around a fixed ``shift``."""

    count: jax.Array
    """Observations seen [N]."""
    sum: jax.Array
    """Sum of (obs - shift) [N, *obs]."""
    sumsq: jax.Array
    """Sum of (obs - shift)^2 [N, *obs]."""


def init_obs_stats(obs_shape: tuple[int, ...]) -> ObsStats:
    """Empty statistics: until something is merged, observations are only clipped."""
    zeros = jnp.zeros(obs_shape, jnp.float32)
    return ObsStats(count=jnp.zeros((), jnp.float32), mean=zeros, m2=zeros)


def obs_std(stats: ObsStats, eps: float = 1e-8) -> jax.Array:
    """Standard deviation (1 until two observations were merged)."""
    var = jnp.where(stats.count > 1, stats.m2 / jnp.maximum(stats.count, 1.0), 1.0)
    return jnp.sqrt(var + eps)


def normalize_obs(stats: ObsStats, obs: jax.Array, clip: float = 5.0) -> jax.Array:
    """``clip((obs - mean) / std, -clip, clip)``."""
    x = (obs.astype(jnp.float32) - stats.mean) / obs_std(stats)
    return jnp.clip(x, -clip, clip)


def zero_moments(stats: ObsStats, batch: tuple[int, ...]) -> ObsMoments:
    """Empty moments for a batch of members."""
    zeros = jnp.zeros(batch + stats.mean.shape, jnp.float32)
    return ObsMoments(jnp.zeros(batch, jnp.float32), zeros, zeros)


def accumulate(
    moments: ObsMoments, stats: ObsStats, obs: jax.Array, mask: jax.Array
) -> ObsMoments:
    """Add observations ``obs`` [N, E, *obs] where ``mask`` [N, E] to per-member moments."""
    d = obs.astype(jnp.float32) - stats.mean
    m = mask.reshape(mask.shape + (1,) * (obs.ndim - mask.ndim)).astype(jnp.float32)
    d = jnp.where(m > 0, d, 0.0)  # a masked (frozen) obs may hold inf/NaN
    return ObsMoments(
        count=moments.count + mask.sum(axis=1).astype(jnp.float32),
        sum=moments.sum + d.sum(axis=1),
        sumsq=moments.sumsq + (d * d).sum(axis=1),
    )


def update_obs_stats(
    stats: ObsStats, moments: ObsMoments, valid: jax.Array | None = None
) -> ObsStats:
    """Merge the moments of the members where ``valid`` [N] (non-finite ones are skipped)."""
    axes = tuple(range(1, moments.sum.ndim))
    finite = jnp.all(jnp.isfinite(moments.sumsq), axis=axes)
    valid = finite if valid is None else valid & finite
    w = valid.astype(jnp.float32)
    n = jnp.sum(moments.count * w)
    wide = w.reshape(w.shape + (1,) * len(axes))
    s = jnp.sum(jnp.where(wide > 0, moments.sum, 0.0), axis=0)
    q = jnp.sum(jnp.where(wide > 0, moments.sumsq, 0.0), axis=0)
    safe_n = jnp.maximum(n, 1.0)
    delta = s / safe_n  # batch mean minus the running mean (the shift)
    batch_m2 = jnp.maximum(q - s * delta, 0.0)
    total = stats.count + n
    frac = n / jnp.maximum(total, 1.0)
    mean = stats.mean + delta * frac
    m2 = stats.m2 + batch_m2 + delta * delta * stats.count * frac
    new = ObsStats(count=total, mean=mean, m2=m2)
    return jax.tree.map(lambda a, b: jnp.where(n > 0, a, b), new, stats)
