"""Adapter for the older 5-tuple step API (gymnax 0.x, Craftax, Kinetix, POPGym Arcade).

Those environments return ``obs, state, reward, done, info`` from a pure ``step_env``
and fold the time limit into ``done``. `LegacyEnv` calls ``step_env`` (never the
auto-resetting ``step``) and splits ``done`` into ``terminated`` and ``truncated``
when the environment exposes its time limit: ``params.max_steps_in_episode`` with
``state.time`` (gymnax 0.x) or ``params.max_timesteps`` with ``state.timestep``
(Craftax, Kinetix). Without a known limit every ``done`` counts as ``terminated``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from esrl import spaces
from esrl.env import Environment

TIME_LIMITS: tuple[tuple[str, str], ...] = (
    ("max_steps_in_episode", "time"),
    ("max_timesteps", "timestep"),
)
"""``(params attribute, state attribute)`` pairs that name an episode time limit."""

_NEVER = jnp.iinfo(jnp.int32).max


def is_legacy(obj: Any) -> bool:
    """Whether ``obj`` has the older 5-tuple API (``step_env`` whose done has timeouts).

    gymnax 1.x environments (subclasses of ``gymnax.environments.environment
    .Environment``, or anything with ``is_truncated``) and `esrl.Environment` are not.
    """
    if isinstance(obj, (Environment, type)):
        return False
    from gymnax.environments.environment import Environment as GymnaxEnvironment

    if isinstance(obj, GymnaxEnvironment) or hasattr(obj, "is_truncated"):
        return False
    return all(
        callable(getattr(obj, a, None)) for a in ("step_env", "reset_env")
    ) and hasattr(obj, "default_params")


def five_values(out: Any, where: str, api: str) -> tuple:
    """``out`` if it is the 5-tuple ``api`` names, else a TypeError saying so."""
    if isinstance(out, (tuple, list)) and len(out) == 5:
        return tuple(out)
    size = (
        f"{len(out)} values" if isinstance(out, (tuple, list)) else type(out).__name__
    )
    raise TypeError(
        f"{where} returned {size}; {api}. To return (obs, state, reward, terminated, "
        "truncated, info), subclass esrl.Environment and name the method step"
    )


def to_space(space: Any) -> spaces.Space:
    """Convert a gymnax-like space (Craftax's, gymnax 0.x) to an `esrl.spaces` one."""
    if isinstance(space, (spaces.Discrete, spaces.Box, spaces.Dict, spaces.Tuple)):
        return space
    if hasattr(space, "n") and tuple(getattr(space, "shape", ())) == ():
        return spaces.Discrete(int(space.n))
    if all(hasattr(space, a) for a in ("low", "high", "shape")):
        dtype = getattr(space, "dtype", jnp.float32)
        return spaces.Box(space.low, space.high, tuple(space.shape), dtype)
    inner = getattr(space, "spaces", None)
    if isinstance(inner, dict):
        return spaces.Dict({k: to_space(v) for k, v in inner.items()})
    if isinstance(inner, (list, tuple)):
        return spaces.Tuple([to_space(s) for s in inner])
    raise TypeError(
        f"cannot convert space {space!r}: expected a Discrete (with `n`), a Box "
        "(with `low`, `high`, `shape`), or a Dict/Tuple of those"
    )


def _time_limit(params: Any) -> tuple[str, str] | None:
    for limit, counter in TIME_LIMITS:
        if hasattr(params, limit):
            return limit, counter
    return None


def _without_limit(params: Any, limit: str) -> Any | None:
    """``params`` with the time limit pushed out of reach, or None if not replaceable."""
    if hasattr(params, "replace"):
        return params.replace(**{limit: _NEVER})
    if dataclasses.is_dataclass(params):
        return dataclasses.replace(params, **{limit: _NEVER})
    if hasattr(params, "_replace"):  # a NamedTuple
        return params._replace(**{limit: _NEVER})
    return None


class LegacyEnv(Environment):
    """Wraps an object with ``step_env``/``reset_env`` returning a single ``done``."""

    def __init__(self, env: Any):
        if not all(callable(getattr(env, a, None)) for a in ("step_env", "reset_env")):
            raise TypeError(
                f"{type(env).__name__} needs step_env(key, state, action, params) and "
                "reset_env(key, params) to be adapted by LegacyEnv"
            )
        self.env = env

    @property
    def default_params(self) -> Any:
        return self.env.default_params

    def reset(self, key, params=None):
        params = self.default_params if params is None else params
        return self.env.reset_env(key, params)

    def step(self, key, state, action, params=None):
        params = self.default_params if params is None else params
        obs, state, reward, done, info = five_values(
            self.env.step_env(key, state, action, params),
            f"{self.name}.step_env",
            "the older API returns (obs, state, reward, done, info)",
        )
        done = jnp.asarray(done, dtype=bool)
        truncated = self._truncated(state, params, done)
        terminated = jnp.logical_and(done, jnp.logical_not(truncated))
        reward = jnp.asarray(reward, dtype=jnp.result_type(float))  # float64 under x64
        return obs, state, reward, terminated, truncated, self.info(state, info)

    def info(self, state: Any, info: dict[str, Any]) -> dict[str, Any]:
        """The ``info`` dict returned by `step` (subclasses trim or extend it)."""
        return dict(info)

    def _truncated(self, state: Any, params: Any, done: jax.Array) -> jax.Array:
        """Done because the time limit ran out, and not by a terminal condition."""
        names = _time_limit(params)
        if names is None or not hasattr(state, names[1]):
            return jnp.zeros((), dtype=bool)
        limit, counter = names
        time_up = getattr(state, counter) >= getattr(params, limit)
        natural = None
        is_terminal = getattr(self.env, "is_terminal", None)
        unlimited = _without_limit(params, limit) if callable(is_terminal) else None
        if unlimited is not None:
            # is_terminal folds the time limit in; without it, it tells whether the
            # episode would also have ended naturally on the very last step.
            natural = jnp.asarray(is_terminal(state, unlimited), dtype=bool)
        truncated = jnp.logical_and(done, time_up)
        if natural is not None:
            truncated = jnp.logical_and(truncated, jnp.logical_not(natural))
        return truncated

    def observation_space(self, params=None):
        params = self.default_params if params is None else params
        return to_space(self.env.observation_space(params))

    def action_space(self, params=None):
        params = self.default_params if params is None else params
        return to_space(self.env.action_space(params))

    @property
    def name(self) -> str:
        return getattr(self.env, "name", type(self.env).__name__)
