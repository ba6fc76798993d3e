"""PPO's hyperparameters: `PPOConfig`, the configuration of `esrl.agents.ppo.PPO`.

A frozen dataclass with a docstring per field; it checks its values, and that the
minibatches divide an update's batch, when it is built, before anything compiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from esrl.checks import is_int, require, require_type
from esrl.policy import PolicySpec

_INTS = ("total_steps", "num_envs", "num_steps", "update_epochs", "num_minibatches")
_NUMBERS = ("gamma", "gae_lambda", "clip_eps", "vf_coef", "ent_coef", "max_grad_norm")
_FLAGS = (
    "anneal_lr", "clip_value", "normalize_advantages", "normalize_obs",
    "normalize_reward",
)  # fmt: skip


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters (defaults solve CartPole-v1: rejax's 16 x 128 setting)."""

    total_steps: int = 500_000
    """Environment steps of the whole run (rounded down to whole updates)."""
    num_envs: int = 16
    """Environments stepped in parallel."""
    num_steps: int = 128
    """Steps per environment per update (rollout length T)."""
    update_epochs: int = 4
    """Passes over each rollout."""
    num_minibatches: int = 4
    """Minibatches per epoch (recurrent: whole sequences, split over environments)."""
    lr: float = 2.5e-3
    """Adam learning rate: a number (see anneal_lr; for an optax schedule or another
    optimizer, pass ``PPO(config, env, optimizer=...)``)."""
    anneal_lr: bool = False
    """Decay the learning rate linearly to 0 over the run."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_eps: float = 0.2
    """Clip range of the probability ratio (and of the value change)."""
    clip_value: bool = True
    """Clip the value loss around the rollout's values."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    ent_coef: float = 0.01
    """Weight of the entropy bonus."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip (inf: none)."""
    normalize_advantages: bool = True
    """Standardise advantages per minibatch."""
    normalize_obs: bool = False
    """Normalise observations by running statistics (frozen during each update)."""
    normalize_reward: bool = False
    """Divide rewards by the running std of the discounted return."""
    policy: PolicySpec = field(default_factory=PolicySpec)
    """Network: mlp or a recurrent torso (gru, mingru, lstm), width, depth, activation."""
    reset_pool: int | None = None
    """Auto-reset from this many fresh states per step (Craftax); None: exact resets."""

    def __post_init__(self):
        require_type(self, "an int", *_INTS)
        constant = (
            "; anneal_lr=True decays it to 0; for a schedule, pass "
            "PPO(config, env, optimizer=optax.adam(schedule))"
        )
        require_type(self, "a number", "lr", hint=constant if callable(self.lr) else "")
        require_type(self, "a number", *_NUMBERS)
        require_type(self, "True or False", *_FLAGS)
        if not isinstance(self.policy, PolicySpec):
            raise TypeError(
                f"policy must be a PolicySpec, got {self.policy!r}; e.g. "
                "PolicySpec(kind='gru', hidden=64)"
            )
        require(
            self, ">= 1", "total_steps", "num_envs", "num_steps", "update_epochs",
            "num_minibatches",
        )  # fmt: skip
        require(self, "> 0", "lr", "clip_eps", "max_grad_norm")
        require(self, "in [0, 1]", "gamma", "gae_lambda")
        require(self, ">= 0", "vf_coef", "ent_coef")
        require(self, "finite", "lr", "vf_coef", "ent_coef")  # inf: the first step NaN
        pool = self.reset_pool
        if pool is not None and not (is_int(pool) and 1 <= pool <= self.num_envs):
            raise ValueError(
                f"reset_pool must be in [1, num_envs], got {pool!r} (an int at most "
                f"num_envs = {self.num_envs}, or None for exact resets)"
            )
        recurrent = self.policy.kind != "mlp"
        units = self.num_envs if recurrent else self.batch_size
        what = "num_envs" if recurrent else "num_envs * num_steps"
        if units % self.num_minibatches:
            whole = " (a recurrent policy's minibatches are whole environments)"
            raise ValueError(
                f"num_minibatches={self.num_minibatches} must divide {what}={units}"
                + (whole if recurrent else "")
            )
        if self.total_steps < self.batch_size:
            raise ValueError(
                f"total_steps={self.total_steps} is less than one update "
                f"(num_envs * num_steps = {self.batch_size}); raise total_steps"
            )

    @property
    def batch_size(self) -> int:
        """Environment steps per update."""
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        """Updates in the whole run."""
        return self.total_steps // self.batch_size
