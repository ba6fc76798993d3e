"""OpenAI-ES: full-rank Gaussian perturbations, mirrored sampling, centered ranks, Adam.

Salimans et al. 2017, "Evolution Strategies as a Scalable Alternative to Reinforcement
Learning" (arXiv 1703.03864). The full-rank baseline of EGGROLL and of Qiu et al. 2025
(arXiv 2509.24372) for LLM fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

from esrl.es import AgentConfig
from esrl.noise import NoiseConfig


@dataclass(frozen=True)
class OpenAIESConfig(AgentConfig):
    """OpenAI-ES hyperparameters (the shared fields of `esrl.es.AgentConfig`)."""

    def noise(self) -> NoiseConfig:
        """Full-rank noise on every perturbed leaf."""
        return NoiseConfig(
            full_rank=True, antithetic=self.antithetic, exclude=self.exclude
        )
