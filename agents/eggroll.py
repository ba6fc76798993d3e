"""EGGROLL: evolution strategies with low-rank perturbations.

Sarkar et al. 2025, "Evolution Strategies at the Hyperscale" (arXiv 2511.16652). Each
member perturbs every weight matrix by sigma * A B^T / sqrt(r), generated from a key and
never materialised, so a population costs little more than batched inference.
"""

from __future__ import annotations

from dataclasses import dataclass

from esrl.es import ES, ESConfig
from esrl.noise import NoiseConfig


@dataclass(frozen=True)
class EggrollConfig:
    """EGGROLL hyperparameters (defaults solve CartPole with an MLP)."""

    population: int = 256
    """Members per generation (even: antithetic pairs)."""
    rank: int = 1
    """Rank r of every matrix perturbation."""
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
    noise_reuse: int = 1
    """Generations that share noise."""
    sigma_decay: float = 1.0
    """Per-generation sigma multiplier."""
    lr_decay: float = 1.0
    """Per-generation learning-rate multiplier."""
    exclude: tuple[str, ...] = ()
    """Parameter-path substrings never perturbed (e.g. an LLM's embedding and head)."""

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
                lr_decay=self.lr_decay,
                noise=NoiseConfig(
                    rank=self.rank,
                    antithetic=self.antithetic,
                    noise_reuse=self.noise_reuse,
                    exclude=self.exclude,
                ),
            )
        )
