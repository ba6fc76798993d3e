"""Craftax adapter (ids ``craftax/<name>``), on Craftax's no-auto-reset classes.

Craftax's own ``step`` resets the world every step (one reset costs about 6 ms per
environment on CPU), so the adapter builds the ``NoAutoReset`` classes and calls the
pure ``step_env``. Craftax folds its time limit into ``done``; `LegacyEnv` splits it
into ``terminated`` (death, lava, boss beaten) and ``truncated`` (``max_timesteps``).
``info["achievements"]`` is the bool vector of achievements unlocked so far this
episode, indexed like `achievement_names`.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import Any

from esrl.envs.legacy import LegacyEnv

NAMES: tuple[str, ...] = (
    "Craftax-Classic-Symbolic-v1",
    "Craftax-Classic-Pixels-v1",
    "Craftax-Symbolic-v1",
    "Craftax-Pixels-v1",
)

CLASSIC_ACHIEVEMENTS: tuple[str, ...] = (
    "collect_wood",
    "place_table",
    "eat_cow",
    "collect_sapling",
    "collect_drink",
    "make_wood_pickaxe",
    "make_wood_sword",
    "place_plant",
    "defeat_zombie",
    "collect_stone",
    "place_stone",
    "eat_plant",
    "defeat_skeleton",
    "make_stone_pickaxe",
    "make_stone_sword",
    "wake_up",
    "place_furnace",
    "collect_coal",
    "collect_iron",
    "collect_diamond",
    "make_iron_pickaxe",
    "make_iron_sword",
)
"""Craftax-Classic achievement names, in the order of ``info["achievements"]``."""


def _check_name(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"unknown Craftax environment {name!r}; choose one of {NAMES}")


@functools.cache
def achievement_names(name: str = "Craftax-Classic-Symbolic-v1") -> tuple[str, ...]:
    """Achievement names of environment ``name``, in ``info["achievements"]`` order."""
    _check_name(name)
    if "Classic" in name:
        return CLASSIC_ACHIEVEMENTS
    from craftax.craftax.constants import Achievement

    return tuple(a.name.lower() for a in sorted(Achievement, key=lambda a: a.value))


class CraftaxEnv(LegacyEnv):
    """A Craftax no-auto-reset environment; ``info`` carries the achievements."""

    def __init__(self, env: Any, name: str):
        super().__init__(env)
        self._name = name

    def info(self, state: Any, info: dict[str, Any]) -> dict[str, Any]:
        # Craftax's own info holds one float per achievement, zero except on the
        # final step; the bool vector is smaller and valid at every step.
        return {"achievements": state.achievements}

    @property
    def name(self) -> str:
        return f"craftax/{self._name}"


def make_craftax(name: str = "Craftax-Classic-Symbolic-v1") -> CraftaxEnv:
    """Build ``craftax/<name>`` without Craftax's every-step auto-reset."""
    _check_name(name)
    # Pixels envs print texture loading on stdout, which would corrupt JSON output
    # (`esrl eval --json`); it is progress, so it goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        from craftax.craftax_env import make_craftax_env_from_name

        env = make_craftax_env_from_name(name, auto_reset=False)
    return CraftaxEnv(env, name)
