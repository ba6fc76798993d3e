"""Population rollouts: a whole ES generation in one jitted call.

`evaluate_population` runs N members x E episodes side by side: member i applies the
shared ``params`` plus its own perturbation (``perturbations`` carries a leading member
axis, as `esrl.es.ES.ask` returns it; ``None`` means plain shared weights, the
throughput ceiling). Time is a ``lax.scan`` over fixed-length episodes with
done-masking: an episode that ends is frozen (state, observation and recurrent carry
stop changing, rewards are masked) and never reset, so no step pays for a reset. Each
episode starts from a fresh recurrent carry, so carries are reset exactly at episode
boundaries. The scan runs in chunks inside a ``while_loop`` that stops once every
episode of the batch has ended; the result is identical to running all ``horizon``
steps.

Keys are addressed, not split: episode e of member i resets from
``fold_in(fold_in(key, i), e)`` (member index 0 for everyone with common random
numbers) and step t folds in t, so a member's result does not depend on the batch it
is evaluated in (sharding over devices gives the same numbers).

Example (plain inference of 1024 members on CartPole)::

    env = esrl.make("gymnax/CartPole-v1")
    policy = make_policy(PolicySpec(), env.action_space())
    obs, _ = env.reset(key)
    params = policy.init(key, policy.initial_carry(), obs)["params"]
    result = evaluate_population(key, env, None, policy, params, None,
                                 RolloutConfig(horizon=500), num_members=1024)
    result.returns  # [1024]

For a generation of ES, pass ``perturbations=ES.ask(state, compact=True)`` for low-rank
(EGGROLL) noise or ``ES.ask(state)`` for full-rank noise (or build them per device from
member ids, as `esrl.train.ESTrainer` does) and, with
``normalize_obs``, merge ``result.moments`` with `esrl.normalize.update_obs_stats`
afterwards.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from esrl import spaces, xla
from esrl.checks import require
from esrl.env import Environment, strip_autoreset
from esrl.nn import PERTURB, unread_perturbations
from esrl.noise import PairNoise
from esrl.normalize import (
    ObsMoments,
    ObsStats,
    accumulate,
    init_obs_stats,
    normalize_obs,
    zero_moments,
)
from esrl.policy import clip_action, greedy_action, sample_action


@dataclass(frozen=True)
class RolloutConfig:
    """How a generation is evaluated."""

    horizon: int = 500
    """Steps per episode; episodes that end earlier are masked, never reset."""
    episodes: int = 1
    """Episodes per member, run side by side; a member's return is their mean."""
    common_random_numbers: bool = False
    """Every member sees the same environment keys (same starts, same env noise)."""
    normalize_obs: bool = False
    """Normalise observations with running statistics shared by all members."""
    obs_clip: float = 5.0
    """Normalised observations are clipped to [-obs_clip, obs_clip]."""
    deterministic: bool = True
    """Greedy actions (argmax / clipped mean); False samples from the policy."""
    chunk: int = 16
    """Steps per scan chunk; the loop exits after the chunk in which all episodes end."""
    info_keys: tuple[str, ...] = ("achievements",)
    """``info`` entries reported at each episode's last step (absent ones are skipped)."""

    def __post_init__(self):
        require(self, ">= 1", "horizon", "episodes", "chunk")
        require(self, "> 0", "obs_clip")  # inf: no clipping


class RolloutResult(NamedTuple):
    """Per-member outcome of a generation (N members, E episodes each)."""

    returns: jax.Array
    """Mean episode return per member [N] (NaN if an episode produced NaN)."""
    lengths: jax.Array
    """Mean episode length per member [N]."""
    episode_returns: jax.Array
    """Return of every episode [N, E]."""
    episode_lengths: jax.Array
    """Length of every episode [N, E] (int32); their sum is the env steps taken."""
    info: dict[str, jax.Array]
    """Selected ``info`` entries at each episode's last step, mean over episodes [N, ...]."""
    moments: ObsMoments | None
    """Per-member observation moments for `esrl.normalize.update_obs_stats`, or None."""


class _Carry(NamedTuple):
    t: jax.Array
    env_state: Any
    obs: jax.Array
    policy_carry: Any
    alive: jax.Array
    returns: jax.Array
    lengths: jax.Array
    info: dict[str, jax.Array]
    moments: ObsMoments | None


class _Batch(NamedTuple):
    """Traced inputs shared by every step of one rollout."""

    env_params: Any
    params: Any
    perturbations: Any
    obs_stats: ObsStats
    run_keys: jax.Array  # [N, E]


def _vmap2(fn, in_axes):
    """vmap over members (axis 0) then episodes (axis 1) with the same in_axes."""
    return jax.vmap(jax.vmap(fn, in_axes=in_axes), in_axes=in_axes)


def _select(mask: jax.Array, new, old):
    """Per-episode ``where(mask, new, old)`` over pytrees with leading [N, E] axes."""

    def pick(a, b):
        return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim)), a, b)

    return jax.tree.map(pick, new, old)


class _Runner:
    """The static parts of a rollout (env, policy, config); arrays come as arguments."""

    def __init__(self, env: Environment, policy, config: RolloutConfig, env_params):
        self.env = env
        self.policy = policy
        self.config = config
        self.action_space = env.action_space(env_params)
        if not isinstance(self.action_space, (spaces.Discrete, spaces.Box)):
            raise TypeError(
                f"rollouts serve Discrete or Box action spaces, not {self.action_space!r}"
            )

    def act(self, params, perturbation, carry, obs, key):
        """One policy step for one episode: ``(carry, action)``."""
        variables = {"params": params}
        if perturbation is not None:
            variables[PERTURB] = perturbation
        carry, out = self.policy.apply(variables, carry, obs)
        if self.config.deterministic:
            return carry, greedy_action(out, self.action_space)
        action = sample_action(key, out, self.action_space)
        if isinstance(self.action_space, spaces.Box):
            action = clip_action(action, self.action_space)
        return carry, action

    def step(self, batch: _Batch, c: _Carry, _=None) -> tuple[_Carry, None]:
        """Advance every live episode one step; ended episodes stay frozen."""
        keys = jax.vmap(jax.vmap(jax.random.fold_in, (0, None)), (0, None))(
            batch.run_keys, c.t
        )
        split = _vmap2(jax.random.split, 0)(keys)
        env_keys, act_keys = split[:, :, 0], split[:, :, 1]
        obs = c.obs
        if self.config.normalize_obs:
            obs = normalize_obs(batch.obs_stats, obs, self.config.obs_clip)
        act = jax.vmap(
            jax.vmap(self.act, in_axes=(None, None, 0, 0, 0)),
            in_axes=(None, 0, 0, 0, 0),
        )
        perturbations = batch.perturbations
        if isinstance(perturbations, PairNoise):
            # Expand pairs to members here, in the loop: XLA then fuses the expansion
            # into the layers, which read each pair's noise once for both members.
            # The barrier ties the noise to this step's observations, or XLA would
            # hoist the (loop-invariant) expansion out and store every member's noise.
            obs, perturbations = jax.lax.optimization_barrier((obs, perturbations))
            perturbations = perturbations.members()
        pcarry, action = act(batch.params, perturbations, c.policy_carry, obs, act_keys)
        step = _vmap2(self.env.step, (0, 0, 0, None))
        obs2, state2, reward, term, trunc, info = step(
            env_keys, c.env_state, action, batch.env_params
        )
        alive = c.alive
        done = term | trunc | (c.t + 1 >= self.config.horizon)
        moments = c.moments
        if moments is not None:
            moments = accumulate(moments, batch.obs_stats, c.obs, alive)
        info = {k: info[k] for k in c.info}
        new = _Carry(
            t=c.t + 1,
            env_state=_select(alive, state2, c.env_state),
            obs=_select(alive, obs2, c.obs),
            policy_carry=_select(alive, pcarry, c.policy_carry),
            alive=alive & ~done,
            returns=c.returns + jnp.where(alive, reward.astype(c.returns.dtype), 0.0),
            lengths=c.lengths + alive.astype(jnp.int32),
            info=_select(alive, info, c.info),
            moments=moments,
        )
        return new, None

    def run(self, batch: _Batch, c: _Carry) -> _Carry:
        """Scan in chunks until the horizon or until every episode has ended."""
        chunk = min(self.config.chunk, self.config.horizon)

        def body(carry):
            return jax.lax.scan(
                functools.partial(self.step, batch), carry, None, length=chunk
            )[0]

        def cond(carry):
            return (carry.t < self.config.horizon) & jnp.any(carry.alive)

        return jax.lax.while_loop(cond, body, c)


def _episode_keys(key: jax.Array, member_ids: jax.Array, config: RolloutConfig):
    """Reset and run keys [N, E] addressed by (member, episode)."""
    if config.common_random_numbers:
        member_ids = jnp.zeros_like(member_ids)
    episodes = jnp.arange(config.episodes)

    def one(i, e):
        return jax.random.split(jax.random.fold_in(jax.random.fold_in(key, i), e))

    pairs = jax.vmap(jax.vmap(one, (None, 0)), (0, None))(member_ids, episodes)
    return pairs[:, :, 0], pairs[:, :, 1]


def _initial_carry(runner: _Runner, batch: _Batch, reset_keys, info_template, stats):
    n, e = reset_keys.shape[:2]
    obs, state = _vmap2(runner.env.reset, (0, None))(reset_keys, batch.env_params)
    pcarry = runner.policy.initial_carry()
    pcarry = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, e) + x.shape), pcarry)
    info = {
        k: jnp.zeros((n, e) + v.shape, v.dtype)
        for k, v in info_template.items()
        if k in runner.config.info_keys
    }
    moments = zero_moments(stats, (n,)) if runner.config.normalize_obs else None
    return _Carry(
        t=jnp.zeros((), jnp.int32),
        env_state=state,
        obs=obs,
        policy_carry=pcarry,
        alive=jnp.ones((n, e), bool),
        returns=jnp.zeros((n, e), jnp.result_type(float)),  # float64 under x64
        lengths=jnp.zeros((n, e), jnp.int32),
        info=info,
        moments=moments,
    )


def _info_template(env: Environment, env_params, key: jax.Array) -> dict:
    """Shapes of one environment's ``info`` (traced abstractly, costs nothing)."""

    def one_step(k):
        _, state = env.reset(k, env_params)
        action = env.action_space(env_params).sample(k)
        return env.step(k, state, action, env_params)[5]

    return jax.eval_shape(one_step, key)


def observation_shape(env: Environment, env_params=None) -> tuple[int, ...]:
    """The shape of one observation, from an abstract reset."""
    obs, _ = jax.eval_shape(env.reset, jax.random.PRNGKey(0), env_params)
    return tuple(obs.shape)


@functools.partial(xla.jit, static_argnames=("env", "policy", "config", "num_members"))
def evaluate_population(
    key: jax.Array,
    env: Environment,
    env_params,
    policy,
    params,
    perturbations=None,
    config: RolloutConfig = RolloutConfig(),
    obs_stats: ObsStats | None = None,
    member_ids: jax.Array | None = None,
    num_members: int | None = None,
) -> RolloutResult:
    """Run N members x ``config.episodes`` fixed-horizon episodes in one call.

    Args:
      key: rollout key of this generation (members and episodes are folded in).
      env: an `esrl.Environment`; outer `esrl.AutoReset` layers are skipped (an
        auto-reset buried under another wrapper would still reset every step).
      env_params: environment parameters (None for the defaults); traced.
      policy: a `esrl.policy.Policy` (``apply(vars, carry, obs) -> (carry, out)``).
      params: shared parameters.
      perturbations: per-member perturbation tree with leading axis N, an
        `esrl.noise.PairNoise` of N members, or None.
      config: static `RolloutConfig`.
      obs_stats: statistics used to normalise observations (``config.normalize_obs``).
      member_ids: global member indices [N] addressing the keys (default arange(N)).
      num_members: N when ``perturbations`` is None and ``member_ids`` not given.
    """
    env = strip_autoreset(env)  # episodes end by done-masking: never reset
    if member_ids is None:
        if isinstance(perturbations, PairNoise):
            n = perturbations.scale.shape[0]
        elif perturbations is not None:
            n = jax.tree.leaves(perturbations)[0].shape[0]
        else:
            n = num_members or 1
        member_ids = jnp.arange(n)
    runner = _Runner(env, policy, config, env_params)
    if perturbations is not None:
        _check_perturbations_read(env, env_params, policy, params, perturbations)
    if obs_stats is None:
        obs_stats = init_obs_stats(observation_shape(env, env_params))
    reset_keys, run_keys = _episode_keys(key, member_ids, config)
    batch = _Batch(env_params, params, perturbations, obs_stats, run_keys)
    template = _info_template(env, env_params, key)
    carry = _initial_carry(runner, batch, reset_keys, template, obs_stats)
    final = runner.run(batch, carry)
    return RolloutResult(
        returns=final.returns.mean(axis=1),
        lengths=final.lengths.astype(final.returns.dtype).mean(axis=1),
        episode_returns=final.returns,
        episode_lengths=final.lengths,
        info={
            k: v.astype(final.returns.dtype).mean(axis=1) for k, v in final.info.items()
        },
        moments=final.moments,
    )


def _check_perturbations_read(env, env_params, policy, params, perturbations) -> None:
    """Refuse perturbed parameters whose layers ignore the noise (flax's own Dense,
    say): their rollouts would not see it, and `esrl.es.ES.tell` would move them by
    the noise alone."""

    def one_member(p):
        p = p.members() if isinstance(p, PairNoise) else p
        return jax.tree.map(lambda x: x[0], p)

    member = jax.eval_shape(one_member, perturbations)
    obs, _ = jax.eval_shape(env.reset, jax.random.PRNGKey(0), env_params)

    def apply(pert, params, carry, obs):
        return policy.apply({"params": params, PERTURB: pert}, carry, obs)

    carry = policy.initial_carry()
    unread = unread_perturbations(apply, member, params, carry, obs)
    if unread:
        roots = tuple(dict.fromkeys(path.split("/")[0] for path in unread))
        raise ValueError(
            f"the policy never reads the perturbation of {', '.join(unread)}: layers "
            "not from esrl.nn (flax.linen.Dense, say) ignore it, and ES would move "
            "their parameters by noise alone; build them from esrl.nn layers, or "
            f"leave them unperturbed and untrained with exclude={roots!r} (under "
            "nn.scan or nn.vmap, lift the 'perturb' collection as 'params' is)"
        )


def population_metrics(
    result: RolloutResult, es_metrics: dict | None = None
) -> dict[str, jax.Array]:
    """Scalars (and info vectors) of one generation; non-finite members are excluded."""
    finite = jnp.isfinite(result.returns)
    returns = jnp.where(finite, result.returns, jnp.nan)
    out = {
        "train_return_mean": jnp.nanmean(returns),
        "train_return_max": jnp.nanmax(returns),
        "train_return_min": jnp.nanmin(returns),
        "episode_length_mean": result.lengths.mean(),
        # per member: summed on the host, as a whole generation can pass int32's 2^31
        "generation_env_steps": result.episode_lengths.sum(axis=-1),
        "nonfinite_members": jnp.sum(~finite),
    }
    for k in ("grad_norm", "sigma", "skipped_update"):
        if es_metrics is not None and k in es_metrics:
            out[k] = es_metrics[k]
    for k, v in result.info.items():
        mask = finite.reshape(finite.shape + (1,) * (v.ndim - 1))
        out[k] = jnp.sum(jnp.where(mask, v, 0.0), 0) / jnp.maximum(finite.sum(), 1)
    return out
