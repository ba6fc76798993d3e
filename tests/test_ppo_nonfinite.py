"""PPO and non-finite data: one environment's NaN never reaches the parameters."""

from __future__ import annotations

import dataclasses
import sys
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from esrl.agents.ppo import PPO, Learner, PPOConfig

from esrl.gae import Batch, gae, ppo_loss
from esrl.policy import PolicyOutput, PolicySpec

sys.path.insert(0, str(Path(__file__).parent))
from memory_env import MemoryEnv
from test_ppo import ContinuousBandit, gae_loop


class Poisoned:
    """A `VecEnv` whose environment ``index`` returns a NaN reward or observation
    (``what``) on every ``every``-th step (its own state stays sound)."""

    def __init__(self, vec, what: str, index: int = 1, every: int = 4):
        self.vec, self.what, self.index, self.every = vec, what, index, every

    def reset(self, key, params=None):
        obs, state = self.vec.reset(key, params)
        return obs, (state, jnp.zeros((), jnp.int32))

    def step(self, key, state, action, params=None):
        inner, t = state
        obs, inner, reward, term, trunc, info = self.vec.step(
            key, inner, action, params
        )
        hit = jnp.arange(self.vec.num_envs) == self.index
        hit = hit & (t % self.every == self.every - 1)
        if self.what == "reward":
            reward = jnp.where(hit, jnp.nan, reward)
        else:
            rows = hit.reshape(-1, *(1,) * (obs.ndim - 1))
            obs = jnp.where(rows, jnp.nan, obs)
            info = {**info, "final_obs": jnp.where(rows, jnp.nan, info["final_obs"])}
        return obs, (inner, t + 1), reward, term, trunc, info


def poisoned(config: PPOConfig, env, what: str, **kwargs) -> PPO:
    ppo = PPO(config, env)
    ppo.vec = Poisoned(ppo.vec, what, **kwargs)
    return ppo


def all_finite(tree) -> bool:
    return all(np.isfinite(x).all() for x in jax.tree.leaves(tree))


def test_gae_stops_at_an_invalid_step():
    """Before an invalid step, GAE is that of a segment cut there (a truncation that
    bootstraps from next_values); the invalid step gets 0, its NaN goes nowhere."""
    rng = np.random.default_rng(0)
    rewards, values, next_values = (rng.normal(size=(12, 3)) for _ in range(3))
    terminated = np.zeros((12, 3), bool)
    terminated[2, 0] = True
    truncated = np.zeros((12, 3), bool)
    valid = np.ones((12, 3), bool)
    valid[6, 1] = False
    rewards[6, 1] = values[6, 1] = np.nan
    args = [jnp.asarray(a, jnp.float32) for a in (rewards, values, next_values)]
    adv, target = gae(*args, jnp.asarray(terminated), jnp.asarray(truncated), 0.9,
                      0.8, jnp.asarray(valid))  # fmt: skip
    assert np.isfinite(adv).all() and np.isfinite(target).all()
    assert adv[6, 1] == 0.0 and target[6, 1] == 0.0
    cut = truncated.copy()
    cut[5, 1] = True  # the step before the invalid one: its own TD error only
    ref, _ = gae_loop(rewards, values, next_values, terminated, cut, 0.9, 0.8)
    ok = valid
    np.testing.assert_allclose(np.asarray(adv)[ok], ref[ok], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(target)[ok], (ref + values)[ok], rtol=1e-5, atol=1e-5
    )


def random_minibatch(n: int, seed: int = 0):
    k = jax.random.split(jax.random.key(seed), 8)
    out = PolicyOutput(
        logits=jax.random.normal(k[0], (n, 3)),
        log_std=jnp.zeros((n, 3)),
        value=jax.random.normal(k[1], (n,)),
    )
    batch = Batch(
        obs=jnp.zeros((n, 1)),
        reset=jnp.zeros((n,), bool),
        action=jax.random.randint(k[2], (n,), 0, 3),
        log_prob=jax.random.normal(k[3], (n,)) * 0.3 - 1.1,
        value=jax.random.normal(k[4], (n,)),
        advantage=jax.random.normal(k[5], (n,)) * 2.0 + 0.5,
        target=jax.random.normal(k[6], (n,)),
    )
    return out, batch


def naive_loss(out, batch, clip_eps=0.2, vf_coef=0.5, ent_coef=0.01):
    """The PPO loss written out in NumPy (float64), all steps weighted equally."""
    logits, value = np.asarray(out.logits, float), np.asarray(out.value, float)
    logp_all = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    logp = logp_all[np.arange(len(logits)), np.asarray(batch.action)]
    ratio = np.exp(logp - np.asarray(batch.log_prob, float))
    adv = np.asarray(batch.advantage, float)
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    clipped = np.clip(ratio, 1 - clip_eps, 1 + clip_eps)
    policy = -np.mean(np.minimum(ratio * adv, clipped * adv))
    old, target = np.asarray(batch.value, float), np.asarray(batch.target, float)
    v_clip = old + np.clip(value - old, -clip_eps, clip_eps)
    vloss = 0.5 * np.mean(np.maximum((value - target) ** 2, (v_clip - target) ** 2))
    ent = np.mean(-(np.exp(logp_all) * logp_all).sum(-1))
    return policy + vf_coef * vloss - ent_coef * ent


def test_masking_is_a_no_op_when_every_step_is_valid():
    out, batch = random_minibatch(64)
    plain, plain_terms = ppo_loss(out, batch, True)
    masked, masked_terms = ppo_loss(out, batch._replace(valid=jnp.ones(64, bool)), True)
    assert float(masked) == pytest.approx(naive_loss(out, batch), rel=1e-5)
    assert float(plain) == pytest.approx(naive_loss(out, batch), rel=1e-5)
    np.testing.assert_allclose(masked_terms, plain_terms, rtol=1e-6, atol=1e-7)


def test_masked_steps_count_for_nothing_in_any_term():
    """The masked loss is the loss of the valid steps alone, in value and gradient."""
    out, batch = random_minibatch(64, seed=1)
    valid = jnp.arange(64) % 5 != 2
    # garbage (large but finite) where invalid, as PPO's placeholders could be
    noisy = batch._replace(advantage=jnp.where(valid, batch.advantage, 1e6))
    masked = partial(ppo_loss, batch=noisy._replace(valid=valid), discrete=True)
    kept = jax.tree.map(lambda x: x[valid], (out, batch))
    sub = partial(ppo_loss, batch=kept[1], discrete=True)
    (loss, terms), grads = jax.value_and_grad(masked, has_aux=True)(out)
    (ref, ref_terms), ref_grads = jax.value_and_grad(sub, has_aux=True)(kept[0])
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
    np.testing.assert_allclose(terms, ref_terms, rtol=1e-5, atol=1e-6)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(g[valid], r, rtol=1e-4, atol=1e-6)
        assert not np.asarray(g)[~np.asarray(valid)].any()  # no gradient at all


SMALL = PPOConfig(
    total_steps=6 * 128, num_envs=8, num_steps=16, num_minibatches=2,
    normalize_obs=True, normalize_reward=True, policy=PolicySpec(hidden=16),
)  # fmt: skip


@pytest.mark.parametrize(("kind", "what"), [("gru", "reward"), ("mlp", "obs")])
def test_one_envs_nan_leaves_the_parameters_finite_and_training(kind, what):
    cfg = dataclasses.replace(SMALL, policy=PolicySpec(kind, 16))
    ppo = poisoned(cfg, MemoryEnv(delay=2), what)
    start = jax.jit(ppo.init)(jax.random.key(0))
    state, m = jax.jit(partial(ppo.train, num_updates=cfg.num_updates))(start)
    assert all_finite((state.params, state.opt_state, state.carry))
    assert all_finite((state.obs_stats, state.reward_stats, state.disc_return))
    hits = cfg.num_steps // 4  # env 1, every 4th step: 4 per update
    if what == "reward":  # exactly the poisoned steps
        np.testing.assert_array_equal(m.dropped, hits)
    else:  # the step that saw the NaN and the one before (bootstraps from it)
        assert (m.dropped >= hits).all() and (m.dropped <= 2 * hits).all()
    assert not np.asarray(m.skipped).any()
    assert all_finite(m.losses) and np.isfinite(m.return_sum).all()
    moved = [not np.allclose(a, b) for a, b in zip(*map(jax.tree.leaves, (
        start.params, state.params)))]  # fmt: skip
    assert all(moved)


def test_the_carry_restarts_after_a_nan_observation_and_replay_matches():
    """The rollout zeroes a GRU's carry after the step that saw a NaN observation;
    training replays the same resets, so the valid steps' values match."""
    cfg = PPOConfig(total_steps=64, num_envs=4, num_steps=16, num_minibatches=2,
                    policy=PolicySpec("gru", 8))  # fmt: skip
    ppo = poisoned(cfg, MemoryEnv(delay=6), "obs", every=5)
    state = jax.jit(ppo.init)(jax.random.key(0))
    state = state.replace(carry=jax.random.normal(jax.random.key(3), state.carry.shape))
    runner, traj = jax.jit(ppo.rollout)(state, jax.random.key(1))
    batch, _, _ = jax.jit(ppo._batch)(state, traj, runner)
    bad = ~np.asarray(traj.finite)
    assert bad[:, 1].sum() == 3 and not bad[:, [0, 2, 3]].any()  # steps 5, 10, 15
    assert all_finite((traj.value, traj.log_prob, traj.action, runner.carry, batch))
    out = jax.jit(ppo.unroll)(state.params, state.carry, batch.obs, batch.reset)
    np.testing.assert_allclose(out.value, traj.value, rtol=1e-5, atol=1e-6)
    valid = np.asarray(batch.valid)
    assert not valid[bad].any() and not valid[np.roll(bad, -1, axis=0)].any()


def test_a_nonfinite_gradient_leaves_parameters_and_optimizer_state_unchanged():
    cfg = PPOConfig(total_steps=64, num_envs=4, num_steps=16, num_minibatches=1,
                    policy=PolicySpec(hidden=8))  # fmt: skip
    ppo = PPO(cfg, MemoryEnv(delay=2))
    state = jax.jit(ppo.init)(jax.random.key(0))
    runner, traj = jax.jit(ppo.rollout)(state, jax.random.key(1))
    batch, _, _ = jax.jit(ppo._batch)(state, traj, runner)
    flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), batch)
    learner = Learner(state.params, state.opt_state)
    step = jax.jit(ppo._grad_step)
    moved, (_, skipped) = step(learner, ((), flat))
    assert not skipped and not np.allclose(moved.params["params"]["value"]["bias"],
                                           state.params["params"]["value"]["bias"])  # fmt: skip
    # a valid step with an infinite target: the value gradient is NaN
    broken = flat._replace(target=flat.target.at[3].set(jnp.inf))
    same, (_, skipped) = step(learner, ((), broken))
    assert skipped
    jax.tree.map(np.testing.assert_array_equal, same, learner)


def test_a_gaussian_policy_still_learns_with_one_env_sending_nan():
    cfg = PPOConfig(total_steps=16 * 16 * 40, num_envs=16, num_steps=16, lr=3e-3,
                    normalize_obs=True, normalize_reward=True,
                    policy=PolicySpec(hidden=32))  # fmt: skip
    ppo = poisoned(cfg, ContinuousBandit(), "obs", index=3, every=3)
    start = jax.jit(ppo.init)(jax.random.key(0))
    state, m = jax.jit(partial(ppo.train, num_updates=cfg.num_updates))(start)
    assert (m.dropped > 0).all() and all_finite(state.params)
    score = jax.jit(partial(ppo.evaluate, episodes=256, horizon=1))
    after = float(score(jax.random.key(1), state))
    assert float(score(jax.random.key(1), start)) < -0.5 and after > -0.05, after


def test_vmap_over_seeds_masks_as_separate_runs_do():
    """Under vmap the gradient step always takes the masked loss (a batched cond
    would compute both): the same numbers as separate runs, to rounding."""
    cfg = dataclasses.replace(SMALL, total_steps=2 * 128)
    ppo = poisoned(cfg, MemoryEnv(delay=2), "reward")
    train = partial(ppo.train, num_updates=2)
    keys = jax.random.split(jax.random.key(0), 2)
    states, metrics = jax.jit(jax.vmap(train))(jax.vmap(ppo.init)(keys))
    assert all_finite(states.params)
    train_one, init_one = jax.jit(train), jax.jit(ppo.init)
    for i, key in enumerate(keys):
        state, m = train_one(init_one(key))
        np.testing.assert_array_equal(metrics.dropped[i], m.dropped)
        mine = jax.tree.map(lambda x, i=i: x[i], states.params)
        close = partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5)
        jax.tree.map(close, mine, state.params)
