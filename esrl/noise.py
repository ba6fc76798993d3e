"""EGGROLL low-rank and OpenAI-ES full-rank noise, addressed by keys, and the ES estimate.

Sarkar et al. 2025, "Evolution Strategies at the Hyperscale" (arXiv 2511.16652):
member ``i`` of generation ``g`` perturbs a matrix parameter W (m x n) by
E_i = sigma * A_i B_i^T / sqrt(r), with A_i (m x r) and B_i (n x r) standard normal drawn
from ``fold_in(fold_in(key, g), i // 2)``; members 2j and 2j+1 are an antithetic pair
(+E, -E). Vector parameters (biases, norm scales) get full-rank sigma * eps_i. OpenAI-ES
(Salimans et al. 2017) uses full-rank eps_i for every leaf.

Convention: with E_i = sigma * eps_i, `gradient_estimate` returns
g = (1/N) sum_i f_i eps_i, the ascent direction of the smoothed objective times sigma;
the paper's 1/sigma is absorbed into the learning rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import traverse_util

Params = Any


class LowRank(NamedTuple):
    """A low-rank perturbation E = a @ b.T of a (m x n) matrix; a: [m, r], b: [n, r]."""

    a: jax.Array
    b: jax.Array


@dataclass(frozen=True)
class NoiseConfig:
    """How members are perturbed."""

    rank: int = 1
    """Rank r of each matrix perturbation (EGGROLL); ignored when `full_rank`."""
    full_rank: bool = False
    """Full-rank Gaussian noise on every leaf (OpenAI-ES) instead of low-rank matrices."""
    antithetic: bool = True
    """Members 2j and 2j+1 share noise with opposite signs (mirrored sampling)."""
    noise_reuse: int = 1
    """Reuse the same noise for this many consecutive generations."""
    exclude: tuple[str, ...] = ()
    """Parameters whose path contains one of these substrings are never perturbed."""


def perturbed_paths(params: Params, config: NoiseConfig) -> list[tuple[str, ...]]:
    """The parameter paths that receive noise, in a fixed (sorted) order."""
    flat = traverse_util.flatten_dict(_as_dict(params))
    return [
        path
        for path in sorted(flat)
        if jnp.issubdtype(flat[path].dtype, jnp.floating)
        and not any(s in "/".join(map(str, path)) for s in config.exclude)
    ]


def check_rank(params: Params, config: NoiseConfig) -> None:
    """Raise if the rank exceeds what some perturbed matrix allows."""
    if config.rank < 1:
        raise ValueError(f"rank must be >= 1, got {config.rank}")
    if config.full_rank:
        return
    flat = traverse_util.flatten_dict(_as_dict(params))
    for path in perturbed_paths(params, config):
        shape = flat[path].shape
        if len(shape) == 2 and config.rank > min(shape):
            raise ValueError(
                f"rank {config.rank} exceeds min{shape} of parameter "
                f"{'/'.join(map(str, path))}; use --rank <= {min(shape)}"
            )


def _as_dict(params: Params) -> dict:
    return params.unfreeze() if hasattr(params, "unfreeze") else params


def _is_lowrank(shape: tuple[int, ...], config: NoiseConfig) -> bool:
    return len(shape) == 2 and not config.full_rank


def _pair_key(key: jax.Array, generation, pair, config: NoiseConfig) -> jax.Array:
    return jax.random.fold_in(
        jax.random.fold_in(key, generation // config.noise_reuse), pair
    )


def unit_noise(key: jax.Array, shape: tuple[int, ...], config: NoiseConfig):
    """Unit-scale noise for one leaf: `LowRank` (A/sqrt(r), B) for matrices, else eps."""
    if not _is_lowrank(shape, config):
        return jax.random.normal(key, shape)
    key_a, key_b = jax.random.split(key)
    a = jax.random.normal(key_a, (shape[0], config.rank)) / math.sqrt(config.rank)
    b = jax.random.normal(key_b, (shape[1], config.rank))
    return LowRank(a, b)


def pair_noise(key: jax.Array, generation, pair, params: Params, config: NoiseConfig):
    """Unit noise of antithetic pair ``pair`` (or member, if not antithetic): a flat dict."""
    flat = traverse_util.flatten_dict(_as_dict(params))
    base = _pair_key(key, generation, pair, config)
    return {
        path: unit_noise(jax.random.fold_in(base, index), flat[path].shape, config)
        for index, path in enumerate(perturbed_paths(params, config))
    }


def member_perturbation(
    key: jax.Array, generation, member, params: Params, config: NoiseConfig, sigma
) -> dict:
    """The perturbation tree of one member (only perturbed leaves), sigma folded in."""
    if config.antithetic:
        pair = member // 2
        scale = sigma * jnp.where(member % 2 == 0, 1.0, -1.0)
    else:
        pair, scale = member, sigma
    noise = pair_noise(key, generation, pair, params, config)
    scaled = {
        path: LowRank(n.a * scale, n.b) if isinstance(n, LowRank) else n * scale
        for path, n in noise.items()
    }
    return traverse_util.unflatten_dict(scaled)


def population_perturbation(
    key: jax.Array, generation, params: Params, config: NoiseConfig, sigma, population: int
) -> dict:
    """Perturbations of all members, stacked on a leading population axis."""
    members = jnp.arange(population)
    return jax.vmap(
        lambda i: member_perturbation(key, generation, i, params, config, sigma)
    )(members)


def materialize(perturbation) -> jax.Array:
    """The dense matrix (or vector) of one leaf's perturbation (for tests and OpenAI-ES)."""
    if isinstance(perturbation, LowRank):
        return perturbation.a @ perturbation.b.T
    return perturbation


def gradient_estimate(
    key: jax.Array, generation, params: Params, fitness: jax.Array, config: NoiseConfig
) -> Params:
    """(1/N) sum_i f_i eps_i for every leaf (zeros for unperturbed leaves).

    Noise is regenerated from keys; each low-rank matrix estimate is one contraction
    over (pair, rank), which is full rank once N * r >= min(m, n).
    """
    population = fitness.shape[0]
    if config.antithetic:
        weights = fitness[0::2] - fitness[1::2]
    else:
        weights = fitness
    pairs = jnp.arange(weights.shape[0])
    noise = jax.vmap(lambda j: pair_noise(key, generation, j, params, config))(pairs)
    flat = traverse_util.flatten_dict(_as_dict(params))
    grads = {path: jnp.zeros_like(leaf) for path, leaf in flat.items()}
    for path, n in noise.items():
        if isinstance(n, LowRank):
            g = jnp.einsum("p,pmr,pnr->mn", weights, n.a, n.b)
        else:
            g = jnp.tensordot(weights, n, axes=1)
        grads[path] = (g / population).astype(flat[path].dtype)
    return traverse_util.unflatten_dict(grads)
