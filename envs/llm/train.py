"""A complete ES fine-tuning run with esrl.logger's run outputs, used by train_countdown.py.

Writes ``metrics.jsonl`` (``env_steps`` counts generated tokens, ``train_return_mean``
is the population's mean reward, ``eval_return`` the held-out accuracy where
evaluated), ``summary.json`` (adds ``eval_accuracy_initial`` and
``final_eval_accuracy``), ``curve.png`` and a checkpoint of the ES state after every
evaluation and at the end; ``resume=True`` continues a run from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
from esrl.envs.llm.finetune import FinetuneConfig, Finetuner, finetune
from esrl.envs.llm.model import RecurrentLM, load_model
from esrl.envs.llm.tasks import Task

from esrl import distributed as dist
from esrl.checkpoint import load_checkpoint, read_meta, save_checkpoint
from esrl.logger import SUMMARY, RunLogger
from esrl.runs import check_run_dir


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
    # fields added since the checkpoint was written take their defaults
    defaults = dataclasses.asdict(type(run.agent_config)())
    saved["agent_config"] = {**defaults, **(saved["agent_config"] or {})}
    now = _meta(run, {})
    current = {k: now[k] for k in saved}
    if to_plain(saved) != to_plain(current):
        raise ValueError(
            f"{out_dir} holds a run with another configuration ({saved}); resume with "
            "the same --agent/--numbers/--model and ES settings, or choose another --out"
        )
    return meta


def to_plain(value: Any) -> Any:
    """Tuples to lists, recursively (so saved JSON compares equal to a config)."""
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


class _Recorder:
    """Counters, metrics and checkpoints of one run (wall time spans resumes)."""

    def __init__(
        self, run: RunConfig, out_dir: Path, counters: dict, initial: float,
        progress: bool = True,
    ):  # fmt: skip
        self.run, self.out_dir, self.counters = run, out_dir, counters
        self.initial, self.progress = initial, progress
        counters.setdefault("train_tokens", counters["env_steps"])  # older checkpoints
        self.wall0 = counters["wall_time_s"] - time.perf_counter()
        self.first: int | None = None
        self.saved: int | None = None
        """The generation of the last checkpoint written."""
        self.logger: RunLogger | None = None

    def open(self, done: int) -> None:
        """Start the logger at generation ``done`` (0: also log the initial eval)."""
        self.first = done + 1
        title = f"{self.run.agent} {self.run.env}"
        self.logger = RunLogger(self.out_dir, self.run.finetune.generations, done,
                                title=title, progress=self.progress)  # fmt: skip
        if done == 0:
            self.logger.log({"iteration": 0, "env_steps": 0, "wall_time_s": 0.0,
                             "eval_return": self.initial})  # fmt: skip

    def wall(self) -> float:
        """Wall time of the run so far (all sessions)."""
        self.counters["wall_time_s"] = self.wall0 + time.perf_counter()
        return self.counters["wall_time_s"]

    def save(self, generation: int, state) -> None:
        """Checkpoint ``state`` with the counters and the run configuration."""
        self.wall()
        extra = {"counters": self.counters, "eval_accuracy_initial": self.initial}
        save_checkpoint(self.out_dir, state, _meta(self.run, extra))
        self.saved = generation

    def log(self, record: dict) -> None:
        """Log one generation (the first of a session includes compilation).

        The counters change once the record is written, as the state in `finetune`
        does: an interrupt in between checkpoints neither.
        """
        c = dict(self.counters)
        if record["iteration"] == self.first:  # includes compilation
            c["compile_s"] += record["generation_s"]
        else:
            c["train_s"] += record["generation_s"]
            c["train_tokens"] += record["tokens"]
        c["env_steps"] += record["tokens"]
        c["wall_time_s"] = self.wall0 + time.perf_counter()
        rate = record["tokens"] / record["generation_s"]
        record.update(env_steps=c["env_steps"], wall_time_s=c["wall_time_s"],
                      env_steps_per_s=rate)  # fmt: skip
        self.logger.log(record)
        self.counters = c

    def finish(self, generation: int, final) -> dict:
        """Log the final evaluation, write summary.json and curve.png."""
        c = self.counters
        self.logger.log({"iteration": generation, "env_steps": c["env_steps"],
                         "wall_time_s": self.wall(), "eval_return": final.accuracy,
                         "eval_reward": final.reward_mean})  # fmt: skip
        summary = {
            "env": self.run.env,
            "agent": self.run.agent,
            "final_eval_return": final.accuracy,
            "env_steps": c["env_steps"],
            "wall_time_s": c["wall_time_s"],
            "compile_s": c["compile_s"],
            "env_steps_per_s": (  # None: no generation ran after the compiling one
                c["train_tokens"] / c["train_s"] if c["train_s"] > 0 else None
            ),
            "device": dist.describe(jax.devices()[:1]),  # one: no sharding
            "eval_accuracy_initial": self.initial,
            "final_eval_accuracy": final.accuracy,
            "final_eval_reward": final.reward_mean,
            "eval_size": self.run.finetune.eval_size,
            "generations": generation,
            "population": self.run.agent_config.population,
        }
        self.logger.finish(summary)
        return summary


class Prepared(NamedTuple):
    """A validated run, ready to fine-tune (`prepare_finetune`)."""

    finetuner: Finetuner
    state: Any
    recorder: _Recorder
    fresh: bool
    """A new run (its initial held-out accuracy is still to be measured)."""


def prepare_finetune(
    run: RunConfig,
    task: Task,
    out_dir: str | Path,
    resume: bool = False,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> Prepared:
    """Check the run directory, model and configuration; restore a resumed state.

    A fresh run refuses a directory that holds a run unless ``overwrite`` (the old
    run's checkpoint and outputs are removed when the new one starts). Bad input
    raises here (ValueError, FileNotFoundError), before any generation.
    """
    out_dir = Path(out_dir)
    # (a resumed run's saved configuration is checked below, not as esrl train's)
    check_run_dir(out_dir, resume=False, overwrite=overwrite or resume)
    model_config, params = load_model(run.model_dir)
    finetuner = Finetuner(
        RecurrentLM(model_config), task, run.agent_config.strategy(), run.finetune
    )
    state = finetuner.init(jax.random.key(run.finetune.seed), params)
    if not resume:
        counters = {"env_steps": 0, "wall_time_s": 0.0, "compile_s": 0.0,
                    "train_s": 0.0, "train_tokens": 0}  # fmt: skip
        recorder = _Recorder(run, out_dir, counters, 0.0, progress)
        return Prepared(finetuner, state, recorder, True)
    _check_resumable(out_dir, run)
    state, meta = load_checkpoint(out_dir, template=state)
    done, total = int(state.generation), run.finetune.generations
    if done > total:
        raise ValueError(
            f"--generations {total} is fewer than the {done} generations the run in "
            f"{out_dir} has done; --generations is the total"
        )
    initial = meta["eval_accuracy_initial"]
    recorder = _Recorder(run, out_dir, meta["counters"], initial, progress)
    return Prepared(finetuner, state, recorder, False)


def run_finetune(
    run: RunConfig, task: Task, out_dir: str | Path, resume: bool = False, **options
) -> dict:
    """Fine-tune, evaluate before and after on the held-out set; returns the summary.

    ``options``: `prepare_finetune`'s ``overwrite`` and ``progress``."""
    return train_prepared(prepare_finetune(run, task, out_dir, resume, **options))


def _finished_summary(out_dir: Path, generation: int) -> dict | None:
    """summary.json when it was written at ``generation`` (the run finished there)."""
    path = out_dir / SUMMARY
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("generations") == generation else None


def train_prepared(prepared: Prepared) -> dict:
    """Run a `prepare_finetune` result to its last generation; returns the summary.

    A finished run resumed without more generations returns its summary as it is
    (evaluating again would log the same final evaluation twice).
    """
    finetuner, state, recorder, fresh = prepared
    done = int(state.generation)
    if not fresh and done == finetuner.config.generations:
        summary = _finished_summary(recorder.out_dir, done)
        if summary is not None:
            return summary
    if fresh:
        recorder.initial = finetuner.evaluate(state.params).accuracy
    recorder.open(int(state.generation))
    try:
        state, _ = finetune(finetuner, state, int(state.generation), log=recorder.log,
                            on_checkpoint=recorder.save)  # fmt: skip
    except KeyboardInterrupt:  # finetune saved a checkpoint: match the metrics to it
        recorder.logger.close(keep_until=recorder.saved)
        raise
    except BaseException:
        recorder.logger.close()
        raise
    recorder.save(int(state.generation), state)
    final = finetuner.evaluate(state.params)
    return recorder.finish(int(state.generation), final)
