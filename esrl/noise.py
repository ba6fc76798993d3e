"""EGGROLL low-rank and OpenAI-ES full-rank noise, addressed by keys, and the ES estimate.

Sarkar et al. 2025, "Evolution Strategies at the Hyperscale" (arXiv 2511.16652):
member ``i`` of generation ``g`` perturbs a matrix parameter W (m x n) by
E_i = sigma * A_i B_i^T / sqrt(r), with A_i (m x r) and B_i (n x r) standard normal drawn
from ``fold_in(fold_in(key, g // noise_reuse), i // 2)`` (one draw per pair, sliced into
the leaves); members 2j and 2j+1 are an antithetic pair (+E, -E). Vector parameters
(biases, norm scales) get full-rank sigma * eps_i. OpenAI-ES (Salimans et al. 2017) uses
full-rank eps_i for every leaf. Only the factors are ever stored (sigma and the sign
folded into A); layers apply them as ``x @ W + (x @ A) @ B^T`` (`esrl.nn`).

Convention: with E_i = sigma * eps_i, `gradient_estimate` returns
g = (1/N) sum_i f_i eps_i, the ascent direction of the smoothed objective times sigma;
the paper's 1/sigma is absorbed into the learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import core, traverse_util

from esrl.checks import require_type

Params = Any


class LowRank(NamedTuple):
    """A low-rank perturbation E = a.T @ b of a (m x n) matrix; a: [r, m], b: [r, n].

    Factors are stored rank-major, so each rank's vector is contiguous: ``x @ a.T`` and
    ``s @ b`` stay single passes under ``vmap`` for every rank.
    """

    a: jax.Array
    """Left factor [r, m]; 1/sqrt(r) (and in a perturbation sigma and sign) folded in."""
    b: jax.Array
    """Right factor [r, n]."""


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

    def __post_init__(self):
        require_type(self, "an int", "rank", "noise_reuse")
        require_type(self, "True or False", "antithetic")
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.noise_reuse < 1:
            raise ValueError(
                f"noise_reuse must be >= 1 (1 = fresh noise every generation), "
                f"got {self.noise_reuse}"
            )
        if isinstance(self.exclude, str):
            raise TypeError(
                f"exclude must be a tuple of path substrings, e.g. ({self.exclude!r},)"
            )


def perturbed_paths(params: Params, config: NoiseConfig) -> list[tuple[str, ...]]:
    """The parameter paths that receive noise, in a fixed (sorted) order."""
    flat = _flat(params)
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
    flat = _flat(params)
    for path in perturbed_paths(params, config):
        shape = flat[path].shape
        if len(shape) == 2 and config.rank > min(shape):
            name = "/".join(map(str, path))
            raise ValueError(
                f"rank {config.rank} exceeds min{shape} of parameter "
                f"{name}; use rank <= {min(shape)} (--rank), or in Python "
                f"exclude it from the noise (exclude=({name!r},))"
            )


def check_exclude(params: Params, config: NoiseConfig) -> None:
    """Raise if an ``exclude`` substring matches no parameter path (a typo would leave
    the parameter it meant perturbed and trained) or if nothing is left to perturb."""
    names = ["/".join(map(str, path)) for path in sorted(_flat(params))]
    for s in config.exclude:
        if not any(s in name for name in names):
            raise ValueError(
                f"exclude {s!r} matches no parameter path; the paths are "
                f"{', '.join(names)}"
            )
    if not perturbed_paths(params, config):
        raise ValueError(
            f"nothing left to perturb: exclude {config.exclude} covers every float "
            f"parameter of {', '.join(names)}"
        )


def _flat(params: Params) -> dict:
    """``{path: leaf}`` of a (nested) dict of arrays; a clear error for anything else."""
    if not isinstance(params, Mapping):
        raise TypeError(
            "params must be a (nested) dict of arrays, as flax's init returns, "
            f"got {type(params).__name__}"
        )
    params = params.unfreeze() if isinstance(params, core.FrozenDict) else params
    flat = traverse_util.flatten_dict(params)
    for path, leaf in flat.items():
        if not hasattr(leaf, "dtype"):
            raise TypeError(
                "params must be a (nested) dict of arrays, as flax's init returns; "
                f"{'/'.join(map(str, path))} is a {type(leaf).__name__}"
            )
    return flat


def _is_lowrank(shape: tuple[int, ...], config: NoiseConfig) -> bool:
    return len(shape) == 2 and not config.full_rank


def _pair_key(key: jax.Array, generation, pair, config: NoiseConfig) -> jax.Array:
    return jax.random.fold_in(
        jax.random.fold_in(key, generation // config.noise_reuse), pair
    )


def _draw_size(shape: tuple[int, ...], config: NoiseConfig) -> int:
    if _is_lowrank(shape, config):
        return (shape[0] + shape[1]) * config.rank
    return math.prod(shape)


def _from_draw(draw: jax.Array, shape: tuple[int, ...], config: NoiseConfig):
    """Unit noise of one leaf from its slice of standard normals (see `unit_noise`)."""
    if not _is_lowrank(shape, config):
        return draw.reshape(shape)
    m, n = shape
    a = draw[: m * config.rank].reshape(config.rank, m) / math.sqrt(config.rank)
    return LowRank(a, draw[m * config.rank :].reshape(config.rank, n))


def unit_noise(key: jax.Array, shape: tuple[int, ...], config: NoiseConfig):
    """Unit-scale noise for one leaf: `LowRank` (A/sqrt(r), B) for matrices, else eps."""
    return _from_draw(
        jax.random.normal(key, (_draw_size(shape, config),)), shape, config
    )


def pair_noise(key: jax.Array, generation, pair, params: Params, config: NoiseConfig):
    """Unit noise of antithetic pair ``pair`` (or member, if not antithetic): a flat dict.

    One normal draw per pair, from ``fold_in(fold_in(key, g // noise_reuse), pair)``,
    is sliced into every perturbed leaf (in `perturbed_paths` order): one RNG call
    instead of one per leaf keeps compiles small and the draw vectorised.
    """
    flat = _flat(params)
    paths = perturbed_paths(params, config)
    sizes = [_draw_size(flat[path].shape, config) for path in paths]
    draw = jax.random.normal(_pair_key(key, generation, pair, config), (sum(sizes),))
    out, offset = {}, 0
    for path, size in zip(paths, sizes):
        out[path] = _from_draw(draw[offset : offset + size], flat[path].shape, config)
        offset += size
    return out


def _scale(unit: dict, scale) -> dict:
    """Fold sigma (and the antithetic sign) into unit noise: A for matrices.

    ``scale`` is a scalar, or [N] for leaves stacked on a leading member axis.
    """
    scale = jnp.asarray(scale)

    def mul(x: jax.Array) -> jax.Array:
        return x * scale.reshape(scale.shape + (1,) * (x.ndim - scale.ndim))

    return traverse_util.unflatten_dict(
        {
            path: LowRank(mul(n.a), n.b) if isinstance(n, LowRank) else mul(n)
            for path, n in unit.items()
        }
    )


def member_perturbation(
    key: jax.Array, generation, member, params: Params, config: NoiseConfig, sigma
) -> dict:
    """The perturbation tree of one member (only perturbed leaves), sigma folded in."""
    if config.antithetic:
        pair = member // 2
        scale = sigma * jnp.where(member % 2 == 0, 1.0, -1.0)
    else:
        pair, scale = member, sigma
    return _scale(pair_noise(key, generation, pair, params, config), scale)


class PairNoise(NamedTuple):
    """Perturbations of a block of whole antithetic pairs, stored once per pair.

    Member ``k`` of the block is ``scale[k] * unit[k // 2]`` (scale = sigma times the
    pair's sign, applied to A and to vectors), so the block holds half the noise of its
    members. `members` expands it; `esrl.rollout.evaluate_population` expands it inside
    every step, where the expansion fuses into the layers' reads of the noise.
    """

    unit: dict
    """Unit noise of each pair, as `pair_noise` gives it, stacked on a leading pair axis."""
    scale: jax.Array
    """Sigma times the sign of each member [N] (N = 2 x pairs)."""

    def members(self) -> dict:
        """The perturbation tree with a leading member axis (as `population_perturbation`)."""
        unit = jax.tree.map(lambda x: jnp.repeat(x, 2, axis=0), self.unit)
        return _scale(unit, self.scale)


def pair_block(
    key: jax.Array,
    generation,
    params: Params,
    config: NoiseConfig,
    sigma,
    population: int,
    first=0,
) -> PairNoise:
    """The `PairNoise` of members ``first .. first + population - 1`` (whole pairs).

    Needs antithetic noise, an even ``population`` and an even ``first``. A traced
    ``first`` (a device's or block's offset under jit) is the caller's to keep even:
    checking it as the program runs would put a host callback in every generation.
    """
    if not config.antithetic or population % 2:
        raise ValueError(
            "pair_block needs antithetic noise and an even population, "
            f"got antithetic={config.antithetic}, population={population}"
        )
    if not isinstance(first, jax.core.Tracer):
        # an odd first would pair members of two different pairs with each other
        _require_even(np.asarray(first))
    pairs = first // 2 + jnp.arange(population // 2)
    unit = jax.vmap(lambda j: pair_noise(key, generation, j, params, config))(pairs)
    signs = jnp.tile(jnp.array([1.0, -1.0]), population // 2)
    return PairNoise(unit, sigma * signs)


def _require_even(first) -> None:
    if np.any(np.asarray(first) % 2):
        raise ValueError(f"first member {first} must be even (whole antithetic pairs)")


def population_perturbation(
    key: jax.Array,
    generation,
    params: Params,
    config: NoiseConfig,
    sigma,
    population: int,
    first=0,
    compact: bool = False,
):
    """Perturbations of members ``first .. first + population - 1``, stacked on axis 0.

    Equal to stacking `member_perturbation` over those members; with antithetic pairs
    each pair's noise is drawn once and used with both signs, which needs an even
    ``population`` and an even ``first`` (a block of whole pairs, as a device's shard).
    ``compact`` returns that block as `PairNoise` instead of expanding it.
    """
    if not config.antithetic or population % 2:
        members = first + jnp.arange(population)
        return jax.vmap(
            lambda i: member_perturbation(key, generation, i, params, config, sigma)
        )(members)
    block = pair_block(key, generation, params, config, sigma, population, first)
    return block if compact else block.members()


def materialize(perturbation) -> jax.Array:
    """The dense matrix (or vector) of one leaf's perturbation (for tests and OpenAI-ES)."""
    if isinstance(perturbation, LowRank):
        return perturbation.a.T @ perturbation.b
    return perturbation


ESTIMATE_CHUNK_FLOATS = 1 << 25
"""At most this many noise floats (128 MiB in float32) are alive at once in an estimate."""


def gradient_estimate(
    key: jax.Array,
    generation,
    params: Params,
    fitness: jax.Array,
    config: NoiseConfig,
    unit: dict | None = None,
) -> Params:
    """(1/N) sum_i f_i eps_i for every leaf (zeros for unperturbed leaves), as params.

    Noise is regenerated from keys, or taken from ``unit``: the unit noise of every pair
    (member, if not antithetic) as `pair_noise` draws it, stacked on a leading axis (a
    whole population's `PairNoise.unit`, kept from its rollout). Each low-rank matrix
    estimate is one contraction over (pair, rank), which is full rank once
    pairs * r >= min(m, n) (pairs = N/2 with antithetic sampling, else N). Regenerated
    pairs are summed in chunks of bounded memory, so full-rank (OpenAI-ES) estimates of
    wide networks never hold the whole population's noise.
    """
    population = fitness.shape[0]
    weights = fitness[0::2] - fitness[1::2] if config.antithetic else fitness
    flat = _flat(params)
    paths = perturbed_paths(params, config)
    # sums in the noise's dtype (float64 under x64, even for float32 fitness): the
    # chunks' scan needs a carry whose dtype the contraction keeps
    dtype = jnp.promote_types(weights.dtype, jnp.result_type(float))
    zeros = {path: jnp.zeros(flat[path].shape, dtype) for path in paths}
    if unit is not None:
        sums = _contract(zeros, weights, unit)
    else:
        sums = _regenerate_and_contract(key, generation, params, weights, config, zeros)
    grads = {path: jnp.zeros_like(leaf) for path, leaf in flat.items()}
    for path, total in sums.items():
        grads[path] = (total / population).astype(flat[path].dtype)
    grads = traverse_util.unflatten_dict(grads)
    # the optimizer needs the tree of params: a FrozenDict stays one
    return core.freeze(grads) if isinstance(params, core.FrozenDict) else grads


def keeps_noise(params: Params, config: NoiseConfig, population: int) -> bool:
    """Whether a rollout keeps its unit noise for `gradient_estimate` (see its ``unit``).

    Low-rank antithetic noise of at most `ESTIMATE_CHUNK_FLOATS` floats: keeping it
    costs no more memory than one chunk of the regenerated estimate, and saves
    drawing it twice.
    """
    if config.full_rank or not config.antithetic:
        return False
    return _per_pair(params, config) * (population // 2) <= ESTIMATE_CHUNK_FLOATS


def _per_pair(params: Params, config: NoiseConfig) -> int:
    """Floats of one pair's draw (`pair_noise`)."""
    flat = _flat(params)
    paths = perturbed_paths(params, config)
    return sum(_draw_size(flat[path].shape, config) for path in paths)


def _contract(total: dict, weights: jax.Array, unit: dict) -> dict:
    """total + sum over pairs p of weights[p] * unit noise of p, for every leaf."""
    out = dict(total)
    for path, n in unit.items():
        if isinstance(n, LowRank):
            out[path] = out[path] + jnp.einsum("p,prm,prn->mn", weights, n.a, n.b)
        else:
            out[path] = out[path] + jnp.tensordot(weights, n, axes=1)
    return out


def _regenerate_and_contract(key, generation, params, weights, config, zeros) -> dict:
    per_pair = max(1, _per_pair(params, config))
    pairs = weights.shape[0]
    chunk = max(1, min(pairs, ESTIMATE_CHUNK_FLOATS // per_pair))
    chunks = -(-pairs // chunk)
    # padded pairs get weight 0: their noise is drawn but contributes nothing
    weights = jnp.pad(weights, (0, chunks * chunk - pairs)).reshape(chunks, chunk)
    ids = jnp.arange(chunks * chunk).reshape(chunks, chunk)

    def contract(total: dict, xs) -> tuple[dict, None]:
        ids, w = xs
        unit = jax.vmap(lambda j: pair_noise(key, generation, j, params, config))(ids)
        # Contract the noise as stored, as for a kept ``unit``: fused with its draw,
        # XLA pulls A's 1/sqrt(r) out of the contraction, which changes the rounding,
        # so a run whose rollout kept its noise and one that did not would differ.
        unit = jax.lax.optimization_barrier(unit)
        return _contract(total, w, unit), None

    if chunks == 1:
        return contract(zeros, (ids[0], weights[0]))[0]
    return jax.lax.scan(contract, zeros, (ids, weights))[0]
