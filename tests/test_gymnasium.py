"""to_gymnasium: a checker-clean gymnasium Env and a same-step auto-reset VectorEnv."""

from __future__ import annotations

import re
import warnings

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gymnasium_check_env
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

import esrl
from esrl import spaces
from esrl.gymnasium import GymnasiumEnv, to_gymnasium, to_gymnasium_space


@pytest.mark.parametrize("env_id", ["gymnax/CartPole-v1", "gymnax/Pendulum-v1"])
def test_single_env_passes_gymnasium_checker(env_id):
    env = to_gymnasium(env_id)
    assert isinstance(env, gymnasium.Env)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gymnasium_check_env(env, skip_render_check=True)
    # Only advice (Pendulum's [-2, 2] action range) may remain, no failed checks.
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "symmetric and normalized" not in m], messages


def test_single_env_numpy_io_and_seeding():
    env = to_gymnasium(esrl.make("gymnax/CartPole-v1"), seed=5)
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(0)
    obs, info = env.reset(seed=3)
    assert isinstance(obs, np.ndarray) and obs.dtype == np.float32 and info == {}
    again, _ = env.reset(seed=3)
    np.testing.assert_array_equal(obs, again)
    obs, reward, terminated, truncated, info = env.step(np.int64(1))
    assert isinstance(obs, np.ndarray) and obs.shape == (4,)
    assert type(reward) is float and reward == 1.0
    assert type(terminated) is bool and type(truncated) is bool
    assert all(isinstance(v, np.ndarray) for v in info.values())
    with pytest.raises(TypeError, match="seed must be an int"):
        env.reset(seed=[1, 2])
    with pytest.raises(TypeError, match="seed must be an int"):
        env.reset(seed=True)  # a bool is not a seed (it was seed 1 before)


def test_single_env_over_autoreset_returns_the_terminal_observation():
    env = to_gymnasium(esrl.make("gymnax/CartPole-v1", autoreset=True))
    env.reset(seed=0)
    for _ in range(100):
        obs, _, terminated, truncated, _ = env.step(np.int64(1))
        if terminated or truncated:
            break
    assert terminated  # the pole fell; the observation shows it, not a fresh reset
    assert abs(obs[2]) > 0.2 or abs(obs[0]) > 2.4
    buried = esrl.Wrapper(esrl.make("gymnax/CartPole-v1", autoreset=True))
    with pytest.raises(ValueError, match="AutoReset under another wrapper"):
        to_gymnasium(buried)
    # VecEnv's hint (pass autoreset=False) names a parameter to_gymnasium lacks.
    with pytest.raises(ValueError, match="a gymnasium VectorEnv must return the fin"):
        to_gymnasium(buried, num_envs=2)


def test_vector_env_shapes_and_final_observations():
    num_envs = 8
    env = to_gymnasium("gymnax/CartPole-v1", num_envs=num_envs, seed=0)
    assert isinstance(env, gymnasium.vector.VectorEnv)
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert env.observation_space == batch_space(env.single_observation_space, num_envs)
    assert env.action_space == batch_space(env.single_action_space, num_envs)
    obs, _ = env.reset(seed=1)
    assert isinstance(obs, np.ndarray) and obs.shape == (num_envs, 4)
    env.action_space.seed(0)
    finished = 0
    for _ in range(60):
        previous = obs
        obs, reward, terminated, truncated, infos = env.step(env.action_space.sample())
        assert obs.shape == (num_envs, 4) and obs.dtype == np.float32
        assert reward.shape == (num_envs,) and terminated.dtype == np.bool_
        assert truncated.shape == (num_envs,)
        done = terminated | truncated
        if not done.any():
            assert "final_obs" not in infos
            continue
        finished += int(done.sum())
        np.testing.assert_array_equal(infos["_final_obs"], done)
        np.testing.assert_array_equal(infos["_final_info"], done)
        for i in range(num_envs):
            final = infos["final_obs"][i]
            if not done[i]:
                assert final is None
                continue
            # The episode ended away from where it started; obs is a fresh reset.
            assert final.shape == (4,) and final.dtype == np.float32
            assert abs(final[2]) > 0.2 or abs(final[0]) > 2.4
            assert np.all(np.abs(obs[i]) <= 0.05)
            assert not np.array_equal(final, previous[i])
        np.testing.assert_array_equal(infos["_discount"], ~done)
        # as gymnasium's own vector envs: a masked-out entry holds the zero default
        assert np.all(infos["discount"][done] == 0)
        assert np.all(infos["final_info"]["discount"][~done] == 0)
        np.testing.assert_array_equal(infos["final_info"]["discount"][done], 0.0)
    assert finished > 0


def test_vector_rewards_and_infos_have_the_dtypes_of_gymnasiums_vector_envs():
    ours = to_gymnasium("gymnax/CartPole-v1", num_envs=2, seed=0)
    theirs = gymnasium.vector.SyncVectorEnv(
        [lambda i=i: to_gymnasium("gymnax/CartPole-v1", seed=i) for i in range(2)],
        autoreset_mode=AutoresetMode.SAME_STEP,
    )
    ours.reset(seed=0)
    theirs.reset(seed=0)
    actions = np.zeros(2, np.int64)
    _, reward, _, _, infos = ours.step(actions)
    _, reward_theirs, _, _, infos_theirs = theirs.step(actions)
    assert reward.dtype == reward_theirs.dtype == np.float64
    assert infos["discount"].dtype == infos_theirs["discount"].dtype


def test_vector_env_rejects_bad_num_envs():
    with pytest.raises(ValueError, match="num_envs must be a positive int"):
        to_gymnasium("gymnax/CartPole-v1", num_envs=0)
    with pytest.raises(ValueError, match="num_envs must be a positive int"):
        to_gymnasium("gymnax/CartPole-v1", num_envs=True)
    # A NumPy integer (from np.prod, a config array) is an int too.
    env = to_gymnasium("gymnax/CartPole-v1", num_envs=np.int64(3))
    assert env.num_envs == 3 and type(env.num_envs) is int


def test_space_conversion():
    box = to_gymnasium_space(spaces.Box(0.0, jnp.array([1.0, 2.0]), (2,), jnp.float32))
    assert box == gymnasium.spaces.Box(
        np.zeros(2, np.float32), np.array([1, 2], np.float32), (2,), np.float32
    )
    nested = to_gymnasium_space(
        spaces.Dict({"a": spaces.Discrete(3), "b": spaces.Tuple([spaces.Discrete(2)])})
    )
    assert nested == gymnasium.spaces.Dict(
        {
            "a": gymnasium.spaces.Discrete(3),
            "b": gymnasium.spaces.Tuple([gymnasium.spaces.Discrete(2)]),
        }
    )
    with pytest.raises(TypeError, match="cannot convert"):
        to_gymnasium_space("box")
    assert isinstance(esrl.to_gymnasium("gymnax/Pendulum-v1"), GymnasiumEnv)


def test_integer_box_with_infinite_bounds_converts_to_the_dtype_limits():
    # Casting inf to int32 gave INT_MIN: (0, inf) raised, (-inf, inf) became a point.
    big = np.iinfo(np.int32)
    half = to_gymnasium_space(spaces.Box(0, jnp.inf, (2,), jnp.int32))
    assert half == gymnasium.spaces.Box(0, big.max, (2,), np.int32)
    full = to_gymnasium_space(spaces.Box(-jnp.inf, jnp.inf, (2,), jnp.int32))
    assert full == gymnasium.spaces.Box(big.min, big.max, (2,), np.int32)
    mixed = to_gymnasium_space(
        spaces.Box(0, jnp.array([5.0, jnp.inf]), (2,), jnp.int32)
    )
    np.testing.assert_array_equal(mixed.high, [5, big.max])


class Ring(esrl.Environment):
    """A position on a ring of 5 cells (a Discrete observation); never ends."""

    def reset(self, key, params=None):
        pos = jax.random.randint(key, (), 0, 5)
        return pos, pos

    def step(self, key, state, action, params=None):
        pos = (state + action) % 5
        false = jnp.zeros((), bool)
        return pos, pos, jnp.float32(pos == 0), false, false, {}

    def observation_space(self, params=None):
        return spaces.Discrete(5)

    def action_space(self, params=None):
        return spaces.Discrete(2)


def test_discrete_observations_are_numpy_ints_for_the_checker():
    env = to_gymnasium(Ring())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gymnasium_check_env(env, skip_render_check=True)
    assert not caught, [str(w.message) for w in caught]
    obs, _ = env.reset(seed=0)
    assert type(obs) is np.int64 and env.observation_space.contains(obs)


def test_seeds_beyond_32_bits_are_distinct_and_negative_ones_refused():
    # jax.random.key kept only the low 32 bits: seed 2**32 replayed seed 0, and
    # seeds from 2**63 raised OverflowError.
    env = to_gymnasium("gymnax/CartPole-v1")
    first = {seed: env.reset(seed=seed)[0] for seed in (0, 2**32, 2**64, 2**100)}
    assert len({obs.tobytes() for obs in first.values()}) == len(first)
    np.testing.assert_array_equal(env.reset(seed=2**100)[0], first[2**100])
    with pytest.raises(ValueError, match="seed must be >= 0"):
        env.reset(seed=-1)


def test_actions_of_the_wrong_shape_are_refused_by_name():
    # A (3,) action made Pendulum's obs (3,) and its state batched; CartPole failed
    # with "Cannot concatenate arrays with different numbers of dimensions".
    env = to_gymnasium("gymnax/Pendulum-v1")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action has shape \(3,\), but .* \(1,\)"):
        env.step(np.zeros(3, np.float32))
    obs, *_ = env.step(np.float32(0.5))  # a scalar still broadcasts to (1,)
    assert obs.shape == (3,)
    cartpole = to_gymnasium("gymnax/CartPole-v1")
    cartpole.reset(seed=0)
    with pytest.raises(ValueError, match=r"action has shape \(2,\), but .* \(\)"):
        cartpole.step(np.array([0, 1]))
    vec = to_gymnasium("gymnax/Pendulum-v1", num_envs=2)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match=r"action has shape \(2, 3\), but .* \(2, 1\)"):
        vec.step(np.zeros((2, 3), np.float32))
    obs, *_ = vec.step(np.zeros(2, np.float32))  # one scalar per environment
    assert obs.shape == (2, 3)


def test_discrete_actions_outside_the_space_are_refused():
    # was: 9, -1 and 2.7 reached Ring's step (2.7 as 2, -1 moved it backwards)
    env = to_gymnasium(Ring())
    env.reset(seed=0)
    space = "the action space Discrete(2, dtype=int32) takes integers in [0, 2)"
    for action, what in [(9, "9 is outside"), (-1, "-1 is outside"),
                         (2.7, "2.7 is not an integer"),
                         (np.float32(1.0), "1.0 is not an integer")]:  # fmt: skip
        with pytest.raises(ValueError, match=re.escape(f"action {what}; {space}")):
            env.step(action)
    obs, *_ = env.step(np.int64(1))  # a valid step still runs after the refusals
    assert env.observation_space.contains(obs)
    vec = to_gymnasium(Ring(), num_envs=3)
    vec.reset(seed=0)
    with pytest.raises(
        ValueError, match=re.escape(f"action [0, 2, 1] is outside; {space}")
    ):
        vec.step(np.array([0, 2, 1]))
    obs, *_ = vec.step(np.array([0, 1, 1]))
    assert vec.observation_space.contains(obs)


def test_returned_arrays_are_writable_numpy_arrays():
    # were read-only views of JAX buffers: gymnasium's ClipReward failed with
    # "assignment destination is read-only", in-place edits of an observation too
    vec = gymnasium.wrappers.vector.ClipReward(
        to_gymnasium("gymnax/CartPole-v1", num_envs=2), 0.0, 0.5
    )
    obs, _ = vec.reset(seed=0)
    for _ in range(30):
        obs, reward, terminated, truncated, infos = vec.step(np.array([0, 1]))
        if "final_obs" in infos:
            break
    np.testing.assert_array_equal(reward, [0.5, 0.5])
    arrays = [obs, reward, terminated, truncated, infos["discount"]]
    done = np.flatnonzero(infos["_final_obs"])[0]
    arrays += [infos["final_info"]["discount"], infos["final_obs"][done]]
    assert all(a.flags.writeable for a in arrays)
    env = to_gymnasium("gymnax/CartPole-v1")
    obs, _ = env.reset(seed=0)
    next_obs, _, _, _, info = env.step(np.int64(0))
    assert obs.flags.writeable and next_obs.flags.writeable
    assert info["discount"].flags.writeable


@pytest.mark.parametrize("num_envs", [None, 2])
def test_a_numpy_integer_seed_seeds_like_the_int(num_envs):
    # was gymnasium's "Seed must be a python integer" after the JAX key was re-seeded
    env = to_gymnasium("gymnax/CartPole-v1", num_envs=num_envs)
    obs, _ = env.reset(seed=np.int64(3))
    draw = env.np_random.integers(1000)
    again, _ = env.reset(seed=3)
    np.testing.assert_array_equal(obs, again)
    assert env.np_random.integers(1000) == draw


@pytest.mark.parametrize("num_envs", [None, 2])
def test_the_constructor_seed_seeds_np_random_as_reset_would(num_envs):
    # np_random was seeded at random: StickyAction(to_gymnasium(id, seed=7)) then
    # reset() replayed differently on every run, although the JAX side was seeded
    env = to_gymnasium("gymnax/CartPole-v1", num_envs=num_envs, seed=7)
    draw = env.np_random.integers(1000)
    env.reset(seed=7)
    assert env.np_random.integers(1000) == draw
    if num_envs is None:
        runs = []
        for _ in range(2):
            sticky = gymnasium.wrappers.StickyAction(
                to_gymnasium("gymnax/CartPole-v1", seed=7), 0.5
            )
            sticky.reset()
            runs.append([sticky.step(t % 2)[0] for t in range(8)])
        np.testing.assert_array_equal(runs[0], runs[1])


def test_render_and_unreadable_actions_are_refused_by_name():
    # render raised a bare NotImplementedError; "a" or None as a Box action failed
    # inside jnp.asarray; the Discrete action "1" was reported as the number 1
    env = to_gymnasium("gymnax/Pendulum-v1")
    with pytest.raises(NotImplementedError, match="Pendulum-v1 does not render"):
        env.render()
    env.reset(seed=0)
    for action in ["a", None]:
        message = (
            f"action {action!r} is not an array of numbers; the action space is Box"
        )
        with pytest.raises(ValueError, match=re.escape(message)):
            env.step(action)
    ring = to_gymnasium(Ring())
    ring.reset(seed=0)
    with pytest.raises(ValueError, match=re.escape("action '1' is not an integer")):
        ring.step("1")


@pytest.mark.parametrize("num_envs", [None, 3])
def test_an_exported_env_pickles_and_continues_where_it_was(num_envs):
    # was: "Can't pickle local object '_cpp_pjit.<locals>.cache_miss'"
    import pickle

    env = esrl.to_gymnasium("gymnax/CartPole-v1", num_envs=num_envs, seed=5)
    action = np.ones(num_envs, int) if num_envs else 1
    env.reset()
    env.step(action)
    clone = pickle.loads(pickle.dumps(env))
    for _ in range(3):
        np.testing.assert_array_equal(env.step(action)[0], clone.step(action)[0])


def test_stepping_after_the_episode_ended_warns_once_until_reset():
    # as gymnasium's own environments do: the steps after an ended episode are undefined
    env = to_gymnasium(esrl.make("gymnax/CartPole-v1"))
    env.reset(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning while the episode runs
        terminated = truncated = False
        while not (terminated or truncated):
            _, _, terminated, truncated, _ = env.step(np.int64(1))
    with pytest.warns(
        UserWarning, match=r"step\(\) after the episode ended.*reset\(\)"
    ):
        env.step(np.int64(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env.step(np.int64(1))  # once per episode
        env.reset(seed=1)
        env.step(np.int64(1))
