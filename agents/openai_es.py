"""OpenAI-ES: full-rank Gaussian perturbations, mirrored sampling, centered ranks, Adam.

Salimans et al. 2017, "Evolution Strategies as a Scalable Alternative to Reinforcement
Learning" (arXiv 1703.03864). The full-rank baseline of EGGROLL and of Qiu et al. 2025
(arXiv 2509.24372) for LLM fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

from esrl.es import ES, ESConfig
from esrl.noise import NoiseConfig


@dataclass(frozen=True)
class OpenAIESConfig:
    """OpenAI-ES hyperparameters."""

    population: int = 256
    """Members per generation (even: antithetic pairs)."""
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
    """Per-generation sigma multiplier."""
    lr_decay: float = 1.0
    """Per-generation learning-rate multiplier."""
    exclude: tuple[str, ...] = ()
    """Parameter-path substrings never perturbed."""

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
                    full_rank=True, antithetic=self.antithetic, exclude=self.exclude
                ),
            )
        )
