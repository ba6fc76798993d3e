"""The ES training loop shared by EGGROLL and OpenAI-ES.

One jitted generation step does ask -> rollout -> shape fitness -> tell: members are
split over the devices (`esrl.distributed`), each device regenerates its members'
perturbations from keys and rolls them out (`esrl.rollout`), only per-member results are
gathered, and the update runs replicated. Around it, `train` runs the host loop:
periodic evaluation of the unperturbed mean policy on M episodes, logs and progress
(`esrl.logger`), atomic checkpoints every K generations, at the end and on Ctrl-C
(`esrl.checkpoint`), and exact resume. The run's configuration (`TrainConfig`,
`RunSpec`) is defined in `esrl.train_spec`.

Exact resume holds because nothing random is carried between generations: generation
g rolls out with ``fold_in(fold_in(key, 0), g)`` and is evaluated with
``fold_in(fold_in(key, 1), g)``, the noise is addressed by (generation, member), and the
checkpoint holds the whole `TrainState` plus the host counters. Evaluations never
touch the training stream.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from esrl import distributed as dist
from esrl import xla
from esrl.checkpoint import load_checkpoint
from esrl.checks import require_hashable
from esrl.cli import import_plugins
from esrl.env import Environment
from esrl.es import ES, ESState
from esrl.logger import RunLogger, to_json
from esrl.noise import check_rank, keeps_noise
from esrl.normalize import ObsStats, init_obs_stats, update_obs_stats
from esrl.policy import make_policy
from esrl.rollout import (
    RolloutResult,
    evaluate_population,
    observation_shape,
    population_metrics,
)
from esrl.runs import (
    check_env_object,
    check_run_dir,
    mark_env_object,
    raise_if_interrupted,
    report_interrupt,
    report_unstarted,
    save_run,
)
from esrl.train_spec import RunSpec, TrainConfig

CPU_BLOCK = 2048
"""Default members per rollout block on a CPU: EGGROLL at population 16384 (MLP 256x2,
benchmark population sweep at bab45a0) ran at 0.76 of the speed of one-block plain
inference in one block, at 0.94 of it in blocks of 2048 (0.90 with plain in the same
blocks)."""


def block_size(share: int, block: int | None, platform: str) -> int:
    """Members per sequential rollout block of a device's ``share`` of the population."""
    if block is None:
        if platform != "cpu" or share <= CPU_BLOCK:
            return share
        whole_pairs = share % 2 == 0
        divisors = [d for d in range(1, CPU_BLOCK + 1) if share % d == 0]
        best = max(d for d in divisors if d % 2 == 0 or not whole_pairs)
        # without a divisor near CPU_BLOCK, one big block beats many tiny ones
        return best if best >= CPU_BLOCK // 8 else share
    if block < 1 or share % block:
        raise ValueError(
            f"block {block} does not divide the {share} members of each device; "
            f"use a divisor of {share} (e.g. {block_size(share, None, 'cpu')}), or leave "
            "it unset for the default"
        )
    return block


@struct.dataclass
class TrainState:
    """Everything a generation step reads and writes (checkpointed as one pytree)."""

    es: ESState
    """Parameters, optimizer state, noise key, generation counter, sigma."""
    obs_stats: ObsStats
    """Observation statistics shared by all members."""
    key: jax.Array
    """Root of the rollout (stream 0) and evaluation (stream 1) keys."""


class TrainResult(NamedTuple):
    """What `train` returns."""

    state: TrainState
    summary: dict


class ESTrainer:
    """The jittable pieces of ES training for one env, strategy and configuration."""

    def __init__(
        self, env: Environment, strategy: ES, config: TrainConfig, env_params=None
    ):
        require_hashable(env)
        self.env, self.strategy, self.config = env, strategy, config
        self.env_params = env.default_params if env_params is None else env_params
        self.policy = make_policy(
            config.policy,
            env.action_space(self.env_params),
            observation_space=env.observation_space(self.env_params),
            normalize_obs=config.rollout.normalize_obs,
        )
        self.population = strategy.config.population
        self.mesh = dist.population_mesh(self.population, config.num_devices)
        platform = self.mesh.devices.flat[0].platform
        self.block = block_size(
            self.population // self.mesh.size, config.block, platform
        )
        self.eval_rollout = config.eval_rollout()
        shapes = self.param_shapes()
        check_rank(shapes, strategy.config.noise)
        # whether a rollout hands its noise to the update instead of it being redrawn;
        # only blocks of whole antithetic pairs draw it per pair (`PairNoise`)
        self.keeps_noise = self.block % 2 == 0 and keeps_noise(
            shapes, strategy.config.noise, self.population
        )

    def param_shapes(self):
        """Abstract policy parameters (shapes and dtypes; nothing is compiled)."""
        key = jax.random.PRNGKey(0)
        obs, _ = jax.eval_shape(self.env.reset, key, self.env_params)
        carry = self.policy.initial_carry()
        return jax.eval_shape(self.policy.init, key, carry, obs)["params"]

    def init(self, key: jax.Array) -> TrainState:
        """Fresh state from ``key``, replicated over the mesh."""
        k_init, k_noise, k_roll = jax.random.split(key, 3)
        obs, _ = self.env.reset(k_init, self.env_params)
        carry = self.policy.initial_carry()
        params = jax.jit(self.policy.init)(k_init, carry, obs)["params"]
        es_state = self.strategy.init(k_noise, params)
        stats = init_obs_stats(observation_shape(self.env, self.env_params))
        return dist.put_replicated(TrainState(es_state, stats, k_roll), self.mesh)

    def _rollout_shard(self, ids: jax.Array, key: jax.Array, state: TrainState):
        """Roll out the members ``ids`` of this device, one block after another."""
        blocks = ids.reshape(-1, self.block)
        if blocks.shape[0] == 1:
            return self._rollout_block(ids, key, state)
        results = jax.lax.map(lambda b: self._rollout_block(b, key, state), blocks)
        return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), results)

    def _rollout_block(self, ids: jax.Array, key: jax.Array, state: TrainState):
        """Perturb and roll out the members ``ids``; their unit noise, if it is kept."""
        # Low-rank noise stays one copy per pair (esrl.noise.PairNoise): the layers'
        # reads of it fuse with the expansion to members. Full-rank matrices feed
        # batched matmuls, where an expansion in the loop would be a copy every step.
        compact = not self.strategy.config.noise.full_rank
        perts = self.strategy.ask(state.es, ids[0], ids.shape[0], compact=compact)
        result = evaluate_population(
            key, self.env, self.env_params, self.policy, state.es.params, perts,
            self.config.rollout, state.obs_stats, member_ids=ids,
        )  # fmt: skip
        return result, perts.unit if self.keeps_noise else None

    def rollout(self, state: TrainState) -> tuple[RolloutResult, dict | None]:
        """Roll out the whole population of this generation (gathered on every device).

        Returns the result and, where `keeps_noise`, the population's unit noise (one
        entry per antithetic pair, for `esrl.es.ES.tell`), else None.
        """
        key = jax.random.fold_in(jax.random.fold_in(state.key, 0), state.es.generation)
        ids = jnp.arange(self.population)
        sharded = dist.shard_members(self._rollout_shard, self.mesh, 2)
        return dist.gather(sharded(ids, key, state), self.mesh)

    def generation(self, state: TrainState) -> tuple[TrainState, dict[str, jax.Array]]:
        """ask -> rollout -> shape -> tell; returns the new state and its metrics."""
        result, unit = self.rollout(state)
        es_state, es_metrics = self.strategy.tell(state.es, result.returns, unit=unit)
        stats, valid = state.obs_stats, jnp.isfinite(result.returns)
        if self.config.rollout.normalize_obs:
            stats = update_obs_stats(stats, result.moments, valid)
        metrics = population_metrics(result, es_metrics)
        return state.replace(es=es_state, obs_stats=stats), metrics

    @staticmethod
    def eval_key(state: TrainState) -> jax.Array:
        """The key of the evaluation at ``state``'s generation (stream 1 of its key)."""
        return jax.random.fold_in(jax.random.fold_in(state.key, 1), state.es.generation)

    def evaluate(self, state: TrainState) -> dict[str, jax.Array]:
        """Mean return (and info) of the unperturbed policy over M episodes."""
        result = evaluate_population(
            self.eval_key(state), self.env, self.env_params, self.policy, state.es.params, None,
            self.eval_rollout, state.obs_stats, num_members=1,
        )  # fmt: skip
        out = {"eval_return": result.returns[0], "eval_length": result.lengths[0]}
        out.update({f"eval_{k}": v[0] for k, v in result.info.items()})
        return out


class Counters(NamedTuple):
    """Host-side counters, checkpointed with the state."""

    generation: int = 0
    env_steps: int = 0
    wall_time_s: float = 0.0
    train_time_s: float = 0.0
    compile_s: float = 0.0
    eval_return: float | None = None


class Prepared(NamedTuple):
    """A validated run, ready to compile and train."""

    spec: RunSpec
    trainer: ESTrainer
    state: TrainState
    counters: Counters
    out_dir: Path | None


def prepare(
    spec: RunSpec,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    env: Environment | None = None,
) -> Prepared:
    """Validate everything (before compiling anything), then build trainer and state."""
    out_dir = None if out_dir is None else Path(out_dir)
    import_plugins(spec.plugins, out_dir if resume else None)
    saved = check_run_dir(out_dir, resume, overwrite)
    spec = mark_env_object(spec, env)
    if saved is not None:
        check_env_object(out_dir, saved, env)
        spec.check_resumable(RunSpec.from_dict(saved))
        _check_resumed_layout(spec, out_dir)
    if env is None:
        from esrl.registry import make

        env = make(spec.env)
    trainer = ESTrainer(env, spec.agent_config.strategy(), spec.train)
    state = trainer.init(jax.random.PRNGKey(spec.train.seed))
    counters = Counters()
    if resume:
        state, meta = load_checkpoint(out_dir, template=state)
        state = dist.put_replicated(state, trainer.mesh)
        counters = Counters(**meta["counters"])
        if spec.train.generations < counters.generation:
            raise ValueError(
                f"generations {spec.train.generations} is fewer than the "
                f"{counters.generation} generations the run in {out_dir} has done; "
                "generations is the total"
            )
    return Prepared(spec, trainer, state, counters, out_dir)


def _check_resumed_layout(spec: RunSpec, out_dir: Path) -> None:
    """Raise unless the resumed ``spec`` splits over the devices visible now.

    A resumed run keeps its population (and its stored ``--block``), so where another
    machine has other devices the advice is ``--devices`` or ``--block``, which a
    resume takes, not ``--population`` (`esrl.distributed.check_population`'s).
    """
    population, wanted = spec.agent_config.population, spec.train.num_devices
    visible = len(dist.select_devices())
    if wanted is not None and wanted > visible and jax.process_count() == 1:
        raise ValueError(
            f"the run in {out_dir} splits its population over {wanted} devices "
            f"(--devices {wanted}) and {visible} {'is' if visible == 1 else 'are'} "
            f"visible; resume it with --devices {_most_devices(population, visible)}"
        )
    devices = dist.select_devices(wanted)
    n = len(devices)
    try:  # the checks a fresh run makes, with advice a resume can follow
        dist.check_population(population, n)
    except ValueError:
        fits = _most_devices(population, n)
        raise ValueError(
            f"population {population} of the run in {out_dir} does not split over the "
            f"{n} devices, and a resumed run keeps its population; resume it with "
            f"--devices {fits}"
        ) from None
    share, block, platform = population // n, spec.train.block, devices[0].platform
    try:
        block_size(share, block, platform)
    except ValueError:
        fits = block_size(share, None, platform)
        raise ValueError(
            f"block {block} does not divide the {share} members of each device ({n} "
            f"in all); resume the run in {out_dir} with --block {fits} (a divisor of "
            f"{share})" + (" or with fewer devices (--devices)" if n > 1 else "")
        ) from None


def _most_devices(population: int, visible: int) -> int:
    """The most of ``visible`` devices that ``population`` splits evenly over."""
    return max(d for d in range(1, visible + 1) if population % d == 0)


def _record(g: int, m: dict, counters: Counters, dt: float) -> dict:
    steps = int(np.sum(m.pop("generation_env_steps"), dtype=np.int64))
    return to_json({
        "iteration": g,
        "env_steps": counters.env_steps + steps,
        "wall_time_s": counters.wall_time_s,
        **m,
        "env_steps_per_s": steps / max(dt, 1e-9),
    })  # fmt: skip


def _summary(spec: RunSpec, trainer: ESTrainer, c: Counters) -> dict:
    return {
        "env": spec.env,
        "agent": spec.agent,
        "final_eval_return": c.eval_return,
        "env_steps": c.env_steps,
        "wall_time_s": c.wall_time_s,
        "compile_s": c.compile_s,
        "env_steps_per_s": c.env_steps / max(c.train_time_s, 1e-9),
        "device": dist.describe(trainer.mesh.devices.ravel()),
        "generations": c.generation,
        "population": trainer.population,
        "policy": spec.train.policy.kind,
    }


def train(
    spec: RunSpec,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    env: Environment | None = None,
) -> TrainResult:
    """Train ``spec`` up to ``spec.train.generations`` (the total, resumes included)."""
    return fit(prepare(spec, out_dir, resume=resume, overwrite=overwrite, env=env))


def fit(prepared: Prepared) -> TrainResult:
    """Compile, then run the generations a prepared run still has to do.

    A finished run (resumed without more generations) compiles nothing: its summary
    keeps the compile and wall times it had.
    """
    start = time.perf_counter()
    spec, trainer, state, c, out_dir = prepared
    cfg = spec.train
    if c.generation < cfg.generations:
        try:
            step = xla.aot(trainer.generation, state)
            evaluate = xla.aot(trainer.evaluate, state)
        except KeyboardInterrupt:
            report_unstarted(
                out_dir if c.generation else None, f"--generations {cfg.generations}"
            )
            raise
        c = c._replace(compile_s=c.compile_s + time.perf_counter() - start)
    wall0 = c.wall_time_s - start  # wall time = wall0 + perf_counter()
    logger = RunLogger(
        out_dir, cfg.generations, c.generation, title=f"{spec.agent} {spec.env}",
        progress=cfg.progress, tensorboard=cfg.tensorboard,
        enabled=dist.is_main_process(),
    )  # fmt: skip
    try:
        for g in range(c.generation + 1, cfg.generations + 1):
            raise_if_interrupted()
            t = time.perf_counter()
            new_state, m = step(state)
            m = dist.to_host(m)
            dt = time.perf_counter() - t
            c = c._replace(wall_time_s=wall0 + time.perf_counter())
            record = _record(g, m, c, dt)
            if g % cfg.eval_every == 0 or g == cfg.generations:
                record.update(to_json(dist.to_host(evaluate(new_state))))
            _warn_nonfinite(logger, g, record, trainer.population)
            logger.log(record)
            state, c = new_state, c._replace(
                generation=g, env_steps=record["env_steps"],
                train_time_s=c.train_time_s + dt,
                eval_return=record.get("eval_return", c.eval_return),
            )  # fmt: skip
            if g % cfg.checkpoint_every == 0 or g == cfg.generations:
                save_run(out_dir, spec, state, c)
    except KeyboardInterrupt:
        save_run(out_dir, spec, state, c)
        report_interrupt(logger, out_dir, "generation", c.generation)
        raise
    c = c._replace(wall_time_s=wall0 + time.perf_counter())
    summary = _summary(spec, trainer, c)
    try:
        logger.finish(summary)
    except KeyboardInterrupt:  # the checkpoint is final: a resume writes the rest
        report_interrupt(logger, out_dir, "generation", c.generation)
        raise
    return TrainResult(state, summary)


def _warn_nonfinite(logger: RunLogger, g: int, record: dict, population: int) -> None:
    if record["nonfinite_members"]:
        logger.message(
            f"generation {g}: {record['nonfinite_members']} of {population} members "
            "returned NaN/inf; they rank as the worst and are left out of the statistics"
        )
    if record.get("skipped_update"):
        logger.message(
            f"generation {g}: the optimizer's update was not finite; the parameters "
            "and optimizer state were kept"
        )
