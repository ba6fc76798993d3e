"""Export an esrl environment as a gymnasium ``Env`` or ``VectorEnv`` (NumPy in and out).

``to_gymnasium(env)`` gives a single environment; ``to_gymnasium(env, num_envs=N)`` a
``VectorEnv`` that auto-resets in the same step (``AutoresetMode.SAME_STEP``) and, the
gymnasium 1.x way, reports the observation that ended an episode in
``infos["final_obs"]`` (object array, mask ``infos["_final_obs"]``) and that step's
info in ``infos["final_info"]``; an environment whose observation or reward turns
non-finite is truncated and reset there (`esrl.vec.VecEnv`). Reset and step are jitted
once; the environment's randomness comes from a JAX key seeded by ``seed`` (or by
``reset(seed=...)``), which seeds ``np_random`` too. A Discrete action that is not an
integer in ``[0, n)`` is refused (ValueError); Box actions reach the environment as
given, as in gymnasium (``gymnasium.wrappers.ClipAction`` clips them). Nothing renders
(no render modes).

gymnasium's vector wrappers that accept only next-step auto-reset refuse the VectorEnv.
``RecordEpisodeStatistics`` (gymnasium 1.3) runs but counts as if next-step: from an
environment's second episode on, each length is one short and the first reward is
missing (the same over gymnasium's own ``SyncVectorEnv`` in same-step mode).
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from esrl import spaces
from esrl.checks import broadcasts_to, is_int
from esrl.env import Environment, without_autoreset
from esrl.vec import VecEnv


def to_gymnasium_space(space: spaces.Space) -> gymnasium.spaces.Space:
    """The gymnasium space equal to an esrl (gymnax) space: Discrete, Box, Dict, Tuple."""
    if isinstance(space, spaces.Discrete):
        return gymnasium.spaces.Discrete(int(space.n))
    if isinstance(space, spaces.Box):
        dtype = np.dtype(space.dtype)
        shape = tuple(space.shape)
        low, high = (_bound(b, shape, dtype) for b in (space.low, space.high))
        return gymnasium.spaces.Box(low, high, shape, dtype)
    if isinstance(space, spaces.Dict):
        return gymnasium.spaces.Dict(
            {k: to_gymnasium_space(v) for k, v in space.spaces.items()}
        )
    if isinstance(space, spaces.Tuple):
        return gymnasium.spaces.Tuple([to_gymnasium_space(s) for s in space.spaces])
    raise TypeError(
        f"cannot convert {space!r} to a gymnasium space; supported: esrl.spaces "
        "Discrete, Box, Dict and Tuple"
    )


def _bound(value: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A Box bound as an array of ``dtype``; +-inf become an integer dtype's limits."""
    value = np.broadcast_to(np.asarray(value), shape)
    if not np.issubdtype(dtype, np.integer):
        return value.astype(dtype)
    # Casting inf to an integer dtype is undefined (int32 gives INT_MIN).
    out = np.where(np.isinf(value), 0, value).astype(dtype)
    out[value == np.inf] = np.iinfo(dtype).max
    out[value == -np.inf] = np.iinfo(dtype).min
    return out


def _to_numpy(x: Any, space: gymnasium.spaces.Space) -> Any:
    """A JAX value (observation or action) as NumPy matching ``space``."""
    if isinstance(space, gymnasium.spaces.Dict):
        return {k: _to_numpy(x[k], s) for k, s in space.spaces.items()}
    if isinstance(space, gymnasium.spaces.Tuple):
        return tuple(_to_numpy(v, s) for v, s in zip(x, space.spaces))
    if isinstance(space, gymnasium.spaces.Discrete):
        return space.dtype.type(x)  # an np.int64, as gymnasium's checker expects
    # a copy: np.asarray of a JAX array is a read-only view (in-place edits fail)
    return np.array(x, dtype=space.dtype)


def _to_jax(action: Any, space: spaces.Space, batch: tuple[int, ...]) -> Any:
    """A NumPy action as the JAX array the esrl action space expects.

    ``batch`` is the leading shape (``(num_envs,)`` for a VectorEnv); after it, the
    action must broadcast to the space's shape (a wrong one would step a batch).
    """
    if isinstance(space, spaces.Dict):
        return {k: _to_jax(action[k], s, batch) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(_to_jax(a, s, batch) for a, s in zip(action, space.spaces))
    if isinstance(space, spaces.Discrete):
        _check_discrete(np.asarray(action), space)
    try:
        action = jnp.asarray(action, dtype=space.dtype)
    except (TypeError, ValueError) as error:  # None, a string, a ragged list
        raise ValueError(
            f"action {action!r} is not an array of numbers; the action space is "
            f"{space!r}"
        ) from error
    want = tuple(space.shape)
    fits = broadcasts_to(action.shape[len(batch) :], want)
    if action.shape[: len(batch)] != batch or not fits:
        raise ValueError(
            f"action has shape {action.shape}, but the action space {space!r} needs "
            f"shape {batch + want}"
        )
    return action


def _check_discrete(action: np.ndarray, space: spaces.Discrete) -> None:
    """Refuse what the cast to the space's dtype would hide: 2.7 would step as 2 and
    -1 or n step as whatever the environment makes of them."""
    if action.dtype != bool and not np.issubdtype(action.dtype, np.integer):
        problem = "is not an integer"
    elif np.any((action < 0) | (action >= space.n)):
        problem = "is outside"
    else:
        return
    raise ValueError(
        f"action {action.tolist()!r} {problem}; the action space {space!r} takes "
        f"integers in [0, {space.n})"
    )


def _key(seed: Any) -> jax.Array:
    if not is_int(seed):
        raise TypeError(
            f"seed must be an int, got {seed!r}; per-environment keys are derived from "
            "one seed"
        )
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (as in gymnasium), got {seed}")
    # jax.random.key keeps only the low 32 bits; fold the higher words in.
    key = jax.random.key(seed & 0xFFFFFFFF)
    seed >>= 32
    while seed:
        key = jax.random.fold_in(key, seed & 0xFFFFFFFF)
        seed >>= 32
    return key


class GymnasiumEnv(gymnasium.Env):
    """One esrl environment as a ``gymnasium.Env``; never auto-resets."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, env: Environment, seed: int = 0, params: Any = None):
        # gymnasium's terminal step returns the final observation, not a reset one
        env = without_autoreset(
            env, "a gymnasium Env must return the final observation"
        )
        self.env = env
        self.params = env.default_params if params is None else params
        self._space = env.action_space(self.params)
        self.observation_space = to_gymnasium_space(env.observation_space(self.params))
        self.action_space = to_gymnasium_space(self._space)
        self._driver = _Driver(
            env.reset, env.step, self.params, self._space, self.observation_space, seed
        )
        # as reset(seed=seed) would: gymnasium wrappers (StickyAction) draw from it
        self._np_random, self._np_random_seed = seeding.np_random(int(seed))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode; ``seed`` re-seeds the JAX key. Returns ``(obs, {})``."""
        obs = self._driver.start(seed)  # checks the seed first
        super().reset(seed=None if seed is None else int(seed))  # np.int64 too
        self._ended = self._warned = False
        return obs, {}

    def render(self) -> None:
        """Refused: esrl environments have no render modes."""
        raise NotImplementedError(
            f"{self.env.name} does not render: esrl environments have no render "
            "modes (metadata['render_modes'] is empty)"
        )

    def step(self, action: Any):
        """Advance one step: ``(obs, reward, terminated, truncated, info)``."""
        obs, reward, terminated, truncated, info = self._driver.advance(action)
        terminated, truncated = bool(terminated), bool(truncated)
        if self._ended and not self._warned:  # as gymnasium's own environments do
            self._warned = True
            gymnasium.logger.warn(
                "step() after the episode ended (terminated or truncated): the steps "
                "that follow are undefined; call reset() to start a new episode"
            )
        self._ended = self._ended or terminated or truncated
        return obs, float(reward), terminated, truncated, jax.tree.map(np.array, info)


class _Driver:
    """The JAX side of a gymnasium wrapper: key, state and the jitted reset and step."""

    def __init__(
        self, reset, step, params, action_space, observation_space, seed, batch=()
    ):
        self.params = params
        self.action_space = action_space
        self.batch = batch  # leading action shape: (num_envs,) for a VectorEnv
        self.observation_space = observation_space
        self.rng = _key(seed)
        self.state = None
        self._reset = jax.jit(reset)
        self._step = jax.jit(step)

    def __getstate__(self) -> dict:
        """Picklable (jitted functions are not): ``reset`` and ``step`` are re-jitted."""
        state = dict(self.__dict__)
        for name in ("_reset", "_step"):
            state[name] = state[name].__wrapped__
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset, self._step = jax.jit(self._reset), jax.jit(self._step)

    def start(self, seed: int | None):
        """Reset (re-seeding the key if ``seed`` is given); the observation as NumPy."""
        if seed is not None:
            self.rng = _key(seed)
        self.rng, key = jax.random.split(self.rng)
        obs, self.state = self._reset(key, self.params)
        return _to_numpy(obs, self.observation_space)

    def advance(self, action: Any):
        """One jitted step: NumPy obs, then JAX reward, flags and info."""
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        self.rng, key = jax.random.split(self.rng)
        action = _to_jax(action, self.action_space, self.batch)
        obs, self.state, reward, terminated, truncated, info = self._step(
            key, self.state, action, self.params
        )
        return (
            _to_numpy(obs, self.observation_space),
            reward,
            terminated,
            truncated,
            info,
        )


class GymnasiumVectorEnv(VectorEnv):
    """``num_envs`` copies of an esrl environment as a same-step auto-reset VectorEnv."""

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": [],
        "autoreset_mode": AutoresetMode.SAME_STEP,
    }

    def __init__(
        self, env: Environment, num_envs: int, seed: int = 0, params: Any = None
    ):
        env = without_autoreset(
            env, "a gymnasium VectorEnv must return the final observation in its infos"
        )
        self.env = env
        self.num_envs = num_envs
        self.params = env.default_params if params is None else params
        self._space = env.action_space(self.params)
        obs_space = to_gymnasium_space(env.observation_space(self.params))
        self.single_observation_space = obs_space
        self.single_action_space = to_gymnasium_space(self._space)
        self.observation_space = batch_space(obs_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        vec = VecEnv(env, num_envs, autoreset=True)
        self._driver = _Driver(
            vec.reset,
            vec.step,
            self.params,
            self._space,
            self.observation_space,
            seed,
            (num_envs,),
        )
        self._np_random, self._np_random_seed = seeding.np_random(int(seed))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Reset every environment; returns batched ``(obs, {})``."""
        obs = self._driver.start(seed)  # checks the seed first
        super().reset(seed=None if seed is None else int(seed))  # np.int64 too
        return obs, {}

    def step(self, actions: Any):
        """Step all; finished environments reset in the same step (final obs in info)."""
        obs, reward, terminated, truncated, info = self._driver.advance(actions)
        terminated, truncated = np.array(terminated), np.array(truncated)
        infos = self._infos(jax.tree.map(np.array, info), terminated | truncated)
        # float64 rewards, as gymnasium's own vector envs give
        return obs, np.asarray(reward, np.float64), terminated, truncated, infos

    def _infos(self, info: dict[str, Any], done: np.ndarray) -> dict[str, Any]:
        """gymnasium's vector info layout: ``key`` arrays with ``_key`` masks."""
        final_obs = info.pop("final_obs")
        # A finished environment's info is its reset's, which is empty here.
        infos = _masked(info, ~done)
        if done.any():
            objects = np.full(self.num_envs, None, dtype=object)
            for i in np.flatnonzero(done):
                member = jax.tree.map(lambda x, i=i: x[i], final_obs)
                objects[i] = _to_numpy(member, self.single_observation_space)
            infos["final_obs"], infos["_final_obs"] = objects, done
            infos["final_info"], infos["_final_info"] = _masked(info, done), done
        return infos


def _masked(info: dict[str, Any], mask: np.ndarray) -> dict[str, Any]:
    """``info`` where ``mask`` holds, zeros elsewhere (gymnasium's defaults), and masks."""
    out = {}
    for key, value in info.items():
        if isinstance(value, dict):
            out[key] = _masked(value, mask)
        else:
            keep = mask.reshape(mask.shape + (1,) * (value.ndim - 1))
            out[key] = np.where(keep, value, np.zeros((), value.dtype))
        out[f"_{key}"] = mask.copy()
    return out


def to_gymnasium(
    env: Any, num_envs: int | None = None, seed: int = 0, params: Any = None
) -> GymnasiumEnv | GymnasiumVectorEnv:
    """A gymnasium ``Env`` (``num_envs=None``) or ``VectorEnv`` for ``env``.

    Args:
        env: an `esrl.Environment`, a registered id, or a raw gymnax/legacy env.
        num_envs: None for a single ``gymnasium.Env``, else the vector size.
        seed: seeds the JAX key and ``np_random`` until ``reset(seed=...)``
            re-seeds them.
        params: environment parameters; the default ones when None.
    """
    from esrl.registry import as_environment, make

    env = make(env) if isinstance(env, str) else as_environment(env)
    if num_envs is None:
        return GymnasiumEnv(env, seed=seed, params=params)
    if not is_int(num_envs) or num_envs < 1:
        raise ValueError(f"num_envs must be a positive int or None, got {num_envs!r}")
    return GymnasiumVectorEnv(env, int(num_envs), seed=seed, params=params)
