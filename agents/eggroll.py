"""EGGROLL: evolution strategies with low-rank perturbations.

Sarkar et al. 2025, "Evolution Strategies at the Hyperscale" (arXiv 2511.16652). Each
member perturbs every weight matrix by sigma * A B^T / sqrt(r), generated from a key and
never materialised, so a population costs little more than batched inference.
"""

from __future__ import annotations

from dataclasses import dataclass

from esrl.es import AgentConfig
from esrl.noise import NoiseConfig


@dataclass(frozen=True)
class EggrollConfig(AgentConfig):
    """EGGROLL hyperparameters: `esrl.es.AgentConfig` plus rank and noise reuse."""

    rank: int = 1
    """Rank r of every matrix perturbation."""
    noise_reuse: int = 1
    """Generations that share noise."""

    def noise(self) -> NoiseConfig:
        """Rank-r noise on matrices, full-rank on vectors."""
        return NoiseConfig(
            rank=self.rank,
            antithetic=self.antithetic,
            noise_reuse=self.noise_reuse,
            exclude=self.exclude,
        )
