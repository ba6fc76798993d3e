"""Fitness shaping as plain functions; a NaN or inf fitness always counts as the worst."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sanitize(fitness: jax.Array) -> jax.Array:
    """Replace non-finite fitness by the worst finite value (0 if none is finite)."""
    finite = jnp.isfinite(fitness)
    worst = jnp.min(jnp.where(finite, fitness, jnp.inf))
    worst = jnp.where(jnp.any(finite), worst, 0.0)
    return jnp.where(finite, fitness, worst)


def centered_ranks(fitness: jax.Array) -> jax.Array:
    """Ranks mapped to [-0.5, 0.5]; ties share their mean rank; non-finite rank last.

    Tied members get the same weight, so an antithetic pair with equal fitness (both
    reaching an episode's maximum return, say) contributes nothing to the update.
    """
    f = jnp.where(jnp.isfinite(fitness), fitness, -jnp.inf)
    ordered = jnp.sort(f)
    low = jnp.searchsorted(ordered, f, side="left")
    high = jnp.searchsorted(ordered, f, side="right") - 1
    ranks = (low + high).astype(jnp.result_type(float)) / 2
    n = fitness.shape[0]
    return ranks / max(n - 1, 1) - 0.5


def z_score(fitness: jax.Array, eps: float = 1e-8) -> jax.Array:
    """(f - mean) / std after `sanitize`; all-equal fitness gives exact zeros."""
    return _standardize(sanitize(fitness), eps)


def _standardize(f: jax.Array, eps: float) -> jax.Array:
    """(f - mean) / (std + eps) along axis 0, exact zeros where values are equal."""
    # Scaled by a power of two (exact, so the same bits), so that a finite spread beyond
    # ~1e19 (float32) neither overflows std's squares (every weight 0) nor the shift
    # below (NaN weights).
    _, e = jnp.frexp(jnp.max(jnp.abs(f), axis=0))
    f = jnp.ldexp(f, -e)
    # Shifting by the minimum first makes equal values exactly 0: otherwise the mean's
    # rounding error (1 ulp) over a std of the same size scaled every weight to ~1.
    f = f - f.min(axis=0)
    eps = jnp.ldexp(jnp.asarray(eps, f.dtype), -e)
    return (f - f.mean(axis=0)) / (f.std(axis=0) + eps)


def group_normalize(rewards: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Per-group z-score of rewards [members, groups], averaged over groups -> [members].

    Each group (an LLM prompt, say) is normalised across the population before the
    groups are averaged, so easy and hard prompts weigh the same.
    """
    if jnp.ndim(rewards) != 2:
        raise ValueError(
            f"rewards must be [members, groups], got shape {jnp.shape(rewards)}; "
            "for one reward per member use z_score"
        )
    r = jax.vmap(sanitize, in_axes=1, out_axes=1)(rewards)
    return _standardize(r, eps).mean(axis=1)  # a group of equal rewards gives zeros


SHAPERS = {"centered_ranks": centered_ranks, "z_score": z_score, "raw": sanitize}
