"""The PPO run loop: the same run directory, logs, checkpoints and resume as ES.

`train_ppo` runs `esrl.agents.ppo.PPO` in jitted chunks of ``eval_every`` updates.
After each chunk it writes one metrics.jsonl line per update, evaluates the greedy
policy (`esrl.rollout`, exactly as ES is evaluated), moves the progress bar and saves
the whole `PPOState` atomically (`esrl.checkpoint`). Chunks end at multiples of
``eval_every`` (or at the run's last update) and everything random is drawn from the
checkpointed state key (the evaluation stream is separate), so a resumed run
reproduces the uninterrupted one. Each metrics line counts the transitions the update
left out for non-finite data and the gradient steps it skipped (``dropped_transitions``,
``skipped_steps``; see `esrl.agents.ppo`); the first update with any says so once.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from esrl import distributed as dist
from esrl import xla
from esrl.agents.ppo import PPO, Metrics, PPOConfig, PPOState
from esrl.checkpoint import load_checkpoint
from esrl.checks import SEED, require, require_env_id, require_hashable
from esrl.cli import import_plugins
from esrl.env import Environment
from esrl.logger import RunLogger, to_json
from esrl.policy import PolicySpec
from esrl.runs import (
    check_env_object,
    check_run_dir,
    mark_env_object,
    raise_if_interrupted,
    report_interrupt,
    report_unstarted,
    save_run,
)
from esrl.train import TrainResult


@dataclass(frozen=True)
class PPORunSpec:
    """A whole PPO run, stored as JSON in every checkpoint so `--resume` rebuilds it."""

    env: str
    """Registered environment id."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO hyperparameters (total_steps sets the length of the run)."""
    eval_every: int = 10
    """Updates per jitted chunk; evaluation, log flush and checkpoint after each."""
    eval_episodes: int = 16
    """Episodes of each greedy evaluation."""
    eval_horizon: int = 1000
    """Step limit of evaluation episodes (they stop early once all have ended)."""
    seed: int = 0
    """Seed of parameters, environments and evaluation."""
    plugins: tuple[str, ...] = ()
    """Modules imported first (they register user environments)."""
    progress: bool = True
    """Show a progress bar."""
    tensorboard: bool = False
    """Also write TensorBoard scalars to DIR/tb."""
    env_object: str | None = None
    """Class of the environment object passed as ``env=`` (None: made from ``env``);
    such a run is resumed and evaluated only with an environment passed again."""

    def __post_init__(self):
        require_env_id(self.env, "train_ppo")  # else a crash at the first checkpoint
        require(self, SEED, "seed")
        require(self, ">= 1", "eval_every", "eval_episodes", "eval_horizon")

    def to_dict(self) -> dict:
        """JSON-able description (``agent`` is always ``"ppo"``)."""
        return {"agent": "ppo", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> PPORunSpec:
        """Inverse of `to_dict`."""
        ppo = dict(d["ppo"])
        ppo["policy"] = PolicySpec(**ppo["policy"])
        rest = {k: v for k, v in d.items() if k not in ("agent", "ppo")}
        rest["plugins"] = tuple(rest.get("plugins", ()))
        return cls(ppo=PPOConfig(**ppo), **rest)

    def check_resumable(self, saved: PPORunSpec) -> None:
        """Raise unless this spec continues ``saved``."""
        mine, theirs = self.to_dict(), saved.to_dict()
        for d in (mine, theirs):
            # plugins only register environments: a resume may add some (`--plugin`)
            d.pop("progress"), d.pop("tensorboard"), d.pop("plugins")
            if not self.ppo.anneal_lr:  # the schedule depends on the run's length
                d["ppo"].pop("total_steps")
        if mine != theirs:
            diff = _differ(mine, theirs)
            raise ValueError(
                f"the checkpoint was written by a different run ({', '.join(diff)} "
                "differ); resume with the same settings (only --total-steps may "
                "change, and not with annealed learning rates)"
            )


def _differ(mine: dict, theirs: dict, prefix: str = "") -> list[str]:
    """The dotted names of the fields that differ (``ppo.lr``, ``ppo.policy.hidden``)."""
    out = []
    for k, v in mine.items():
        if isinstance(v, dict) and isinstance(theirs.get(k), dict):
            out += _differ(v, theirs[k], f"{prefix}{k}.")
        elif v != theirs.get(k):
            out.append(prefix + k)
    return out


KEY = jax.ShapeDtypeStruct((2,), np.uint32)  # the abstract jax.random.PRNGKey


class _Counters(NamedTuple):
    update: int = 0
    env_steps: int = 0
    wall_time_s: float = 0.0
    train_time_s: float = 0.0
    compile_s: float = 0.0
    eval_return: float | None = None


class Prepared(NamedTuple):
    """A validated run, ready to compile and train."""

    spec: PPORunSpec
    ppo: PPO
    state: PPOState | None
    """The restored state of a resumed run (None: a fresh run, initialised in fit)."""
    counters: _Counters
    out_dir: Path | None


def prepare(
    spec: PPORunSpec,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    env: Environment | None = None,
) -> Prepared:
    """Validate everything (before compiling anything) and restore a resumed state."""
    out_dir = None if out_dir is None else Path(out_dir)
    import_plugins(spec.plugins, out_dir if resume else None)
    saved = check_run_dir(out_dir, resume, overwrite)
    spec = mark_env_object(spec, env)
    if saved is not None:
        if saved.get("agent") != "ppo":
            raise ValueError(f"{str(out_dir)!r} holds a run of {saved.get('agent')}")
        check_env_object(out_dir, saved, env)
        spec.check_resumable(PPORunSpec.from_dict(saved))
    ppo = agent_for(spec, env)
    # traced, not compiled: an observation the policy refuses is reported here
    template = jax.eval_shape(ppo.init, KEY)
    state, counters = None, _Counters()
    if resume:
        state, meta = load_checkpoint(out_dir, template=template)
        counters = _Counters(**meta["counters"])
        if spec.ppo.total_steps < counters.env_steps:
            raise ValueError(
                f"total_steps {spec.ppo.total_steps} is fewer than the "
                f"{counters.env_steps} env steps the run in {out_dir} has done; "
                "total_steps is the total"
            )
    return Prepared(spec, ppo, state, counters, out_dir)


def _records(m: Metrics, c: _Counters, batch: int, dt: float, now: float) -> list:
    """One metrics line per update of a chunk (wall time interpolated)."""
    n = len(m.episodes)
    losses = {k: np.asarray(v) for k, v in m.losses._asdict().items()}
    out = []
    for i in range(n):
        episodes = int(m.episodes[i])
        mean = float(m.return_sum[i]) / episodes if episodes else None
        out.append({
            "iteration": c.update + i + 1,
            "env_steps": c.env_steps + (i + 1) * batch,
            "wall_time_s": now - dt * (n - 1 - i) / n,
            "train_return_mean": mean,
            "train_episodes": episodes,
            **{k: float(v[i]) for k, v in losses.items()},
            "dropped_transitions": int(m.dropped[i]),
            "skipped_steps": int(m.skipped[i]),
            "env_steps_per_s": batch * n / max(dt, 1e-9),
        })  # fmt: skip
    return out


def _nonfinite_warning(records: list[dict]) -> str | None:
    """What the first update that met non-finite data did about it, or None."""
    for r in records:
        dropped, skipped = r["dropped_transitions"], r["skipped_steps"]
        what = []
        if dropped:
            what.append(
                f"{dropped} transitions with a non-finite reward, observation or value "
                "were left out of the loss"
            )
        if skipped:
            what.append(
                f"{skipped} gradient steps with a non-finite gradient were skipped"
            )
        if what:
            return (
                f"update {r['iteration']}: {' and '.join(what)} (the parameters never "
                "see them; metrics.jsonl counts dropped_transitions and skipped_steps "
                "per update); check the environment's rewards and observations"
                + (", or lower --lr" if skipped else "")
            )
    return None


def _head(x: np.ndarray, n: int) -> np.ndarray:
    return x[:n]


def _chunk(update: int, spec: PPORunSpec) -> int:
    """Updates of the chunk starting after ``update`` (chunks end at multiples)."""
    every = spec.eval_every
    return min(every - update % every, spec.ppo.num_updates - update)


def _chunk_step(ppo: PPO, i: jax.Array, carry: tuple) -> tuple:
    state, metrics = carry
    state, m = ppo.update(state)
    return state, jax.tree.map(lambda buf, x: buf.at[i].set(x), metrics, m)


def run_chunk(ppo: PPO, capacity: int, state: PPOState, n: jax.Array):
    """``n <= capacity`` updates (n traced: one compile serves every chunk length).

    Returns the state and metrics [capacity] of which the first ``n`` are filled.
    """
    metrics = jax.tree.map(
        lambda x: jax.numpy.zeros((capacity, *x.shape), x.dtype),
        jax.eval_shape(ppo.update, state)[1],
    )
    step = partial(_chunk_step, ppo)
    return jax.lax.fori_loop(0, n, step, (state, metrics))


class _Compiled(NamedTuple):
    init: Any
    chunk: Any
    evaluate: Any


def agent_for(spec: PPORunSpec, env: Environment | None = None) -> PPO:
    """The run's PPO agent (built once per configuration and process)."""
    config = spec.ppo  # cached agents are shared by runs that differ in length only
    if not config.anneal_lr:
        config = dataclasses.replace(config, total_steps=config.batch_size)
    if env is not None:
        require_hashable(env)  # else the cache's bare "unhashable type"
    return _ppo(spec.env if env is None else env, config)


def eval_key(seed: int, update: int) -> jax.Array:
    """The key of the evaluation after ``update`` updates (stream 1 of the seed)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 1), update)


@functools.lru_cache(maxsize=4)
def _ppo(env: Environment | str, config: PPOConfig) -> PPO:
    return PPO(config, env)


@functools.lru_cache(maxsize=4)
def _compiled(ppo: PPO, every: int, episodes: int, horizon: int) -> _Compiled:
    """Init, chunk runner and evaluation, compiled once per process (reruns and
    resumes of the same configuration reuse them)."""
    init = xla.aot(ppo.init, KEY)
    state = jax.eval_shape(ppo.init, KEY)
    n = jax.ShapeDtypeStruct((), np.int32)
    chunk = xla.aot(partial(run_chunk, ppo, every), state, n)
    evaluate = xla.aot(
        ppo.evaluate, KEY, state, episodes, horizon, static_argnums=(2, 3)
    )
    return _Compiled(init, chunk, evaluate)


def train_ppo(
    spec: PPORunSpec,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    env: Environment | None = None,
) -> TrainResult:
    """Train ``spec`` up to ``spec.ppo.total_steps`` (the total, resumes included)."""
    return fit(prepare(spec, out_dir, resume=resume, overwrite=overwrite, env=env))


def _start(prepared: Prepared) -> tuple[_Compiled, PPOState]:
    """The compiled agent and the state to start from (initialised in a fresh run)."""
    spec, ppo, state, c, out_dir = prepared
    try:
        agent = _compiled(ppo, spec.eval_every, spec.eval_episodes, spec.eval_horizon)
        if state is None:
            state = agent.init(jax.random.fold_in(jax.random.PRNGKey(spec.seed), 0))
    except KeyboardInterrupt:  # nothing is written before the first chunk
        total = f"--total-steps {spec.ppo.total_steps}"
        report_unstarted(out_dir if c.update else None, total)
        raise
    return agent, state


def _summary(spec: PPORunSpec, c: _Counters) -> dict:
    return {
        "env": spec.env,
        "agent": "ppo",
        "final_eval_return": c.eval_return,
        "env_steps": c.env_steps,
        "wall_time_s": c.wall_time_s,
        "compile_s": c.compile_s,
        "env_steps_per_s": c.env_steps / max(c.train_time_s, 1e-9),
        "device": dist.describe(jax.devices()[:1]),
        "updates": c.update,
        "policy": spec.ppo.policy.kind,
    }


def fit(prepared: Prepared) -> TrainResult:
    """Compile, then run the updates a prepared run still has to do.

    A finished run (resumed without more steps) compiles nothing: its summary keeps
    the compile and wall times it had.
    """
    start = time.perf_counter()
    spec, _, state, c, out_dir = prepared
    total, batch = spec.ppo.num_updates, spec.ppo.batch_size
    if c.update < total or state is None:
        agent, state = _start(prepared)
        c = c._replace(compile_s=c.compile_s + time.perf_counter() - start)
    wall0 = c.wall_time_s - start  # wall time = wall0 + perf_counter()
    logger = RunLogger(
        out_dir, total, c.update, title=f"ppo {spec.env}", progress=spec.progress,
        tensorboard=spec.tensorboard,
    )  # fmt: skip
    warned = False
    try:
        while c.update < total:
            raise_if_interrupted()
            n = _chunk(c.update, spec)
            t = time.perf_counter()
            new_state, metrics = agent.chunk(state, np.int32(n))
            jax.block_until_ready(new_state)
            dt = time.perf_counter() - t
            metrics = jax.tree.map(partial(_head, n=n), jax.device_get(metrics))
            records = _records(metrics, c, batch, dt, wall0 + time.perf_counter())
            key = eval_key(spec.seed, c.update + n)
            # NaN becomes None, as in ES: metrics.jsonl and summary.json stay strict JSON
            records[-1]["eval_return"] = to_json(agent.evaluate(key, new_state))
            if not warned and (warning := _nonfinite_warning(records)) is not None:
                warned = True  # once: metrics.jsonl has the counts of every update
                logger.message(warning)
            for record in records:
                logger.log(record)
            state, c = new_state, c._replace(
                update=c.update + n, env_steps=records[-1]["env_steps"],
                wall_time_s=wall0 + time.perf_counter(), train_time_s=c.train_time_s + dt,
                eval_return=records[-1]["eval_return"],
            )  # fmt: skip
            save_run(out_dir, spec, state, c)
    except KeyboardInterrupt:
        save_run(out_dir, spec, state, c)
        report_interrupt(logger, out_dir, "update", c.update)
        raise
    summary = _summary(spec, c._replace(wall_time_s=wall0 + time.perf_counter()))
    try:
        logger.finish(summary)
    except KeyboardInterrupt:  # the checkpoint is final: a resume writes the rest
        report_interrupt(logger, out_dir, "update", c.update)
        raise
    return TrainResult(state, summary)


def ppo_throughput(
    env_id: str = "gymnax/CartPole-v1", config: PPOConfig | None = None, seed: int = 0
) -> dict:
    """Compile a whole run under one jit, then time it (env steps/s after compile).

    ``run_cpu_s`` (this process's CPU time) tells how much a shared CPU slowed it.
    """
    config = config or PPOConfig()
    ppo = PPO(config, env_id)
    state = jax.jit(ppo.init)(jax.random.PRNGKey(seed))
    t = time.perf_counter()
    run = xla.aot(ppo.train, state, config.num_updates, static_argnums=1)
    compile_s = time.perf_counter() - t
    t, cpu = time.perf_counter(), time.process_time()
    state, metrics = run(state)
    jax.block_until_ready(state)
    run_s, cpu_s = time.perf_counter() - t, time.process_time() - cpu
    steps = config.num_updates * config.batch_size
    last = jax.device_get(metrics)
    return {
        "env": env_id,
        "method": "ppo",
        "env_steps": steps,
        "compile_s": compile_s,
        "run_s": run_s,
        "run_cpu_s": cpu_s,
        "env_steps_per_s": steps / run_s,
        "train_return_last": float(last.return_sum[-1] / max(last.episodes[-1], 1)),
        "final_eval_return": float(ppo.evaluate(jax.random.PRNGKey(seed + 1), state)),
        "device": str(jax.devices()[0].device_kind),
    }


def main(argv: list[str] | None = None) -> int:
    """``esrl train --agent ppo`` (see `esrl.cli_ppo`)."""
    from esrl.cli_ppo import main as cli_main

    return cli_main(argv)
