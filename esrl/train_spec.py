"""The configuration of an ES run: `TrainConfig` and the `RunSpec` around it.

A `RunSpec` (environment, agent, agent config, training loop, plugins) is what
`esrl.train.prepare` builds a run from; it is stored as JSON in every checkpoint, so
``--resume`` rebuilds it (`RunSpec.from_dict`) and checks that a resumed run continues
the saved one (`RunSpec.check_resumable`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from esrl.agents.eggroll import EggrollConfig
from esrl.agents.openai_es import OpenAIESConfig
from esrl.checks import SEED, require, require_env_id
from esrl.policy import PolicySpec
from esrl.rollout import RolloutConfig

AGENTS: dict[str, type] = {"eggroll": EggrollConfig, "openai_es": OpenAIESConfig}
"""ES agents trained by `esrl.train`, by name, with their config classes."""


@dataclass(frozen=True)
class TrainConfig:
    """The training loop around an ES strategy."""

    generations: int = 100
    """Total generations (a resumed run continues up to this number)."""
    eval_every: int = 10
    """Evaluate the unperturbed mean policy every this many generations (and at the end)."""
    eval_episodes: int = 16
    """Episodes of each evaluation."""
    checkpoint_every: int = 50
    """Checkpoint every this many generations (and at the end, and on Ctrl-C)."""
    seed: int = 0
    """Seed of initial parameters, noise and environment keys."""
    num_devices: int | None = None
    """Devices the population is split over (None: all visible)."""
    block: int | None = None
    """Members a device rolls out at once: its share runs as sequential blocks of this
    size (a divisor of the share), which keeps one block's noise and activations in
    cache. None: blocks of up to `esrl.train.CPU_BLOCK` on a CPU (the whole share
    where it has no divisor of at least CPU_BLOCK / 8), the whole share elsewhere."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """How members are evaluated (horizon, episodes, normalisation ...)."""
    policy: PolicySpec = field(default_factory=PolicySpec)
    """The policy network."""
    progress: bool = True
    """Show a progress bar."""
    tensorboard: bool = False
    """Also write TensorBoard scalars to DIR/tb."""

    def __post_init__(self):
        require(self, ">= 1", "generations", "eval_every", "eval_episodes",
                "checkpoint_every")  # fmt: skip
        require(self, SEED, "seed")

    def eval_rollout(self) -> RolloutConfig:
        """The rollout configuration of evaluations (M independent episodes)."""
        return dataclasses.replace(
            self.rollout, episodes=self.eval_episodes, common_random_numbers=False
        )


def _build(cls, values: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**{k: v for k, v in values.items() if k in names})


# settings a resumed run may change; everything else must match the checkpoint
# (plugins too: they only register environments, and a resume may add one)
_RESUMABLE = ("generations", "progress", "tensorboard", "num_devices", "block")


@dataclass(frozen=True)
class RunSpec:
    """A whole ES run, stored as JSON in every checkpoint so `--resume` rebuilds it."""

    env: str
    """Registered environment id."""
    agent: str = "eggroll"
    """eggroll or openai_es."""
    agent_config: Any = None
    """An instance of ``AGENTS[agent]`` (its defaults when None)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The training loop."""
    plugins: tuple[str, ...] = ()
    """Modules imported first (they register user environments)."""
    env_object: str | None = None
    """Class of the environment object passed as ``env=`` (None: made from ``env``);
    such a run is resumed and evaluated only with an environment passed again."""

    def __post_init__(self):
        require_env_id(self.env, "train")  # else an AttributeError in make
        if self.agent not in AGENTS:
            raise ValueError(
                f"unknown agent {self.agent!r}; choose one of {', '.join(AGENTS)}"
            )
        if self.agent_config is None:
            object.__setattr__(self, "agent_config", AGENTS[self.agent]())
        elif not isinstance(self.agent_config, AGENTS[self.agent]):
            raise TypeError(
                f"agent {self.agent!r} needs a {AGENTS[self.agent].__name__}"
            )

    def to_dict(self) -> dict:
        """JSON-able description."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        """Inverse of `to_dict`."""
        t = dict(d["train"])
        t["rollout"] = _build(RolloutConfig, t["rollout"])
        t["policy"] = _build(PolicySpec, t["policy"])
        return cls(
            env=d["env"],
            agent=d["agent"],
            agent_config=_build(AGENTS[d["agent"]], d["agent_config"]),
            train=_build(TrainConfig, t),
            plugins=tuple(d.get("plugins", ())),
            env_object=d.get("env_object"),
        )

    def check_resumable(self, saved: RunSpec) -> None:
        """Raise unless this spec continues ``saved`` (only generations etc. may differ)."""
        mine, theirs = self.to_dict(), saved.to_dict()
        for k in _RESUMABLE:
            mine["train"].pop(k), theirs["train"].pop(k)
        mine.pop("plugins"), theirs.pop("plugins")
        if mine != theirs:
            diff = [k for k in mine if mine[k] != theirs[k]]
            raise ValueError(
                f"the checkpoint was written by a different run ({', '.join(diff)} "
                "differ); resume with the same settings (only --generations, --devices, "
                "--block and --tensorboard may change)"
            )
