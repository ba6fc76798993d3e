"""Population rollout: exact agreement with a naive per-episode loop, masking, keys."""

from __future__ import annotations

import functools
import re

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from esrl.agents.eggroll import EggrollConfig
from memory_env import MemoryEnv

import esrl
import esrl.nn
from esrl import spaces
from esrl.normalize import init_obs_stats, normalize_obs, update_obs_stats
from esrl.policy import (
    PolicyOutput,
    PolicySpec,
    clip_action,
    greedy_action,
    make_policy,
)
from esrl.rollout import RolloutConfig, evaluate_population


def _setup(env, kind="mlp", hidden=8, population=6):
    policy = make_policy(PolicySpec(kind=kind, hidden=hidden), env.action_space())
    key = jax.random.PRNGKey(1)
    obs, _ = env.reset(key)
    params = jax.jit(policy.init)(key, policy.initial_carry(), obs)["params"]
    es = EggrollConfig(population=population, sigma=0.5).strategy()
    state = es.init(key, params)
    return policy, params, jax.jit(es.ask)(state)


def _member(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


@functools.cache
def _jitted_step(env, policy, normalize):
    """One policy+env step, jitted once per (env, policy)."""

    def step(params, pert, carry, obs, state, key, stats):
        env_key, _ = jax.random.split(key)
        x = normalize_obs(stats, obs) if normalize else obs
        carry, out = policy.apply({"params": params, "perturb": pert}, carry, x)
        action = greedy_action(out, env.action_space())
        obs, state, reward, term, trunc, _ = env.step(env_key, state, action)
        return carry, obs, state, reward, term | trunc

    return jax.jit(step)


def _naive(key, env, policy, params, pert, member, episode, config, stats=None):
    """One episode by hand: a Python loop that stops when the episode ends."""
    reset_key, run_key = jax.random.split(
        jax.random.fold_in(jax.random.fold_in(key, member), episode)
    )
    obs, state = env.reset(reset_key)
    carry, total, seen = policy.initial_carry(), 0.0, []
    step = _jitted_step(env, policy, stats is not None)
    for t in range(config.horizon):
        seen.append(np.asarray(obs))
        carry, obs, state, reward, done = step(
            params, pert, carry, obs, state, jax.random.fold_in(run_key, t), stats
        )
        total += float(reward)
        if done:
            break
    return total, t + 1, seen


CONFIG = RolloutConfig(horizon=40, episodes=2, chunk=7)


@pytest.fixture(scope="module")
def cartpole():
    return esrl.make("gymnax/CartPole-v1")


@pytest.fixture(scope="module")
def setup(cartpole):
    return _setup(cartpole)


def test_matches_naive_loop(cartpole, setup):
    policy, params, perts = setup
    config = CONFIG
    key = jax.random.PRNGKey(7)
    res = evaluate_population(key, cartpole, None, policy, params, perts, config)
    assert res.returns.shape == (6,) and res.episode_lengths.shape == (6, 2)
    for i in (0, 3, 5):
        pert = _member(perts, i)
        for e in range(2):
            ret, length, _ = _naive(key, cartpole, policy, params, pert, i, e, config)
            assert res.episode_returns[i, e] == pytest.approx(ret)
            assert int(res.episode_lengths[i, e]) == length
    assert np.allclose(res.returns, res.episode_returns.mean(1))
    assert int(res.episode_lengths.max()) <= 40


def test_member_results_do_not_depend_on_the_batch(cartpole, setup):
    policy, params, perts = setup
    config = CONFIG
    key = jax.random.PRNGKey(3)
    full = evaluate_population(key, cartpole, None, policy, params, perts, config)
    ids = jnp.array([4, 1])
    part = evaluate_population(
        key,
        cartpole,
        None,
        policy,
        params,
        jax.tree.map(lambda x: x[ids], perts),
        config,
        member_ids=ids,
    )
    np.testing.assert_array_equal(part.returns, full.returns[ids])


def test_pair_noise_rolls_out_exactly_as_its_members(cartpole):
    policy, params, _ = _setup(cartpole)
    es = EggrollConfig(population=6, sigma=0.5).strategy()
    state = es.init(jax.random.PRNGKey(1), params)
    compact = es.ask(state, compact=True)
    key = jax.random.PRNGKey(5)
    run = functools.partial(
        evaluate_population, key, cartpole, None, policy, params, config=CONFIG
    )
    pairs, members = run(compact), run(compact.members())
    np.testing.assert_array_equal(pairs.episode_returns, members.episode_returns)
    np.testing.assert_array_equal(pairs.episode_lengths, members.episode_lengths)
    assert len(set(np.asarray(pairs.returns).tolist())) > 1  # members differ


def test_common_random_numbers(cartpole, setup):
    policy, params, _ = setup
    key = jax.random.PRNGKey(0)
    same = evaluate_population(
        key,
        cartpole,
        None,
        policy,
        params,
        None,
        RolloutConfig(horizon=200, common_random_numbers=True),
        num_members=8,
    )
    assert np.all(same.episode_lengths == same.episode_lengths[0])
    diff = evaluate_population(
        key,
        cartpole,
        None,
        policy,
        params,
        None,
        RolloutConfig(horizon=200),
        num_members=8,
    )
    assert len(np.unique(np.asarray(diff.episode_lengths))) > 1


def test_memory_env_info_and_recurrent_carry():
    env = MemoryEnv(delay=3)
    policy, params, perts = _setup(env, "gru")
    config = RolloutConfig(horizon=10, episodes=4, info_keys=("correct", "absent"))
    key = jax.random.PRNGKey(5)
    res = evaluate_population(key, env, None, policy, params, perts, config)
    assert np.all(res.episode_lengths == 4)
    assert set(res.info) == {"correct"}
    np.testing.assert_allclose(res.info["correct"], res.returns)
    pert = _member(perts, 2)
    for e in range(4):
        ret, _, _ = _naive(key, env, policy, params, pert, 2, e, config)
        assert float(res.episode_returns[2, e]) == ret


def test_obs_normalization_matches_numpy(cartpole, setup):
    policy, params, perts = setup
    stats = init_obs_stats((4,))
    stats = stats.replace(
        count=jnp.float32(10.0), mean=jnp.ones(4), m2=jnp.full(4, 20.0)
    )
    config = RolloutConfig(horizon=30, normalize_obs=True)
    key = jax.random.PRNGKey(2)
    res = evaluate_population(
        key, cartpole, None, policy, params, perts, config, obs_stats=stats
    )
    seen, returns = [], []
    for i in range(6):
        pert = _member(perts, i)
        ret, _, obs = _naive(key, cartpole, policy, params, pert, i, 0, config, stats)
        seen += obs
        returns.append(ret)
    np.testing.assert_allclose(res.returns, returns)
    new = update_obs_stats(stats, res.moments)
    x = np.stack(seen)
    prior = np.ones((10, 4)) + np.sqrt(2.0) * np.array([1, -1] * 5)[:, None]
    all_obs = np.concatenate([prior, x])
    assert float(new.count) == len(all_obs)
    np.testing.assert_allclose(new.mean, all_obs.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new.m2 / new.count, all_obs.var(0), rtol=1e-4, atol=1e-6)


def test_nonfinite_members_are_left_out_of_the_statistics(cartpole, setup):
    policy, params, perts = setup
    config = RolloutConfig(horizon=30, normalize_obs=True)
    res = evaluate_population(
        jax.random.PRNGKey(0), cartpole, None, policy, params, perts, config
    )
    stats = init_obs_stats((4,))
    bad = res.moments._replace(sumsq=res.moments.sumsq.at[1:].set(jnp.nan))
    only_first = jax.tree.map(lambda x: x[:1], res.moments)
    a = update_obs_stats(stats, bad)
    b = update_obs_stats(stats, only_first)
    np.testing.assert_allclose(a.mean, b.mean)
    assert np.all(np.isfinite(a.m2))


def test_box_actions_with_traced_env_params():
    env = esrl.make("gymnax/Pendulum-v1")
    policy, params, perts = _setup(env, population=2)
    config = RolloutConfig(horizon=20)
    key = jax.random.PRNGKey(4)
    res = evaluate_population(
        key, env, env.default_params, policy, params, perts, config
    )
    for i in range(2):
        ret, length, _ = _naive(
            key, env, policy, params, _member(perts, i), i, 0, config
        )
        assert res.returns[i] == pytest.approx(ret, rel=1e-5) and length == 20


@pytest.mark.parametrize("clip", [0.0, -1.0, float("nan")])
def test_an_obs_clip_that_is_not_positive_is_a_clear_error(clip):
    # clip 0 turned every normalised observation to 0, clip -1 every one to -1
    with pytest.raises(ValueError, match="obs_clip must be > 0"):
        RolloutConfig(normalize_obs=True, obs_clip=clip)
    RolloutConfig(normalize_obs=True, obs_clip=float("inf"))  # no clipping


class Echo(esrl.Environment):
    """Observes the action it was sent (shape (2,)); the info keeps it as received."""

    def __init__(self, action_space):
        self.space = action_space

    def reset(self, key, params=None):
        return jnp.zeros(2, jnp.float32), jnp.zeros((), jnp.int32)

    def step(self, key, state, action, params=None):
        obs = action.astype(jnp.float32)
        false = jnp.zeros((), bool)
        return obs, state + 1, jnp.sum(obs), false, state >= 2, {"action": action}

    def observation_space(self, params=None):
        return spaces.Box(-9.0, 9.0, (2,), jnp.float32)

    def action_space(self, params=None):
        return self.space


def _echo_rollout(space, head_bias):
    """A greedy rollout whose policy's mean action is ``head_bias``; the info."""
    env = Echo(space)
    policy = make_policy(PolicySpec(hidden=4), space)
    params = policy.init(jax.random.key(0), (), jnp.zeros(2))["params"]
    params["head"] = {"kernel": jnp.zeros_like(params["head"]["kernel"]),
                      "bias": jnp.asarray(head_bias, params["head"]["bias"].dtype)}  # fmt: skip
    config = RolloutConfig(horizon=3, info_keys=("action",))
    return evaluate_population(
        jax.random.key(1), env, None, policy, params, None, config, num_members=1
    )


def test_a_box_action_reaches_the_env_in_the_box_dtype():
    # was: an int32 Box got the float mean [1.7, 4.0] (and the rollout failed: "scan
    # body function carry input and carry output must have equal types")
    result = _echo_rollout(spaces.Box(0, 4, (2,), jnp.int32), [1.7, 9.0])
    assert result.info["action"].tolist() == [[2.0, 4.0]]  # rounded, then clipped
    assert result.returns.tolist() == [18.0]
    box = spaces.Box(-1.0, 1.0, (2,), jnp.float32)
    # was: under x64 the float64 policy sent float64 actions to a float32 env, and
    # the rollout failed the same way (PPO's too: it clips with the same function)
    with jax.enable_x64(True):
        result = _echo_rollout(box, [0.25, 3.0])
        assert result.returns.tolist() == [3 * 1.25]
        assert clip_action(jnp.array([0.5, 3.0]), box).dtype == jnp.float32


class Spike(Echo):
    """Reward 2**25 on the first step, then 1: float32 sums lose the ones."""

    def step(self, key, state, action, params=None):
        obs, state2, _, term, trunc, info = super().step(key, state, action, params)
        return obs, state2, jnp.where(state == 0, 2.0**25, 1.0), term, trunc, info


def test_returns_are_summed_in_the_default_float_dtype():
    box = spaces.Box(-1.0, 1.0, (2,), jnp.float32)
    policy = make_policy(PolicySpec(hidden=4), box)
    config = RolloutConfig(horizon=3, info_keys=("action",))
    for x64, dtype, total in [
        (False, jnp.float32, 2.0**25),
        (True, jnp.float64, 2.0**25 + 2),
    ]:
        with jax.enable_x64(x64):
            params = policy.init(jax.random.key(0), (), jnp.zeros(2))["params"]
            result = evaluate_population(
                jax.random.key(1), Spike(box), None, policy, params, None, config,
                num_members=1,
            )  # fmt: skip
            # was: float32 under x64 too, 2**25 + 2 summed to 2**25
            assert result.returns.dtype == result.info["action"].dtype == dtype
            assert result.returns.tolist() == [total]


def test_a_dict_observation_is_a_clear_error_for_a_policy():
    # was: "ravel requires ndarray or scalar arguments, got <class 'dict'>"
    policy = make_policy(PolicySpec(hidden=4), spaces.Discrete(2))
    obs = {"a": jnp.zeros(2), "b": jnp.zeros(1)}
    message = (
        "policies take one array observation, got a dict with keys ['a', 'b']; "
        "flatten it into one array with an esrl.Wrapper"
    )
    with pytest.raises(TypeError, match=re.escape(message)):
        policy.init(jax.random.key(0), (), obs)


def test_a_discrete_observation_is_one_hot_encoded():
    # was: the index reached the policy as one number (FrozenLake's cell 7 read as
    # "more" than cell 3)
    policy = make_policy(
        PolicySpec(hidden=4, num_layers=1), spaces.Discrete(2),
        observation_space=spaces.Discrete(5),
    )  # fmt: skip
    params = policy.init(jax.random.key(0), (), jnp.asarray(3))["params"]
    layer = params["actor_0"]
    assert layer["kernel"].shape == (5, 4)
    _, out = policy.apply({"params": params}, (), jnp.asarray(3))
    features = jnp.tanh(layer["kernel"][3] + layer["bias"])
    head = params["head"]
    np.testing.assert_allclose(out.logits, features @ head["kernel"] + head["bias"],
                               rtol=1e-6)  # fmt: skip
    with pytest.raises(ValueError, match="normalisation does not apply to a Discrete"):
        make_policy(PolicySpec(), spaces.Discrete(2), False, spaces.Discrete(5), True)


def test_an_autoreset_env_is_rolled_out_without_a_reset_per_step():
    # was: esrl.make(id, autoreset=True) handed to a rollout reset every live episode
    # at every step (a Craftax reset costs ~6 ms); done-masking never needs it
    resets = []

    class Counted(MemoryEnv):
        def reset(self, key, params=None):
            obs, state = super().reset(key, params)
            # called once per batch element: the observation is batched
            jax.debug.callback(lambda o: resets.append(1), obs)
            return obs, state

    env = Counted(delay=4)
    policy, params, perts = _setup(env, population=2)
    resets.clear()  # _setup's own reset
    config = RolloutConfig(horizon=20, episodes=3)
    plain = evaluate_population(
        jax.random.key(3), env, None, policy, params, perts, config
    )
    jax.block_until_ready(plain)
    assert len(resets) == 2 * 3  # one per episode
    resets.clear()
    wrapped = esrl.AutoReset(esrl.AutoReset(env))
    result = evaluate_population(
        jax.random.key(3), wrapped, None, policy, params, perts, config
    )
    jax.block_until_ready(result)
    assert len(resets) == 2 * 3
    np.testing.assert_array_equal(result.episode_returns, plain.episode_returns)
    np.testing.assert_array_equal(result.episode_lengths, [[5, 5, 5]] * 2)


class _FlaxHead(flax.linen.Module):
    """An esrl.nn torso under flax's own Dense head, which reads no perturbation."""

    @flax.linen.compact
    def __call__(self, carry, obs):
        h = jnp.tanh(esrl.nn.Dense(8, name="torso")(obs))
        logits = flax.linen.Dense(2, name="head")(h)
        return carry, PolicyOutput(logits, jnp.zeros(2), jnp.zeros(()))

    def initial_carry(self):
        return ()


@pytest.mark.parametrize("compact", [True, False])
def test_a_layer_that_reads_no_perturbation_is_a_clear_error(cartpole, compact):
    # was: flax's Dense ignores the "perturb" collection, so its parameters got no
    # noise in the rollout while tell moved them by the noise alone (a random walk)
    policy, key = _FlaxHead(), jax.random.key(0)
    obs, _ = cartpole.reset(key)
    params = policy.init(key, (), obs)["params"]
    config = RolloutConfig(horizon=5)

    def rollout(exclude):
        es = EggrollConfig(population=4, exclude=exclude).strategy()
        perts = es.ask(es.init(key, params), compact=compact)
        return evaluate_population(key, cartpole, None, policy, params, perts, config)

    message = (
        "the policy never reads the perturbation of head/bias, head/kernel: layers "
        "not from esrl.nn (flax.linen.Dense, say) ignore it, and ES would move their "
        "parameters by noise alone; build them from esrl.nn layers, or leave them "
        "unperturbed and untrained with exclude=('head',)"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        rollout(())
    assert np.isfinite(rollout(("head",)).returns).all()


class _ScanOnlyParams(flax.linen.Module):
    """An esrl.nn cell under nn.scan that lifts "params" but not "perturb"."""

    @flax.linen.compact
    def __call__(self, carry, obs):
        scan = flax.linen.scan(
            esrl.nn.GRUCell, variable_broadcast="params", split_rngs={"params": False}
        )
        h, _ = scan(3, name="cell")(jnp.zeros(3), obs[:, None])
        return carry, PolicyOutput(esrl.nn.Dense(2, name="head")(h), jnp.zeros(2), 0.0)

    def initial_carry(self):
        return ()


def test_an_unlifted_perturb_collection_is_a_clear_error(cartpole):
    # the message blamed only layers not from esrl.nn; these are esrl.nn's own
    policy, key = _ScanOnlyParams(), jax.random.key(0)
    obs, _ = cartpole.reset(key)
    params = policy.init(key, (), obs)["params"]
    es = EggrollConfig(population=2).strategy()
    perts = es.ask(es.init(key, params), compact=True)
    message = "never reads the perturbation of cell/candidate_bias, cell/input/bias"
    with pytest.raises(ValueError, match=message) as error:
        evaluate_population(key, cartpole, None, policy, params, perts)
    assert "lift the 'perturb' collection as 'params' is" in str(error.value)
