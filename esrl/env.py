"""The esrl environment protocol (gymnax 1.x shape), `Wrapper` and the auto-reset wrapper.

An environment is functional, jittable and vmappable::

    obs, state = env.reset(key, params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)

`step` never resets by itself: ES rollouts run fixed-length episodes with done-masking and
must not pay for a reset every step. Wrap an environment in `AutoReset` (or call
`esrl.make(id, autoreset=True)`) when a trainer needs it; the observation that ended the
episode is then kept in ``info["final_obs"]``. Your own wrappers subclass `Wrapper`, which
forwards everything, and override what they change.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from gymnax.environments import spaces

Obs = Any
State = Any
Params = Any
StepResult = tuple[Obs, State, jax.Array, jax.Array, jax.Array, dict[str, Any]]


class Environment:
    """Base class: subclasses implement `reset` and `step` (without auto-reset)."""

    @property
    def default_params(self) -> Params:
        """Environment parameters used when `params` is None (a pytree, may be traced)."""
        return None

    def reset(self, key: jax.Array, params: Params = None) -> tuple[Obs, State]:
        """Start an episode; returns ``(obs, state)``."""
        raise _missing(self, "reset", "(key, params) -> (obs, state)")

    def step(
        self, key: jax.Array, state: State, action: jax.Array, params: Params = None
    ) -> StepResult:
        """Advance one step; returns ``(obs, state, reward, terminated, truncated, info)``."""
        raise _missing(
            self,
            "step",
            "(key, state, action, params) -> (obs, state, reward, terminated, "
            "truncated, info)",
        )

    def observation_space(self, params: Params = None) -> spaces.Space:
        """The space observations live in (gymnax space: sample, contains, shape, dtype)."""
        raise _missing(self, "observation_space", "(params) -> esrl.spaces space")

    def action_space(self, params: Params = None) -> spaces.Space:
        """The space actions live in (`spaces.Discrete` with ``n`` or `spaces.Box`)."""
        raise _missing(self, "action_space", "(params) -> esrl.spaces space")

    @property
    def name(self) -> str:
        """A readable name for messages and logs."""
        return type(self).__name__

    @property
    def unwrapped(self) -> Environment:
        """The innermost environment."""
        return self

    def __repr__(self) -> str:
        return f"<{self.name}>"


def _missing(env: Environment, method: str, signature: str) -> NotImplementedError:
    """The error of a method a subclass left out, pointing gymnax habits the right way."""
    message = (
        f"{type(env).__name__} subclasses esrl.Environment but does not implement "
        f"{method}{signature}"
    )
    gymnax_name = {"reset": "reset_env", "step": "step_env"}.get(method)
    if gymnax_name is not None and hasattr(env, gymnax_name):
        message += (
            f"; it has {gymnax_name}: for the gymnax API (reset_env, step_env) subclass "
            "gymnax.environments.environment.Environment instead (esrl adapts it), or "
            "rename them reset and step with esrl's signatures"
        )
    return NotImplementedError(message)


def where_done(done: jax.Array, reset, current):
    """Pick ``reset`` where ``done`` (shape [], or [B] over leading batch axes)."""

    def select(new, old):
        # jnp.ndim: un-jitted, gymnax states hold Python ints (``time=0``).
        extra = (1,) * (jnp.ndim(old) - done.ndim)
        return jnp.where(done.reshape(done.shape + extra), new, old)

    return jax.tree.map(select, reset, current)


def all_finite(x: jax.Array, batch_dims: int = 1) -> jax.Array:
    """Whether every entry of each example is finite: [*batch, ...] -> [*batch]."""
    return jnp.all(jnp.isfinite(x), axis=tuple(range(batch_dims, x.ndim)))


def cut_broken(obs, reward, terminated, truncated, batch_dims: int = 0):
    """``(truncated, done)`` for an auto-reset: an episode whose observation or reward is
    no longer finite (a physics blow-up, say) is cut like a time limit, to be reset."""
    finite = jnp.isfinite(reward)
    for leaf in jax.tree.leaves(obs):  # Dict and Tuple observations too
        finite &= all_finite(leaf, batch_dims)
    done = jnp.logical_or(terminated, truncated)
    broken = ~finite & ~done
    return truncated | broken, done | broken


class Wrapper(Environment):
    """Forwards everything to ``env``; subclasses override what they change.

    A raw gymnax 1.x or 5-tuple environment is adapted first (as `esrl.make` does):
    gymnax's own ``step`` auto-resets, which would lose the final observation.
    """

    def __init__(self, env: Environment):
        from esrl.registry import as_environment

        self.env = as_environment(env)

    @property
    def default_params(self) -> Params:
        return self.env.default_params

    def reset(self, key, params=None):
        return self.env.reset(key, params)

    def step(self, key, state, action, params=None):
        return self.env.step(key, state, action, params)

    def observation_space(self, params=None):
        return self.env.observation_space(params)

    def action_space(self, params=None):
        return self.env.action_space(params)

    @property
    def name(self) -> str:
        return self.env.name

    @property
    def unwrapped(self) -> Environment:
        return self.env.unwrapped


def wraps(env: Environment, cls: type) -> bool:
    """Whether ``env`` or any environment it wraps (via ``.env``) is a ``cls``."""
    seen = set()
    while env is not None and id(env) not in seen:
        if isinstance(env, cls):
            return True
        seen.add(id(env))
        env = getattr(env, "env", None)
    return False


class AutoReset(Wrapper):
    """Resets the wrapped environment whenever an episode ends, keeping the final obs.

    An episode whose observation or reward stops being finite is cut (``truncated``) and
    reset too, rather than left sending NaN until it ends (`cut_broken`).

    Every step also computes a reset (selected where the episode ended): cheap for
    gymnax and Brax, expensive for Craftax. For batches of Craftax environments use
    `esrl.vec.VecEnv` with ``reset_pool`` instead.
    """

    def step(self, key, state, action, params=None):
        key_step, key_reset = jax.random.split(key)
        obs, state, reward, terminated, truncated, info = self.env.step(
            key_step, state, action, params
        )
        truncated, done = cut_broken(obs, reward, terminated, truncated)
        obs_reset, state_reset = self.env.reset(key_reset, params)
        next_obs = where_done(done, obs_reset, obs)
        next_state = where_done(done, state_reset, state)
        info = {**info, "final_obs": obs}
        return next_obs, next_state, reward, terminated, truncated, info


def strip_autoreset(env: Environment) -> Environment:
    """``env`` without its outer `AutoReset` layers (``AutoReset(make(id,
    autoreset=True))`` too); one under another wrapper stays."""
    while isinstance(env, AutoReset):
        env = env.env
    return env


def without_autoreset(env: Environment, needs: str) -> Environment:
    """``env`` without its outer `AutoReset` layers, for callers that reset themselves.

    An `AutoReset` under another wrapper cannot be removed: it is refused, with
    ``needs`` (what the caller must keep) in the message.
    """
    env = strip_autoreset(env)
    if wraps(env, AutoReset):
        raise ValueError(
            f"{env.name} has an esrl.AutoReset under another wrapper: {needs}; build "
            "the wrapper over the environment without autoreset"
        )
    return env
