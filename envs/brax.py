"""Brax adapter (ids ``brax/<name>``): one thin layer over ``brax.envs`` classes.

Brax's own ``EpisodeWrapper``/``AutoResetWrapper`` tower is not used: the adapter
counts steps itself (``truncated`` once ``episode_length`` physics-env steps have
run, as Brax counts them), repeats the action inside `BraxEnv.step`, and never resets.
Brax environments are deterministic, so the step key is unused. ``info`` holds Brax's
``State.metrics`` (computed by the environment anyway, so free to pass on).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from esrl import spaces
from esrl.env import Environment

NAMES: tuple[str, ...] = (
    "ant",
    "fast",
    "halfcheetah",
    "hopper",
    "humanoid",
    "humanoidstandup",
    "inverted_double_pendulum",
    "inverted_pendulum",
    "pusher",
    "reacher",
    "swimmer",
    "walker2d",
)
"""Every name in ``brax.envs`` (a literal, so listing ids never imports Brax)."""

BACKENDS: tuple[str, ...] = ("spring", "mjx", "generalized", "positional")
"""Brax physics pipelines, fastest first on CPU (ant, 256 envs: spring 11.2k steps/s,
mjx 11.0k, generalized 7.2k, positional 5.4k)."""

ONLY_BACKEND: dict[str, str] = {"swimmer": "generalized"}
"""Environments that support a single backend (their default); others use spring."""


@struct.dataclass
class BraxEnvState:
    """The Brax ``State`` plus the adapter's own step counter."""

    brax_state: Any
    """Brax's ``envs.State`` (pipeline state, obs, reward, done, metrics, info)."""
    steps: jax.Array
    """Physics-env steps taken this episode (action repeats included), int32."""


def _import_brax_envs():
    # mujoco.mjx prints "Failed to import warp" on stdout when imported without GPU
    # extras; keep that out of users' output.
    with contextlib.redirect_stdout(io.StringIO()):
        import brax.envs
        import brax.fluid
    if not isinstance(brax.fluid.jp, _ClipKeywords):
        brax.fluid.jp = _ClipKeywords()
    return brax.envs


class _ClipKeywords:
    """``jax.numpy`` whose ``clip`` also takes ``a_min``/``a_max``.

    Brax's fluid forces (the generalized pipeline's swimmer) call
    ``jp.clip(x, a_min=...)``, keywords that jax 0.10 removed (now ``min``/``max``).
    """

    def __getattr__(self, name: str):
        return getattr(jnp, name)

    @staticmethod
    def clip(x, min=None, max=None, *, a_min=None, a_max=None):
        return jnp.clip(x, a_min if min is None else min, a_max if max is None else max)


def _box(shape: jax.ShapeDtypeStruct) -> spaces.Box:
    return spaces.Box(-jnp.inf, jnp.inf, shape.shape, shape.dtype)


class BraxEnv(Environment):
    """Wraps a ``brax.envs.Env``: key-first API, step counter, action repeat."""

    def __init__(self, env: Any, name: str, episode_length: int, action_repeat: int):
        if episode_length < 1 or action_repeat < 1:
            raise ValueError(
                f"episode_length and action_repeat must be >= 1, got {episode_length} "
                f"and {action_repeat}"
            )
        self.env = env
        self._name = name
        self.episode_length = episode_length
        self.action_repeat = action_repeat
        self._obs_shape = None

    def reset(self, key, params=None):
        brax_state = self.env.reset(key)
        return brax_state.obs, BraxEnvState(brax_state, jnp.zeros((), jnp.int32))

    def step(self, key, state, action, params=None):
        if self.action_repeat == 1:
            brax_state = self.env.step(state.brax_state, action)
            reward, done = brax_state.reward, brax_state.done > 0
        else:
            brax_state, reward, done = self._repeat(state.brax_state, action)
        steps = state.steps + self.action_repeat
        terminated = jnp.asarray(done, dtype=bool)
        truncated = jnp.logical_and(steps >= self.episode_length, ~terminated)
        reward = jnp.asarray(reward, dtype=jnp.result_type(float))  # float64 under x64
        info = dict(brax_state.metrics)
        return (
            brax_state.obs,
            BraxEnvState(brax_state, steps),
            reward,
            terminated,
            truncated,
            info,
        )

    def _repeat(self, brax_state: Any, action: jax.Array):
        """Step ``action_repeat`` times; rewards after a termination do not count."""

        def body(carry, _):
            s, total, done = carry
            s = self.env.step(s, action)
            total = total + jnp.where(done, 0.0, s.reward)
            return (s, total, jnp.logical_or(done, s.done > 0)), None

        init = (brax_state, jnp.zeros((), jnp.result_type(float)), jnp.zeros((), bool))
        (brax_state, total, done), _ = jax.lax.scan(
            body, init, None, self.action_repeat
        )
        return brax_state, total, done

    def observation_space(self, params=None):
        if self._obs_shape is None:
            # Shapes only: tracing reset is cheap, running it un-jitted is not.
            self._obs_shape = jax.eval_shape(self.env.reset, jax.random.key(0)).obs
        if isinstance(self._obs_shape, dict):
            return spaces.Dict({k: _box(s) for k, s in self._obs_shape.items()})
        return _box(self._obs_shape)

    def action_space(self, params=None):
        return spaces.Box(-1.0, 1.0, (self.env.action_size,), jnp.float32)

    @property
    def name(self) -> str:
        return f"brax/{self._name}"


def make_brax(
    name: str,
    backend: str | None = None,
    episode_length: int = 1000,
    action_repeat: int = 1,
    **kwargs,
) -> BraxEnv:
    """Build ``brax/<name>``; extra keyword arguments go to the Brax env class.

    Args:
        name: a name in `NAMES`.
        backend: a physics pipeline in `BACKENDS`; None picks spring (the fastest on
            CPU) or the only one the environment supports.
        episode_length: physics-env steps after which ``truncated`` is set.
        action_repeat: physics-env steps per `BraxEnv.step` (rewards summed).
    """
    if name not in NAMES:
        raise ValueError(f"unknown Brax environment {name!r}; choose one of {NAMES}")
    backend = ONLY_BACKEND.get(name, BACKENDS[0]) if backend is None else backend
    if backend not in BACKENDS:
        raise ValueError(f"unknown Brax backend {backend!r}; choose one of {BACKENDS}")
    only = ONLY_BACKEND.get(name, backend)
    if backend != only:
        raise ValueError(f"brax/{name} supports only backend={only!r}, not {backend!r}")
    envs = _import_brax_envs()
    env = envs.get_environment(name, backend=backend, **kwargs)
    return BraxEnv(env, name, episode_length, action_repeat)
