"""The evolution-strategies step: ask for perturbations, tell fitness, update with optax.

Shared by EGGROLL (low-rank noise, Sarkar et al. 2025, arXiv 2511.16652) and OpenAI-ES
(full-rank noise, Salimans et al. 2017). The gradient estimate (see `esrl.noise`) is
g = (1/N) sum_i f_i eps_i with E_i = sigma * eps_i; 1/sigma is absorbed into the
learning rate, and optax minimises, so the optimizer receives -g.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from esrl import noise
from esrl.checks import is_int, require, require_type
from esrl.fitness import SHAPERS

OPTIMIZERS = ("adam", "adamw", "sgd")
_NUMBERS = ("sigma", "weight_decay", "sigma_decay", "sigma_min", "lr_decay")


def _require_pairs(population: int, antithetic: bool, owner: str) -> None:
    """Antithetic sampling needs an even population; ``owner`` is the config whose
    ``antithetic`` field turns it off."""
    if antithetic and population % 2:
        raise ValueError(
            f"population {population} must be even for antithetic pairs; use "
            f"{population + 1} (or, in Python, {owner}(antithetic=False))"
        )


@dataclass(frozen=True)
class ESConfig:
    """Hyperparameters of one ES strategy."""

    population: int = 256
    """Members per generation (even when antithetic)."""
    sigma: float = 0.05
    """Noise scale of the perturbations."""
    lr: float = 0.01
    """Learning rate (absorbs the estimator's 1/sigma)."""
    optimizer: str = "adam"
    """adam, adamw or sgd."""
    weight_decay: float = 0.0
    """Weight decay of the perturbed parameters: decoupled for adamw; for adam and sgd
    ``weight_decay * params`` is added to the gradient (L2; adam then rescales it)."""
    fitness_shaping: str = "centered_ranks"
    """centered_ranks, z_score or raw."""
    sigma_decay: float = 1.0
    """sigma is multiplied by this (in (0, 1]) after every generation ..."""
    sigma_min: float = 0.0
    """... but never goes below this."""
    lr_decay: float = 1.0
    """Learning rate multiplied by this (in (0, 1]) every generation (optax exponential
    decay); for another schedule pass ``ES(config, optax.adam(schedule))``."""
    noise: noise.NoiseConfig = field(default_factory=noise.NoiseConfig)
    """Rank, antithetic sampling, noise reuse and excluded parameters."""

    def __post_init__(self):
        require_type(self, "an int", "population")
        schedule = "; for a schedule, pass ES(config, optax.adam(schedule))"
        require_type(self, "a number", "lr", hint=schedule)
        require_type(self, "a number", *_NUMBERS)
        if self.population < 2:
            raise ValueError(f"population must be >= 2, got {self.population}")
        _require_pairs(self.population, self.noise.antithetic, "NoiseConfig")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"
            )
        if self.fitness_shaping not in SHAPERS:
            raise ValueError(
                f"fitness_shaping must be one of {tuple(SHAPERS)}, "
                f"got {self.fitness_shaping!r}"
            )
        require(self, "> 0", "sigma", "lr")
        # above 1 sigma or lr grows without bound (0.01 * 1.01 ** 1000 = 210)
        require(self, "in (0, 1]", "sigma_decay", "lr_decay")
        require(self, ">= 0", "weight_decay", "sigma_min")
        # inf would turn every parameter to NaN
        require(self, "finite", "sigma", "lr", "weight_decay")
        if self.sigma_min > self.sigma:
            raise ValueError(
                f"sigma_min {self.sigma_min} exceeds sigma {self.sigma}: sigma would "
                "jump up to it after the first generation; use sigma_min <= sigma"
            )


def _perturbed_mask(params, config: noise.NoiseConfig):
    """True at the leaves of ``params`` that `config` perturbs (for weight decay)."""
    perturbed = set(noise.perturbed_paths(params, config))
    return jax.tree_util.tree_map_with_path(
        lambda keys, _: tuple(k.key for k in keys) in perturbed, params
    )


@struct.dataclass
class ESState:
    """Everything that evolves between generations (a pytree, checkpointable)."""

    params: Any
    opt_state: Any
    key: jax.Array
    generation: jax.Array
    sigma: jax.Array


class ES:
    """Public ask/tell over `esrl.noise`; pure functions, jit them at the caller."""

    def __init__(
        self, config: ESConfig, optimizer: optax.GradientTransformation = None
    ):
        """``optimizer`` replaces the one ``config`` describes (its optimizer, lr,
        lr_decay and weight_decay are then unused); it receives -g."""
        self.config = config
        self.optimizer = optimizer or self._optimizer()

    def _optimizer(self) -> optax.GradientTransformation:
        c = self.config
        lr = optax.exponential_decay(c.lr, 1, c.lr_decay) if c.lr_decay != 1 else c.lr
        # excluded (never perturbed) leaves are frozen: no estimate and no decay
        mask = functools.partial(_perturbed_mask, config=c.noise)
        if c.optimizer == "adamw":
            return optax.adamw(lr, weight_decay=c.weight_decay, mask=mask)
        base = optax.adam(lr) if c.optimizer == "adam" else optax.sgd(lr)
        if c.weight_decay:
            return optax.chain(optax.add_decayed_weights(c.weight_decay, mask), base)
        return base

    def init(self, key: jax.Array, params) -> ESState:
        """Start from ``params``; checks the rank against every perturbed matrix and
        that every ``exclude`` substring names a parameter."""
        noise.check_rank(params, self.config.noise)
        noise.check_exclude(params, self.config.noise)
        return ESState(
            params=params,
            opt_state=self.optimizer.init(params),
            key=key,
            generation=jnp.zeros((), jnp.int32),
            sigma=jnp.asarray(self.config.sigma, float),  # float64 under x64
        )

    def ask(
        self, state: ESState, first=0, count: int | None = None, compact: bool = False
    ):
        """Perturbations of members ``first .. first + count - 1`` (leading axis = member).

        By default the whole population. A block of whole antithetic pairs (``first``
        and ``count`` even, e.g. one device's shard) draws each pair's noise once, and
        ``compact`` then returns it as `esrl.noise.PairNoise` (half the memory, expanded
        by the rollout inside its loop: a gain for low-rank noise, whose reads fuse with
        the expansion; full-rank matrices are better expanded once, before the loop).
        An odd ``count`` (or no antithetic pairs) goes member by member, and returns
        the members' tree even with ``compact`` (it has no ``unit``); an even
        ``count`` needs an even ``first`` (a concrete odd one raises; a traced one is
        not checked: the trainer's block offsets are even by construction).
        """
        c = self.config
        return noise.population_perturbation(
            state.key,
            state.generation,
            state.params,
            c.noise,
            state.sigma,
            c.population if count is None else count,
            first,
            compact,
        )

    def member(self, state: ESState, index):
        """The perturbation of one member (regenerated from keys)."""
        c = self.config
        return noise.member_perturbation(
            state.key, state.generation, index, state.params, c.noise, state.sigma
        )

    def tell(
        self,
        state: ESState,
        fitness: jax.Array,
        shaped: jax.Array | None = None,
        unit: dict | None = None,
    ):
        """Update from raw ``fitness`` [N] (or pre-``shaped`` weights); returns metrics.

        Only the perturbed leaves move: excluded and integer leaves stay as they are.

        ``unit``: the generation's unit noise, if its rollout kept it (the ``unit`` of
        the whole population's `esrl.noise.PairNoise`); otherwise it is regenerated.
        """
        c = self.config
        fitness = jnp.asarray(fitness)
        for name, x in (("fitness", fitness), ("shaped", shaped)):
            if x is not None and jnp.shape(x) != (c.population,):
                raise ValueError(
                    f"{name} has shape {jnp.shape(x)}; tell needs one value per "
                    f"member of the population, shape ({c.population},)"
                )
        _check_unit(unit, c)
        if shaped is None:
            shaped = SHAPERS[c.fitness_shaping](fitness)
        grad = noise.gradient_estimate(
            state.key, state.generation, state.params, shaped, c.noise, unit
        )
        updates, opt_state = self.optimizer.update(
            jax.tree.map(jnp.negative, grad), state.opt_state, state.params
        )
        # Unperturbed (excluded or integer) leaves never move, whatever the optimizer:
        # adamw's decay mask sees adam's outputs, float even for an integer leaf.
        moves = _perturbed_mask(state.params, c.noise)
        updates = jax.tree.map(
            lambda u, m: u if m else jnp.zeros_like(u), updates, moves
        )
        # A non-finite update (from a custom schedule, say: non-finite fitness was
        # shaped away above) is skipped: parameters and optimizer state stay.
        ok = _all_finite((updates, opt_state))
        params = _where(ok, optax.apply_updates(state.params, updates), state.params)
        opt_state = _where(ok, opt_state, state.opt_state)
        sigma = jnp.maximum(state.sigma * c.sigma_decay, c.sigma_min)
        finite = jnp.isfinite(fitness)
        metrics = {
            "fitness_mean": jnp.nanmean(jnp.where(finite, fitness, jnp.nan)),
            "fitness_max": jnp.max(jnp.where(finite, fitness, -jnp.inf)),
            "nonfinite_members": jnp.sum(~finite),
            "grad_norm": optax.tree.norm(grad),
            "sigma": state.sigma,
            "skipped_update": (~ok).astype(jnp.int32),
        }
        new = state.replace(
            params=params,
            opt_state=opt_state,
            generation=state.generation + 1,
            sigma=sigma,
        )
        return new, metrics


def _all_finite(tree) -> jax.Array:
    """Whether every float in ``tree`` is finite (True for a tree without floats)."""
    return jnp.all(
        jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)] + [True])
    )


def _where(ok: jax.Array, new, old):
    """``new`` where ``ok``, else ``old``, leaf by leaf."""
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def _check_unit(unit: dict | None, config: ESConfig) -> None:
    """Refuse unit noise of some other number of pairs (a block's, say)."""
    leaves = jax.tree.leaves(unit)
    what = "pairs" if config.noise.antithetic else "members"
    need = config.population // 2 if config.noise.antithetic else config.population
    if leaves and leaves[0].shape[0] != need:
        raise ValueError(
            f"unit has the noise of {leaves[0].shape[0]} {what}, the population "
            f"needs {need}: pass the unit of the whole population's "
            "ask(state, compact=True), or none (the noise is then regenerated)"
        )


@dataclass(frozen=True)
class AgentConfig:
    """Hyperparameters shared by the ES agents; subclasses say how members are perturbed."""

    population: int = 256
    """Members per generation (even when antithetic)."""
    sigma: float = 0.05
    """Perturbation scale."""
    lr: float = 0.05
    """Learning rate (absorbs 1/sigma)."""
    optimizer: str = "adam"
    """adam, adamw or sgd."""
    weight_decay: float = 0.0
    """Weight decay."""
    fitness_shaping: str = "centered_ranks"
    """centered_ranks, z_score or raw."""
    antithetic: bool = True
    """Mirrored sampling."""
    sigma_decay: float = 1.0
    """Per-generation sigma multiplier, in (0, 1] ..."""
    sigma_min: float = 0.0
    """... down to this floor."""
    lr_decay: float = 1.0
    """Per-generation learning-rate multiplier, in (0, 1]."""
    exclude: tuple[str, ...] = ()
    """Parameter-path substrings never perturbed (e.g. an LLM's embedding and head)."""

    def __post_init__(self):
        # ESConfig checks the rest when `strategy` builds it; checked here too, the
        # advice names the agent config's own antithetic field (ESConfig's its noise's)
        if is_int(self.population) and self.population > 2:
            _require_pairs(self.population, self.antithetic, type(self).__name__)

    def noise(self) -> noise.NoiseConfig:
        """How members are perturbed."""
        raise NotImplementedError

    def strategy(self) -> ES:
        """The `ES` this configuration describes."""
        return ES(
            ESConfig(
                population=self.population,
                sigma=self.sigma,
                lr=self.lr,
                optimizer=self.optimizer,
                weight_decay=self.weight_decay,
                fitness_shaping=self.fitness_shaping,
                sigma_decay=self.sigma_decay,
                sigma_min=self.sigma_min,
                lr_decay=self.lr_decay,
                noise=self.noise(),
            )
        )
