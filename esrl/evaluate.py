"""Evaluate a trained run again: ``esrl eval DIR`` and `evaluate_run`.

Loads the checkpoint of an ES or PPO run directory (``esrl train`` or a training
script) and evaluates its policy as training did: the unperturbed ES mean, or PPO's
greedy actor, with the run's observation statistics, horizon and action rule. By
default it repeats the evaluation training logs at the checkpoint's generation (or
update): the same key and episodes, so a finished run reproduces its final
``eval_return``; ``episodes`` and ``seed`` ask for a fresh one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from esrl import xla
from esrl.checkpoint import load_checkpoint, read_meta
from esrl.checks import SEED, require_value
from esrl.cli import import_plugins
from esrl.env import Environment
from esrl.rollout import RolloutConfig, evaluate_population
from esrl.runs import check_env_object


class LoadedRun(NamedTuple):
    """A trained policy and what its evaluation needs."""

    agent: str
    """eggroll, openai_es or ppo."""
    env_id: str
    """Registered id of the run's environment."""
    env: Any
    """The environment (`esrl.make(env_id)`)."""
    env_params: Any
    """Its parameters."""
    policy: Any
    """The `esrl.policy.Policy` (PPO's includes its critic)."""
    params: Any
    """Trained parameters (``policy.apply({"params": params}, carry, obs)``)."""
    obs_stats: Any
    """Observation statistics the policy was trained with."""
    rollout: RolloutConfig
    """The run's evaluation rollout (horizon, episodes, normalisation, greedy actions)."""
    key: jax.Array
    """The key of the evaluation training logs at the checkpoint."""
    step: int
    """Generations (ES) or updates (PPO) the checkpoint has done."""


def load_run(run_dir: str | Path, env: Environment | None = None) -> LoadedRun:
    """Restore the policy of the ES or PPO run in ``run_dir`` (nothing is compiled).

    ``env``: the environment object the run was trained on, where one was passed to
    training as ``env=`` (otherwise the run's id makes it).
    """
    meta = read_meta(run_dir)
    spec = meta.get("spec")
    if not isinstance(spec, dict) or "env" not in spec:
        raise ValueError(
            f"{str(run_dir)!r} holds no esrl train run (an LLM fine-tuning run is "
            "evaluated by scripts/train_countdown.py)"
        )
    import_plugins(tuple(spec.get("plugins", ())), run_dir)
    check_env_object(run_dir, spec, env)
    if spec.get("agent") == "ppo":
        return _load_ppo(run_dir, spec, env)
    return _load_es(run_dir, spec, env)


def _load_es(run_dir, saved: dict, env) -> LoadedRun:
    from esrl.registry import make
    from esrl.train import ESTrainer, RunSpec

    spec = RunSpec.from_dict(saved)
    train = dataclasses.replace(spec.train, num_devices=1, block=None)
    env = make(spec.env) if env is None else env
    trainer = ESTrainer(env, spec.agent_config.strategy(), train)
    state, _ = load_checkpoint(run_dir, template=trainer.init(jax.random.PRNGKey(0)))
    return LoadedRun(
        spec.agent, spec.env, trainer.env, trainer.env_params, trainer.policy,
        state.es.params, state.obs_stats, trainer.eval_rollout,
        trainer.eval_key(state), int(state.es.generation),
    )  # fmt: skip


def _load_ppo(run_dir, saved: dict, env) -> LoadedRun:
    from esrl.train_ppo import KEY, PPORunSpec, agent_for, eval_key

    spec = PPORunSpec.from_dict(saved)
    ppo = agent_for(spec, env)  # the agent the run loop built
    state, meta = load_checkpoint(run_dir, template=jax.eval_shape(ppo.init, KEY))
    update = int(meta["counters"]["update"])
    return LoadedRun(
        "ppo", spec.env, ppo.env, ppo.env_params, ppo.policy, state.params["params"],
        state.obs_stats, ppo.eval_rollout(spec.eval_episodes, spec.eval_horizon),
        eval_key(spec.seed, update), update,
    )  # fmt: skip


def evaluate_run(
    run_dir: str | Path,
    episodes: int | None = None,
    seed: int | None = None,
    env: Environment | None = None,
) -> dict:
    """Mean, spread and length of the run's evaluation returns (see the module doc).

    Means of the environment's ``info`` entries (e.g. Craftax achievements) come as
    ``eval_<key>``, as in the run's metrics.
    """
    if episodes is not None:
        require_value("episodes", episodes, ">= 1")
    if seed is not None:
        require_value("seed", seed, SEED)
    run = load_run(run_dir, env)
    rollout, key = run.rollout, run.key
    if episodes is not None:
        rollout = dataclasses.replace(rollout, episodes=episodes)
    if seed is not None:
        key = jax.random.PRNGKey(seed)

    def evaluate(key, params, obs_stats):
        return evaluate_population(
            key, run.env, run.env_params, run.policy, params, None,
            rollout, obs_stats, num_members=1,
        )  # fmt: skip

    # compiled as training compiles it: run op by op, XLA rounds differently (a
    # 6-generation CartPole run gave 158.625 for its logged 159.6875)
    args = (key, run.params, run.obs_stats)
    result = xla.aot(evaluate, *args)(*args)
    returns = np.asarray(result.episode_returns[0], np.float64)
    info = {f"eval_{k}": np.asarray(v[0]).tolist() for k, v in result.info.items()}
    return info | {
        "env": run.env_id, "agent": run.agent, "step": run.step,
        "episodes": rollout.episodes, "horizon": rollout.horizon,
        "eval_return": float(result.returns[0]), "return_std": float(returns.std()),
        "return_min": float(returns.min()), "return_max": float(returns.max()),
        "eval_length": float(result.lengths[0]),
    }  # fmt: skip
