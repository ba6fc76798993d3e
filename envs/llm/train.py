"""A complete ES fine-tuning run with the DESIGN.md outputs, used by train_countdown.py.

Writes ``metrics.jsonl`` (``env_steps`` counts generated tokens, ``train_return_mean``
is the population's mean reward, ``eval_return`` the held-out accuracy where
evaluated), ``summary.json`` (adds ``eval_accuracy_initial`` and
``final_eval_accuracy``), ``curve.png`` and a checkpoint of the ES state after every
evaluation and at the end; ``resume=True`` continues a run from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
from esrl.envs.llm.finetune import FinetuneConfig, Finetuner, finetune
from esrl.envs.llm.model import RecurrentLM, load_model
from esrl.envs.llm.tasks import Task

from esrl.checkpoint import has_checkpoint, load_checkpoint, read_meta, save_checkpoint
from esrl.logger import RunLogger


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a fine-tuning run (saved with the checkpoint)."""

    env: str
    """The environment id, e.g. ``llm/countdown-4`` (for the summary)."""
    agent: str
    """``eggroll`` or ``openai_es``."""
    agent_config: Any
    """An `EggrollConfig` or `OpenAIESConfig`."""
    finetune: FinetuneConfig
    """Generations, prompts per generation, split sizes, seeds."""
    model_dir: str | None = None
    """Checkpoint directory of the starting model (None: the shipped model)."""


def describe_device() -> str:
    """A short description of the JAX device(s) in use."""
    devices = jax.devices()
    return f"{jax.default_backend()}:{devices[0].device_kind} x{len(devices)}"


def _meta(run: RunConfig, extra: dict) -> dict:
    return {
        "env": run.env,
        "agent": run.agent,
        "agent_config": dataclasses.asdict(run.agent_config),
        "finetune": dataclasses.asdict(run.finetune),
        "model_dir": run.model_dir,
        **extra,
    }


def _check_resumable(out_dir: Path, run: RunConfig) -> dict:
    meta = read_meta(out_dir)
    saved = {k: meta.get(k) for k in ("env", "agent", "agent_config", "model_dir")}
    now = _meta(run, {})
    current = {k: now[k] for k in saved}
    if to_plain(saved) != to_plain(current):
        raise ValueError(
            f"{out_dir} holds a run with another configuration ({saved}); resume with "
            "the same --agent/--task/--model and ES settings, or choose another --out"
        )
    return meta


def to_plain(value: Any) -> Any:
    """Tuples to lists, recursively (so saved JSON compares equal to a config)."""
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def run_finetune(
    run: RunConfig, task: Task, out_dir: str | Path, resume: bool = False
) -> dict:
    """Fine-tune, evaluate before and after on the held-out set; returns the summary."""
    out_dir = Path(out_dir)
    if not resume and has_checkpoint(out_dir):
        raise ValueError(
            f"{out_dir} already holds a run; continue it with --resume {out_dir} "
            "or choose another --out"
        )
    model_config, params = load_model(run.model_dir)
    model = RecurrentLM(model_config)
    finetuner = Finetuner(model, task, run.agent_config.strategy(), run.finetune)
    state = finetuner.init(jax.random.key(run.finetune.seed), params)
    counters = {"env_steps": 0, "wall_time_s": 0.0, "compile_s": 0.0, "train_s": 0.0}
    start = time.perf_counter()
    if resume:
        meta = _check_resumable(out_dir, run)
        state, meta = load_checkpoint(out_dir, template=state)
        counters, initial = meta["counters"], meta["eval_accuracy_initial"]
    else:
        initial = finetuner.evaluate(params).accuracy
    done = int(state.generation)
    logger = RunLogger(
        out_dir, run.finetune.generations, done, title=f"{run.agent} {run.env}"
    )
    if not resume:
        logger.log({"iteration": 0, "env_steps": 0, "wall_time_s": 0.0,
                    "eval_return": initial})  # fmt: skip
    wall0 = counters["wall_time_s"] - start

    def save(generation: int, state) -> None:
        counters["wall_time_s"] = wall0 + time.perf_counter()
        meta = _meta(run, {"counters": counters, "eval_accuracy_initial": initial})
        save_checkpoint(out_dir, state, meta)

    def log(record: dict) -> None:
        first = record["iteration"] == done + 1
        if first:  # the first generation includes compiling ask / generate / tell
            counters["compile_s"] += record["generation_s"]
        else:
            counters["train_s"] += record["generation_s"]
        counters["env_steps"] += record["tokens"]
        counters["wall_time_s"] = wall0 + time.perf_counter()
        record.update(
            env_steps=counters["env_steps"],
            wall_time_s=counters["wall_time_s"],
            env_steps_per_s=record["tokens"] / record["generation_s"],
        )
        logger.log(record)

    try:
        state, _ = finetune(finetuner, state, done, log=log, on_checkpoint=save)
    except KeyboardInterrupt:
        save(int(state.generation), state)
        logger.close()
        raise
    final = finetuner.evaluate(state.params)
    logger.log({
        "iteration": int(state.generation), "env_steps": counters["env_steps"],
        "wall_time_s": wall0 + time.perf_counter(),
        "eval_return": final.accuracy, "eval_reward": final.reward_mean,
    })  # fmt: skip
    save(int(state.generation), state)
    summary = {
        "env": run.env,
        "agent": run.agent,
        "final_eval_return": final.accuracy,
        "env_steps": counters["env_steps"],
        "wall_time_s": counters["wall_time_s"],
        "compile_s": counters["compile_s"],
        "env_steps_per_s": counters["env_steps"] / max(counters["train_s"], 1e-9),
        "device": describe_device(),
        "eval_accuracy_initial": initial,
        "final_eval_accuracy": final.accuracy,
        "final_eval_reward": final.reward_mean,
        "eval_size": run.finetune.eval_size,
        "generations": int(state.generation),
        "population": run.agent_config.population,
    }
    logger.finish(summary)
    return summary
