"""PPO: clipped-surrogate policy optimisation, feed-forward or recurrent.

Schulman et al. 2017, "Proximal Policy Optimization Algorithms" (arXiv 1707.06347), in
the PureJaxRL style (Lu et al. 2022, "Discovered Policy Optimisation", arXiv
2210.05639): environments, rollouts and updates all run under one `jit`, a `lax.scan`
over updates. `PPO.train(state, n)` runs ``n`` updates, so a run goes in chunks with
logging and checkpoints in between; it is pure, so ``vmap`` over seeds works. The
hyperparameters are a `PPOConfig` (`esrl.agents.ppo_config`).

Episode boundaries: a time-limit truncation bootstraps from V(final obs) (see
`esrl.gae`), and a recurrent policy's carry is zeroed right after the step whose
``done`` ended the episode, both while acting and when the sequence is replayed for the
loss (`PPO.unroll`), so training sees exactly the hidden states the actor had.

Non-finite data: one environment's NaN or inf never poisons the parameters (as a NaN
fitness never does in ES). A step is dropped (zero weight in every loss term and in the
advantage statistics; GAE stops there, `esrl.gae.gae`) when its reward, observation,
value or log-prob is non-finite, or the value it bootstraps from is (V(next obs), or
V(final obs) at a time-limit cut). A non-finite observation reaches the policy as
zeros, a step with a non-finite observation, value or log-prob restarts a recurrent
carry after it (acting and replay), and `esrl.vec.VecEnv` cuts and resets an
environment whose observation or reward is non-finite. Running statistics skip
non-finite entries, an episode with a non-finite return is left out of the
training-return metric, and a gradient step whose gradient is still non-finite is
skipped. `Metrics` counts the dropped transitions and skipped steps of every update.
With finite data all of this is the identity (a minibatch with every step valid takes
the unmasked loss): the same numbers, bit for bit.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from esrl.agents.ppo_config import PPOConfig
from flax import struct

from esrl import spaces
from esrl.checks import require_hashable
from esrl.env import AutoReset, Environment, all_finite, wraps
from esrl.gae import (
    Batch,
    Losses,
    discounted_returns,
    gae,
    keep_where,
    log_prob,
    merge_batch,
    ppo_loss,
    scale_reward,
    split_envs,
    split_rows,
    unmasked_if_all_valid,
)
from esrl.nn import initial_carry, reset_carry
from esrl.normalize import ObsStats, init_obs_stats, normalize_obs
from esrl.policy import (
    PolicyOutput,
    clip_action,
    make_policy,
    sample_action,
)
from esrl.registry import make
from esrl.rollout import RolloutConfig, evaluate_population
from esrl.vec import VecEnv


@struct.dataclass
class PPOState:
    """Everything a run carries between updates (a pytree: checkpoint it, vmap it)."""

    params: Any
    opt_state: Any
    env_state: Any
    obs: jax.Array
    carry: Any
    episode_return: jax.Array
    disc_return: jax.Array
    obs_stats: ObsStats
    reward_stats: ObsStats
    key: jax.Array
    update: jax.Array


class Runner(NamedTuple):
    """The acting side of the state, carried through a rollout."""

    env_state: Any
    obs: jax.Array
    carry: Any
    episode_return: jax.Array


class Transition(NamedTuple):
    """One step of every environment ([N, ...]; a rollout stacks them to [T, N, ...])."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    final_obs: jax.Array
    """The true next observation (the one that ended the episode where it ended)."""
    final_value: jax.Array
    """V(final obs); read only where a time limit cut the episode (a step with no cut
    skips computing it and holds 0)."""
    episode_return: jax.Array
    """Undiscounted return of the episode so far, this reward included."""
    finite: jax.Array
    """The observation, value and log-prob were finite (else the step is dropped and
    the carry zeroed after it)."""


class Learner(NamedTuple):
    """What a gradient step changes."""

    params: Any
    opt_state: Any


class Metrics(NamedTuple):
    """Per-update metrics; ``return_sum / episodes`` is the mean training return."""

    return_sum: jax.Array
    """Sum of the finite returns of the episodes that ended."""
    episodes: jax.Array
    """Episodes that ended with a finite return."""
    losses: Losses
    dropped: jax.Array
    """Transitions left out of the loss (non-finite data, see the module docstring)."""
    skipped: jax.Array
    """Gradient steps not applied because the gradient was non-finite."""


def _zero_value(carry, obs: jax.Array) -> jax.Array:
    return jnp.zeros(obs.shape[:1], float)  # the default float, as the critic's value


class PPO:
    """PPO on one environment: `init(key)`, then `train(state, n)` in chunks.

    ``optimizer`` (any optax transformation, e.g. ``optax.adamw(schedule)``) replaces
    the default ``clip_by_global_norm(max_grad_norm)`` then ``adam(lr)`` (decayed to 0
    by ``anneal_lr``); the config's ``lr``, ``anneal_lr`` and ``max_grad_norm`` are
    then unused.
    """

    def __init__(
        self,
        config: PPOConfig,
        env: Environment | str,
        env_params=None,
        optimizer: optax.GradientTransformation | None = None,
    ):
        if isinstance(env, str):
            env = make(env)
        if wraps(env, AutoReset):
            raise TypeError(
                "PPO resets finished episodes itself (keeping the final observation); "
                "pass the environment without autoreset (esrl.make(id))"
            )
        require_hashable(env)
        self.config = config
        self.env = env
        self.env_params = env.default_params if env_params is None else env_params
        self.vec = VecEnv(env, config.num_envs, reset_pool=config.reset_pool)
        self.action_space = env.action_space(self.env_params)
        self.policy = make_policy(
            config.policy,
            self.action_space,
            critic=True,
            observation_space=env.observation_space(self.env_params),
            normalize_obs=config.normalize_obs,
        )
        self.discrete = isinstance(self.action_space, spaces.Discrete)
        self.recurrent = config.policy.kind != "mlp"
        self.optimizer = self._optimizer() if optimizer is None else optimizer

    def _optimizer(self) -> optax.GradientTransformation:
        c = self.config
        lr = c.lr
        if c.anneal_lr:
            steps = c.num_updates * c.update_epochs * c.num_minibatches
            lr = optax.linear_schedule(c.lr, 0.0, steps)
        return optax.chain(
            optax.clip_by_global_norm(c.max_grad_norm), optax.adam(lr, eps=1e-5)
        )

    def init(self, key: jax.Array) -> PPOState:
        """Fresh parameters, optimizer and environments."""
        k_params, k_env, k_run = jax.random.split(key, 3)
        obs, env_state = self.vec.reset(k_env, self.env_params)
        c = self.config
        carry = initial_carry(c.policy.kind, c.policy.hidden)
        # (the policy refuses a dict observation with a message saying what to do)
        params = self.policy.init(k_params, carry, jax.tree.map(lambda x: x[0], obs))
        carry = jax.tree.map(
            lambda x: jnp.broadcast_to(x, (c.num_envs, *x.shape)), carry
        )
        obs_stats = init_obs_stats(obs.shape[1:])
        if c.normalize_obs:
            obs_stats = merge_batch(obs_stats, obs, all_finite(obs))
        # the default float (float64 under x64), whatever the reward's float dtype
        zeros = jnp.zeros((c.num_envs,), jnp.result_type(float))
        return PPOState(
            params=params,
            opt_state=self.optimizer.init(params),
            env_state=env_state,
            obs=obs,
            carry=carry,
            episode_return=zeros,
            disc_return=zeros,
            obs_stats=obs_stats,
            reward_stats=init_obs_stats(()),
            key=k_run,
            update=jnp.zeros((), jnp.int32),
        )

    def train(self, state: PPOState, num_updates: int) -> tuple[PPOState, Metrics]:
        """Run ``num_updates`` updates (pure: jit with num_updates static, vmap seeds)."""
        return jax.lax.scan(self._scan_update, state, None, length=num_updates)

    def normalize(self, state: PPOState, obs: jax.Array) -> jax.Array:
        """The policy's view of raw observations (normalised if configured)."""
        if self.config.normalize_obs:
            return normalize_obs(state.obs_stats, obs)
        return obs.astype(jnp.float32)

    def observe(self, state: PPOState, obs: jax.Array, batch_dims: int = 1):
        """`normalize`, with zeros for an observation that is not all finite.

        Returns the policy's input and whether each observation was finite [*batch].
        """
        ok = all_finite(obs, batch_dims)
        return keep_where(ok, self.normalize(state, obs)), ok

    def act(self, params, carry, obs: jax.Array) -> tuple[Any, PolicyOutput]:
        """The policy on a batch: carry [N, ...], obs [N, ...] -> (carry, outputs)."""
        return jax.vmap(self.policy.apply, in_axes=(None, 0, 0))(params, carry, obs)

    def reset_done(self, carry, done: jax.Array):
        """Zero the carry of environments whose episode just ended (done [N])."""
        if not self.recurrent:
            return carry
        kind, hidden = self.config.policy.kind, self.config.policy.hidden
        return jax.vmap(partial(reset_carry, kind=kind, hidden=hidden))(carry, done)

    def unroll(self, params, carry, obs: jax.Array, reset: jax.Array) -> PolicyOutput:
        """Replay sequences obs [T, N, ...], resetting the carry after each reset [T, N]."""
        _, out = jax.lax.scan(partial(self._unroll_step, params), carry, (obs, reset))
        return out

    def _unroll_step(self, params, carry, xs):
        obs, reset = xs
        carry, out = self.act(params, carry, obs)
        return self.reset_done(carry, reset), out

    def rollout(self, state: PPOState, key: jax.Array) -> tuple[Runner, Transition]:
        """``num_steps`` steps of every environment with the current policy."""
        runner = Runner(state.env_state, state.obs, state.carry, state.episode_return)
        step = partial(self._rollout_step, state)
        keys = jax.random.split(key, self.config.num_steps)
        return jax.lax.scan(step, runner, keys)

    def _rollout_step(self, state: PPOState, runner: Runner, key: jax.Array):
        k_act, k_env = jax.random.split(key)
        obs, obs_ok = self.observe(state, runner.obs)
        carry, out = self.act(state.params, runner.carry, obs)
        action = sample_action(k_act, out, self.action_space)
        logp = log_prob(out, action, self.discrete)
        finite = obs_ok & jnp.isfinite(out.value) & jnp.isfinite(logp)
        env_action = action if self.discrete else clip_action(action, self.action_space)
        next_obs, env_state, reward, term, trunc, info = self.vec.step(
            k_env, runner.env_state, env_action, self.env_params
        )
        done = jnp.logical_or(term, trunc)
        ep_return = runner.episode_return + reward
        # V(final obs) is needed only at time-limit cuts: pay for it only then.
        final_value = jax.lax.cond(
            jnp.any(trunc), partial(self._value, state), _zero_value,
            carry, info["final_obs"],
        )  # fmt: skip
        transition = Transition(
            runner.obs, action, logp, out.value, reward, term, trunc,
            info["final_obs"], final_value, ep_return, finite,
        )  # fmt: skip
        next_runner = Runner(
            env_state, next_obs, self.reset_done(carry, done | ~finite),
            jnp.where(done, 0.0, ep_return),
        )  # fmt: skip
        return next_runner, transition

    def _value(self, state: PPOState, carry, obs: jax.Array) -> jax.Array:
        """V(obs) [N] (raw obs; carry: the one that has seen the previous obs)."""
        return self.act(state.params, carry, self.normalize(state, obs))[1].value

    def _scan_update(self, state: PPOState, _) -> tuple[PPOState, Metrics]:
        return self.update(state)

    def update(self, state: PPOState) -> tuple[PPOState, Metrics]:
        """One PPO update: rollout, advantages, epochs of minibatch gradient steps."""
        key, k_roll, k_epochs = jax.random.split(state.key, 3)
        runner, traj = self.rollout(state, k_roll)
        batch, disc_return, reward_stats = self._batch(state, traj, runner)
        learner = Learner(state.params, state.opt_state)
        keys = jax.random.split(k_epochs, self.config.update_epochs)
        learner, (losses, skipped) = jax.lax.scan(
            partial(self._epoch, state.carry, batch), learner, keys
        )
        obs_stats = state.obs_stats
        if self.config.normalize_obs:
            obs = traj.obs.reshape(-1, *traj.obs.shape[2:])
            obs_stats = merge_batch(obs_stats, obs, all_finite(obs))
        done = jnp.logical_or(traj.terminated, traj.truncated)
        ended = done & jnp.isfinite(traj.episode_return)
        metrics = Metrics(
            jnp.sum(jnp.where(ended, traj.episode_return, 0.0)),
            jnp.sum(ended),
            jax.tree.map(jnp.mean, losses),
            jnp.sum(~batch.valid),
            jnp.sum(skipped),
        )
        new_state = state.replace(
            params=learner.params,
            opt_state=learner.opt_state,
            env_state=runner.env_state,
            obs=runner.obs,
            carry=runner.carry,
            episode_return=runner.episode_return,
            disc_return=disc_return,
            obs_stats=obs_stats,
            reward_stats=reward_stats,
            key=key,
            update=state.update + 1,
        )
        return new_state, metrics

    def _batch(self, state: PPOState, traj: Transition, runner: Runner):
        """Advantages and targets; a time-limit cut bootstraps from V(final obs).

        Steps with non-finite data or bootstrap value are invalid: finite placeholders
        (0) in the batch, no weight in the loss (see the module docstring).
        """
        c = self.config
        done = jnp.logical_or(traj.terminated, traj.truncated)
        last = self._value(state, runner.carry, runner.obs)
        next_value = jnp.concatenate([traj.value[1:], last[None]])
        next_value = jnp.where(traj.truncated, traj.final_value, next_value)
        last_ok = all_finite(runner.obs) & jnp.isfinite(last)
        next_ok = jnp.concatenate([traj.finite[1:], last_ok[None]])
        final_ok = all_finite(traj.final_obs, 2) & jnp.isfinite(traj.final_value)
        next_ok = jnp.where(traj.truncated, final_ok, next_ok)
        next_value = jnp.where(next_ok, next_value, 0.0)
        valid = traj.finite & jnp.isfinite(traj.reward) & (traj.terminated | next_ok)
        reward, disc, reward_stats = traj.reward, state.disc_return, state.reward_stats
        if c.normalize_reward:
            disc, returns = discounted_returns(disc, reward, done, c.gamma)
            returns = returns.reshape(-1)
            reward_stats = merge_batch(reward_stats, returns, jnp.isfinite(returns))
            reward = scale_reward(reward_stats, reward)
        advantage, target = gae(
            reward, traj.value, next_value, traj.terminated, traj.truncated,
            c.gamma, c.gae_lambda, valid,
        )  # fmt: skip
        obs, _ = self.observe(state, traj.obs, batch_dims=2)
        keep = partial(keep_where, valid)
        batch = Batch(
            obs, done | ~traj.finite, keep(traj.action), keep(traj.log_prob),
            keep(traj.value), advantage, target, valid,
        )  # fmt: skip
        return batch, disc, reward_stats

    def _epoch(self, carry0, batch: Batch, learner: Learner, key: jax.Array):
        m = self.config.num_minibatches
        if self.recurrent:
            perm = jax.random.permutation(key, self.config.num_envs)
            carries = jax.tree.map(
                lambda x: jnp.take(x, perm, 0).reshape(m, -1, *x.shape[1:]), carry0
            )
            minibatches = jax.tree.map(partial(split_envs, perm=perm, m=m), batch)
        else:
            perm = jax.random.permutation(key, self.config.batch_size)
            carries = ()
            minibatches = jax.tree.map(partial(split_rows, perm=perm, m=m), batch)
        return jax.lax.scan(self._grad_step, learner, (carries, minibatches))

    def _grad_step(self, learner: Learner, minibatch) -> tuple[Learner, tuple]:
        """One optimizer step on a minibatch; returns (losses, whether skipped)."""
        return unmasked_if_all_valid(self._apply_grad, learner, *minibatch)

    def _apply_grad(self, carry0, batch: Batch, learner: Learner):
        grads, losses = jax.grad(self.loss, has_aux=True)(learner.params, carry0, batch)
        updates, opt_state = self.optimizer.update(
            grads, learner.opt_state, learner.params
        )
        new = Learner(optax.apply_updates(learner.params, updates), opt_state)
        # The last guard: a step with a non-finite gradient changes nothing (a cond,
        # not a where, which would change the compiled numbers of finite runs).
        ok = jnp.isfinite(optax.tree.norm(grads))
        return jax.lax.cond(ok, lambda: new, lambda: learner), (losses, ~ok)

    def loss(self, params, carry0, batch: Batch) -> tuple[jax.Array, Losses]:
        """Clipped surrogate + (clipped) value loss - entropy bonus on one minibatch."""
        c = self.config
        if self.recurrent:
            out = self.unroll(params, carry0, batch.obs, batch.reset)
        else:
            out = self.act(params, (), batch.obs)[1]
        return ppo_loss(
            out, batch, self.discrete, clip_eps=c.clip_eps, clip_value=c.clip_value,
            vf_coef=c.vf_coef, ent_coef=c.ent_coef,
            normalize_advantages=c.normalize_advantages,
        )  # fmt: skip

    def eval_rollout(self, episodes: int, horizon: int) -> RolloutConfig:
        """How `evaluate` rolls out: greedy actions, the run's observation statistics."""
        return RolloutConfig(
            horizon=horizon, episodes=episodes, normalize_obs=self.config.normalize_obs
        )

    def evaluate(
        self, key: jax.Array, state: PPOState, episodes: int = 16, horizon: int = 500
    ) -> jax.Array:
        """Mean return of the greedy policy over ``episodes`` (`esrl.rollout`, as ES)."""
        result = evaluate_population(
            key, self.env, self.env_params, self.policy, state.params["params"],
            config=self.eval_rollout(episodes, horizon), obs_stats=state.obs_stats,
            num_members=1,
        )  # fmt: skip
        return result.returns[0]
