"""PPO's advantages end to end: a rollout's batch against a step-by-step Python replay."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from esrl.agents.ppo import PPO, PPOConfig

import esrl
from esrl.gae import merge_batch, scale_reward
from esrl.policy import PolicySpec

sys.path.insert(0, str(Path(__file__).parent))
from test_ppo import gae_loop


def naive_advantages(ppo, state, traj, runner):
    """Values recomputed one step at a time (carry reset after each done), V(final
    obs) at time-limit cuts, the carried discounted return for reward scaling.
    Returns the advantages and the discounted returns carried to the next rollout."""
    cfg, act = ppo.config, jax.jit(ppo.act)
    term, trunc = np.asarray(traj.terminated), np.asarray(traj.truncated)
    steps = term.shape[0]
    values, finals, carry = np.zeros(term.shape), np.zeros(term.shape), state.carry
    for t in range(steps):
        after, out = act(state.params, carry, ppo.normalize(state, traj.obs[t]))
        values[t] = out.value
        finals[t] = act(state.params, after, ppo.normalize(state, traj.final_obs[t]))[
            1
        ].value
        carry = ppo.reset_done(after, jnp.asarray(term[t] | trunc[t]))
    last = act(state.params, carry, ppo.normalize(state, runner.obs))[1].value
    next_values = np.where(trunc, finals, np.concatenate([values[1:], last[None]]))
    reward, disc = np.asarray(traj.reward), np.asarray(state.disc_return, float)
    if cfg.normalize_reward:  # the running return, reset after each done
        returns = []
        for t in range(steps):
            returns.append(disc * cfg.gamma + reward[t])
            disc = np.where(term[t] | trunc[t], 0.0, returns[-1])
        returns = jnp.asarray(np.ravel(returns), jnp.float32)
        reward_stats = merge_batch(state.reward_stats, returns)
        reward = np.asarray(scale_reward(reward_stats, jnp.asarray(reward)))
    adv, _ = gae_loop(reward, values, next_values, term, trunc, cfg.gamma, 0.9)
    return adv, disc


@pytest.mark.parametrize("kind", ["mlp", "gru"])
def test_batch_advantages_equal_a_python_replay(kind):
    cfg = PPOConfig(
        total_steps=4 * 48, num_envs=4, num_steps=48, num_minibatches=2,
        gae_lambda=0.9, normalize_obs=True, normalize_reward=True,
        policy=PolicySpec(kind=kind, hidden=8),
    )  # fmt: skip
    env = esrl.make("gymnax/CartPole-v1")
    ppo = PPO(cfg, env, env.default_params.replace(max_steps_in_episode=16))
    state = jax.jit(ppo.init)(jax.random.key(0))
    k_obs, k_ret, k_carry = jax.random.split(jax.random.key(2), 3)
    state = state.replace(  # statistics, returns and carries not at their start
        obs_stats=merge_batch(state.obs_stats, jax.random.normal(k_obs, (64, 4))),
        reward_stats=merge_batch(state.reward_stats, jax.random.normal(k_ret, (64,))),
        disc_return=jnp.arange(4.0),
        carry=jax.tree.map(lambda c: jax.random.normal(k_carry, c.shape), state.carry),
    )
    runner, traj = jax.jit(ppo.rollout)(state, jax.random.key(1))
    batch, disc, _ = jax.jit(ppo._batch)(state, traj, runner)
    term, trunc = np.asarray(traj.terminated), np.asarray(traj.truncated)
    assert (term & ~trunc).any() and (trunc & ~term).any()
    expected, expected_disc = naive_advantages(ppo, state, traj, runner)
    np.testing.assert_allclose(batch.advantage, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(disc, expected_disc, rtol=1e-5, atol=1e-5)
