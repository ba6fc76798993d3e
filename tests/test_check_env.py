"""check_env: good environments pass, each kind of breakage gets a message naming it."""

from __future__ import annotations

import re

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import esrl
from esrl import spaces
from esrl.checks import EnvCheckError, check_env, sample_space
from esrl.env import Environment


class Walk(Environment):
    """A 1-D random walk; each ``break_*`` flag breaks one rule of the protocol."""

    def __init__(self, size: int = 4, **breaks):
        self.size = size
        self.breaks = breaks

    def reset(self, key, params=None):
        x = jax.random.uniform(key, (self.size,), minval=-1.0, maxval=1.0)
        if self.breaks.get("reset_obs_only"):
            return self._obs(x)
        if self.breaks.get("reset_three"):
            return self._obs(x), x, {}
        return self._obs(x), x

    def step(self, key, state, action, params=None):
        noise = 0.01 * jax.random.normal(key, state.shape)
        if self.breaks.get("nondeterministic"):
            # Host-side NumPy randomness: invisible to JAX keys, so not reproducible.
            noise = noise + jax.pure_callback(
                lambda x: np.random.rand(*x.shape).astype(np.float32),
                jax.ShapeDtypeStruct(state.shape, jnp.float32),
                state,
                vmap_method="sequential",
            )
        if self.breaks.get("rounding"):
            # Host-side jitter of a few float32 ulps, like a GPU's rounding differences.
            noise = noise + jax.pure_callback(
                lambda x: (1e-7 * np.random.rand(*x.shape)).astype(np.float32),
                jax.ShapeDtypeStruct(state.shape, jnp.float32),
                state,
                vmap_method="sequential",
            )
        x = jnp.clip(state + 0.1 * (2 * action - 1) + noise, -1.0, 1.0)
        if self.breaks.get("grow_state"):
            x = jnp.concatenate([x, x])
        reward = jnp.sum(x)
        if self.breaks.get("vector_reward"):
            reward = x
        terminated = jnp.abs(x[0]) > 0.99
        if self.breaks.get("int_terminated"):
            terminated = terminated.astype(jnp.int32)
        truncated = jnp.zeros((), bool)
        if self.breaks.get("five_tuple"):
            return self._obs(x), x, reward, terminated, {}
        return self._obs(x), x, reward, terminated, truncated, {"x0": x[0]}

    def _obs(self, x):
        if self.breaks.get("short_obs"):
            return x[:-1]
        if self.breaks.get("out_of_bounds"):
            return x.at[2].set(5.0)
        if self.breaks.get("raises"):
            raise RuntimeError("boom in _obs")
        return x

    def observation_space(self, params=None):
        return spaces.Box(-1.0, 1.0, (self.size,), jnp.float32)

    def action_space(self, params=None):
        return spaces.Discrete(2)

    @property
    def name(self) -> str:
        return "Walk"


@pytest.mark.parametrize("env_id", ["gymnax/CartPole-v1", "gymnax/Pendulum-v1"])
def test_gymnax_envs_pass(env_id):
    check_env(esrl.make(env_id))


def test_valid_custom_env_passes_and_raw_gymnax_object_is_accepted():
    check_env(Walk())
    raw, params = gymnax.make("CartPole-v1")
    check_env(raw, params=params)
    assert esrl.check_env is check_env


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (
            "short_obs",
            "Walk.reset: observation has shape (3,), but observation_space says (4,)",
        ),
        (
            "out_of_bounds",
            "Walk.reset: observation[2] = 5.0 is above observation_space.high[2] = 1.0",
        ),
        (
            "vector_reward",
            "Walk.step: reward has shape (4,), but must be a scalar (shape ())",
        ),
        ("int_terminated", "Walk.step: terminated has dtype int32, but must be bool"),
        ("grow_state", "Walk.step: the state it returns differs in structure"),
        # LegacyEnv, which it used to advise, needs step_env and reset_env
        ("five_tuple", "API name the methods step_env and reset_env (with a params"),
        ("reset_obs_only", "Walk.reset returned a single array; it must return (obs"),
        ("reset_three", "Walk.reset returned 3 values; it must return (obs, state)"),
        ("raises", "Walk.reset failed under jax.jit/vmap: RuntimeError: boom in _obs"),
        (
            "nondeterministic",
            "Walk.step: observation differs between two calls with the same key",
        ),
    ],
)
def test_broken_env_is_rejected_with_a_message_naming_it(flag, message):
    with pytest.raises(EnvCheckError) as info:
        check_env(Walk(**{flag: True}))
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_float_rounding_differences_pass():
    # was: Brax ant failed check_env on an H100 (transitions not bit-identical)
    check_env(Walk(rounding=True), num_steps=200)


def test_several_problems_are_reported_in_one_error():
    with pytest.raises(EnvCheckError) as info:
        check_env(Walk(vector_reward=True, int_terminated=True))
    text = str(info.value)
    assert text.startswith("Walk failed check_env with 2 problems:")
    assert "reward has shape (4,)" in text and "terminated has dtype int32" in text


def test_observation_dtype_mismatch_is_reported():
    class IntWalk(Walk):
        def observation_space(self, params=None):
            return spaces.Box(-1, 1, (4,), jnp.int32)

    with pytest.raises(
        EnvCheckError, match="has dtype float32, but observation_space says int32"
    ):
        check_env(IntWalk())


def test_non_environment_is_rejected():
    with pytest.raises(EnvCheckError, match="object is not an environment"):
        check_env(object())


def test_bad_space_is_rejected():
    class NoSpace(Walk):
        def action_space(self, params=None):
            return (0, 1)

    with pytest.raises(
        EnvCheckError, match=r"Walk.action_space returned \(0, 1\): a builtins.tuple"
    ):
        check_env(NoSpace())


def test_gymnasium_spaces_are_refused_by_name():
    # A gymnasium observation space passed (to_gymnasium then failed with "cannot
    # convert Box(...) to a gymnasium space"); an action space failed in sample with
    # "The expected type of the sample mask is np.ndarray".
    import gymnasium

    class Gym(Walk):
        def observation_space(self, params=None):
            box = gymnasium.spaces.Box(-1.0, 1.0, (4,), np.float32)
            return spaces.Dict({"x": box})

        def action_space(self, params=None):
            return gymnasium.spaces.Discrete(2)

    with pytest.raises(EnvCheckError) as info:
        check_env(Gym())
    text = str(info.value)
    assert "Walk.observation_space returned Dict({'x': Box(" in text
    assert "holding Box(-1.0, 1.0, (4,), float32): a gymnasium.spaces.box.Box" in text
    assert "Walk.action_space returned Discrete(2): a gymnasium.spaces.discrete" in text
    assert "return an esrl.spaces Box, Discrete, Dict or Tuple" in text


def test_mapping_observations_for_a_dict_space_pass():
    from flax.core import FrozenDict

    class Frozen(Walk):
        def _obs(self, x):
            return FrozenDict({"x": x})

        def observation_space(self, params=None):
            return spaces.Dict({"x": super().observation_space(params)})

    check_env(Frozen())  # a Mapping is a dict observation; its keys were not read


def test_a_broken_wrapper_is_named_with_the_env_it_wraps():
    # A Wrapper takes its env's name: the message blamed Walk.step.
    class Doubled(esrl.Wrapper):
        def step(self, key, state, action, params=None):
            obs, state, reward, *rest = self.env.step(key, state, action, params)
            return (obs, state, jnp.stack([reward, reward]), *rest)

    with pytest.raises(EnvCheckError) as info:
        check_env(Doubled(esrl.AutoReset(Walk())))
    assert str(info.value).startswith("Doubled(AutoReset(Walk)).step: reward has shape")


@pytest.mark.parametrize(
    ("space", "message"),
    [  # was "observation has keys tuple" and "observation has a dict"
        ("dict", "observation is a tuple, not a dict, but observation_space says keys"),
        ("tuple", "observation is a dict, but observation_space says a tuple of 2"),
        (
            "tuple3",
            "observation is a tuple of 2, but observation_space says a tuple of 3",
        ),
    ],
)
def test_observation_structure_mismatch_says_what_it_got(space, message):
    box = spaces.Box(-1.0, 1.0, (4,), jnp.float32)

    class Mismatch(Walk):
        def _obs(self, x):
            return {"x": x, "y": x} if space == "tuple" else (x, x)

        def observation_space(self, params=None):
            if space == "dict":
                return spaces.Dict({"x": box, "y": box})
            return spaces.Tuple([box] * (3 if space == "tuple3" else 2))

    with pytest.raises(EnvCheckError, match=f"Walk.reset: {message}"):
        check_env(Mismatch())


@pytest.mark.parametrize(
    ("label", "box", "message"),
    [  # check_env raised numpy's own TypeError / ValueError, naming nothing
        (
            "observation_space",
            spaces.Box(-1.0, 1.0, 4),
            "Walk.observation_space: Box shape 4 must be a tuple of ints",
        ),
        (
            "observation_space",
            spaces.Box(jnp.zeros(3), 1.0, (4,)),
            (
                "Walk.observation_space: Box low has shape (3,), which does not "
                "broadcast to the Box shape (4,)"
            ),
        ),
        (
            "action_space",
            spaces.Box(-1.0, 1.0, 2),
            "Walk.action_space: Box shape 2 must be a tuple of ints",
        ),
    ],
)
def test_a_box_with_a_bad_shape_or_bounds_is_named(label, box, message):
    class BadBox(Walk):
        pass

    setattr(BadBox, label, lambda self, params=None: box)
    with pytest.raises(EnvCheckError) as info:
        check_env(BadBox())
    assert message in str(info.value)


class Aim(Environment):
    """Reward -(a - 3)^2 for a Box action with the given (possibly infinite) bounds;
    the reward is NaN for an action that is not finite, which no policy sends."""

    def __init__(self, low: float, high: float):
        self.low, self.high = low, high

    def reset(self, key, params=None):
        return jnp.zeros(2), jnp.zeros((), jnp.int32)

    def step(self, key, state, action, params=None):
        ok = jnp.all(jnp.isfinite(action))
        reward = jnp.where(ok, -jnp.sum((action - 3.0) ** 2), jnp.nan)
        false = jnp.zeros((), bool)
        return jnp.zeros(2), state + 1, reward, false, false, {"action": action}

    def observation_space(self, params=None):
        return spaces.Box(0.0, 0.0, (2,), jnp.float32)

    def action_space(self, params=None):
        return spaces.Box(self.low, self.high, (2,), jnp.float32)


@pytest.mark.parametrize(
    ("low", "high"), [(-np.inf, np.inf), (0.0, np.inf), (-np.inf, -1.0), (-1.0, 1.0)]
)
def test_unbounded_action_boxes_are_sampled_finite_and_inside(low, high):
    # was: "Aim.step: reward is NaN" -- check_env drew actions with jax.random.uniform
    # between infinite bounds (NaN or inf), blaming the environment for its own sample
    assert check_env(Aim(low, high)) is None
    space = Aim(low, high).action_space()
    sample = jax.jit(jax.vmap(lambda key: sample_space(key, space)))
    actions = np.asarray(sample(jax.random.split(jax.random.key(0), 1000)))
    assert actions.shape == (1000, 2) and actions.dtype == np.float32
    assert np.isfinite(actions).all()
    assert (actions >= low).all() and (actions <= high).all()
    assert actions.std() > 0.1  # spread out, not one point


@pytest.mark.filterwarnings("ignore:Explicitly requested dtype float64")
def test_a_float64_space_matches_the_float32_jax_makes_without_x64():
    # was: "observation has dtype float32, but observation_space says float64", for
    # an env that asks for float64 (jnp.zeros(4, jnp.float64)) and gets float32, as
    # every JAX array without x64 -- nothing in the env to fix
    class Float64Walk(Walk):
        def reset(self, key, params=None):
            obs, state = super().reset(key, params)
            return obs.astype(jnp.float64), state

        def step(self, key, state, action, params=None):
            obs, *rest = super().step(key, state, action, params)
            return obs.astype(jnp.float64), *rest

        def observation_space(self, params=None):
            return spaces.Box(-1.0, 1.0, (4,), jnp.float64)

    assert check_env(Float64Walk()) is None
    with jax.enable_x64(True):
        assert check_env(Float64Walk()) is None

        class Float32Walk(Float64Walk):  # float32 under x64 is a real mismatch
            def reset(self, key, params=None):
                obs, state = super().reset(key, params)
                return obs.astype(jnp.float32), state

            def step(self, key, state, action, params=None):
                obs, *rest = super().step(key, state, action, params)
                return obs.astype(jnp.float32), *rest

        with pytest.raises(
            EnvCheckError, match="has dtype float32, but observation_space says float64"
        ):
            check_env(Float32Walk())


def test_a_method_left_out_of_an_esrl_environment_is_named():
    # was: "Habit.reset failed under jax.jit/vmap: NotImplementedError: " (no more)
    class Habit(Environment):  # gymnax's method names on an esrl.Environment
        def reset_env(self, key, params):
            return jnp.zeros(2), jnp.zeros(())

        def step_env(self, key, state, action, params):
            return jnp.zeros(2), state, jnp.float32(0), jnp.bool_(False), {}

        def observation_space(self, params=None):
            return spaces.Box(0.0, 1.0, (2,), jnp.float32)

        def action_space(self, params=None):
            return spaces.Discrete(2)

    message = (
        "Habit.reset failed under jax.jit/vmap: NotImplementedError: Habit subclasses "
        "esrl.Environment but does not implement reset(key, params) -> (obs, state); "
        "it has reset_env: for the gymnax API (reset_env, step_env) subclass "
        "gymnax.environments.environment.Environment instead (esrl adapts it), or "
        "rename them reset and step with esrl's signatures"
    )
    with pytest.raises(EnvCheckError, match=re.escape(message)):
        check_env(Habit())

    class NoSpaces(Environment):
        def reset(self, key, params=None):
            return jnp.zeros(2), jnp.zeros(())

    message = (
        "NoSpaces.observation_space raised: NotImplementedError: NoSpaces subclasses "
        "esrl.Environment but does not implement observation_space(params) -> "
        "esrl.spaces space"
    )
    with pytest.raises(EnvCheckError, match=re.escape(message) + "$"):
        check_env(NoSpaces())


class Counted(Walk):
    """A walk whose state has a step counter reset makes weak-typed (as Craftax's)."""

    def reset(self, key, params=None):
        obs, x = super().reset(key, params)
        return obs, (x, 0)  # a Python int: weak-typed once traced

    def step(self, key, state, action, params=None):
        obs, x, reward, terminated, truncated, info = super().step(
            key, state[0], action, params
        )
        return obs, (x, state[1] + jnp.int32(1)), reward, terminated, truncated, info


def test_step_compiles_once_when_reset_returns_a_weak_typed_state(monkeypatch):
    # was: compiled twice (weak-typed counter after reset, strong after step): Craftax
    # spent ~7 s more in check_env
    jitted, real_jit = [], jax.jit

    def recording_jit(fun, **kwargs):
        jitted.append(real_jit(fun, **kwargs))
        return jitted[-1]

    monkeypatch.setattr("esrl.checks.jax.jit", recording_jit)
    check_env(Counted(), num_steps=3)
    monkeypatch.undo()
    assert len(jitted) == 3  # reset, step, sample
    assert [f._cache_size() for f in jitted] == [1, 1, 1]
