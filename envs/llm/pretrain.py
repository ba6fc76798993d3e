"""Backprop pretraining of the recurrent LM on an in-process synthetic corpus.

The corpus is worked solutions in the exact prompt/answer format of `tasks`:
mostly 3-number Countdown, a little 4-number Countdown and short chain sums in
reasoning-gym's ``chain_sum`` wording.

Room for ES, on purpose: in `PretrainConfig.equation_fraction` of the Countdown
solutions the answer block is written as an equation, ``<answer>(8*3)-5=19</answer>``,
a common style that the strict Countdown reward rejects (it wants an expression). The
pretrained model therefore mixes both styles, as a model trained on mixed-style data
would, and an outcome reward alone can teach it the accepted one; fine-tuning also has
3-number arithmetic mistakes and a weak 4-number skill to work on. Problems come from
each task's train split, so no held-out prompt (the first `EVAL_POOL` of the eval
stream) is ever trained on. The loss is next-token cross-entropy on completion tokens.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from esrl.envs.llm.model import LMConfig, RecurrentLM, init_params
from esrl.envs.llm.tasks import Problem, Task, countdown_task, make_splits
from esrl.envs.llm.tokenizer import encode, pad_batch

from esrl.checkpoint import (
    checkpoint_path,
    has_checkpoint,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from esrl.checks import SEED, require
from esrl.runs import raise_if_interrupted, sigterm_as_interrupt

EVAL_POOL = 1000
"""Held-out prompts excluded from pretraining: eval splits up to this size are clean."""
MAX_CORPUS = 50_000
"""Most distinct problems per corpus task (batches sample them with replacement)."""


@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining run."""

    steps: int = 1300
    """Optimizer steps."""
    batch_size: int = 64
    """Sequences per step."""
    lr: float = 2e-3
    """Peak learning rate (AdamW, linear warmup then cosine decay)."""
    warmup: int = 200
    """Warmup steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    mix: tuple[tuple[str, float], ...] = (
        ("countdown-3", 0.88),
        ("countdown-4", 0.07),
        ("chain_sum", 0.05),
    )
    """(corpus task, fraction of batches); tasks: countdown-N, chain_sum."""
    equation_fraction: float = 0.5
    """Fraction of Countdown answers written as ``expr=target`` (rejected by the
    reward; see the module docstring)."""
    seed: int = 0
    """Seed of data order and initialisation (splits are always seed 0)."""
    time_limit_s: float | None = None
    """Stop early (and keep the weights) after this many seconds of training."""

    def __post_init__(self):
        require(self, ">= 1", "steps", "batch_size")
        require(self, "> 0", "lr")
        require(self, ">= 0", "warmup", "weight_decay")
        require(self, SEED, "seed")
        require(self, "in [0, 1]", "equation_fraction")
        if self.time_limit_s is not None:  # 0 would train one step, not "no limit"
            require(self, "> 0", "time_limit_s")


def chain_sum_task() -> Task:
    """reasoning-gym ``chain_sum`` (2-4 terms, 1-2 digits), worked left to right."""
    from esrl.envs.llm.tasks import reasoning_gym_task

    base = reasoning_gym_task("chain_sum", min_terms=2, max_terms=4, max_digits=2)

    def generate(seed: int, count: int) -> list[Problem]:
        out = []
        for problem in base.generate(seed, count):
            terms = problem.data[1]["metadata"]["expression"].split()
            value, steps = int(terms[0]), []
            for op, term in zip(terms[1::2], terms[2::2], strict=True):
                new = value + int(term) if op == "+" else value - int(term)
                steps.append(f"{value}{op}{term}={new}")
                value = new
            answer = f"<think>{chr(10).join(steps)}</think>\n<answer>{value}</answer>"
            out.append(problem._replace(answer=answer))
        return out

    return Task("reasoning-gym/chain_sum", generate, base.score, base.max_new_tokens)


def corpus_task(name: str) -> Task:
    """A corpus task by name: ``countdown-3``, ``countdown-4`` or ``chain_sum``."""
    if name.startswith("countdown-"):
        return countdown_task(int(name.split("-")[1]))
    if name == "chain_sum":
        return chain_sum_task()
    raise ValueError(f"unknown corpus task {name!r}; use countdown-N or chain_sum")


def encode_examples(problems: list[Problem]) -> tuple[np.ndarray, np.ndarray]:
    """``BOS prompt answer EOS`` ids [N, L] and a mask [N, L] of completion targets."""
    seqs, masks = [], []
    for problem in problems:
        prompt = encode(problem.prompt, bos=True)
        full = prompt + encode(problem.answer, eos=True)
        seqs.append(full)
        masks.append([0] * len(prompt) + [1] * (len(full) - len(prompt)))
    ids, _ = pad_batch(seqs)
    mask, _ = pad_batch(masks, ids.shape[1], pad=0)
    return ids, mask.astype(np.float32)


def as_equation(problem: Problem) -> Problem:
    """The same Countdown solution with ``=target`` appended inside the answer block."""
    answer = problem.answer.replace("</answer>", f"={problem.data['target']}</answer>")
    return problem._replace(answer=answer)


def build_corpus(config: PretrainConfig) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, ids, mask) per corpus task, sized to the batches it will fill."""
    corpus = []
    rng = np.random.default_rng([config.seed, 1])
    for name, fraction in config.mix:
        size = int(config.steps * config.batch_size * fraction) + 1
        size = min(max(size, 256), MAX_CORPUS)
        train = make_splits(corpus_task(name), 0, size, EVAL_POOL, strict=False).train
        if name.startswith("countdown"):
            flip = rng.random(len(train)) < config.equation_fraction
            pairs = zip(train, flip, strict=True)
            train = [as_equation(p) if f else p for p, f in pairs]
        corpus.append((name, *encode_examples(train)))
    return corpus


def sequence_loss(params, model: RecurrentLM, ids: jax.Array, mask: jax.Array):
    """Mean next-token cross-entropy over masked targets; ids, mask: [B, L]."""
    logits, _ = jax.vmap(lambda t: model.apply({"params": params}, t))(ids[:, :-1])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:])
    weights = mask[:, 1:]
    return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def make_optimizer(config: PretrainConfig) -> optax.GradientTransformation:
    """AdamW with warmup-cosine schedule and global-norm clipping."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        config.lr,
        config.warmup,
        max(config.steps, config.warmup + 1),
        config.lr / 20,
    )
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, weight_decay=config.weight_decay),
    )


def pretrain(
    config: PretrainConfig,
    model_config: LMConfig,
    log: Callable[[dict], None] | None = None,
    log_every: int = 100,
    checkpoint_dir: str | Path | None = None,
) -> tuple[dict, list[dict]]:
    """Train from scratch; returns (params, history of logged records).

    With ``checkpoint_dir`` the run is checkpointed there at every logged step and when
    interrupted (Ctrl-C, SIGTERM), and a checkpoint found there is continued (same
    configuration), exactly as if the run had never stopped; ``wall_time_s`` counts
    from the (re)start.
    """
    model = RecurrentLM(model_config)
    optimizer = make_optimizer(config)
    params = init_params(jax.random.key(config.seed), model_config)
    opt_state = optimizer.init(params)
    corpus = build_corpus(config)
    weights = np.array([f for _, f in config.mix]) / sum(f for _, f in config.mix)
    rng = np.random.default_rng(config.seed)
    run = _Committed(0, params, opt_state, rng.bit_generator.state, (), ())
    if checkpoint_dir is not None and has_checkpoint(checkpoint_dir):
        run = _restore(checkpoint_dir, run, config, model_config)
        rng.bit_generator.state = run.rng

    @jax.jit
    def update(params, opt_state, ids, mask):
        loss, grads = jax.value_and_grad(sequence_loss)(params, model, ids, mask)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = time.perf_counter()
    with sigterm_as_interrupt():
        try:
            for step in range(run.step + 1, config.steps + 1):
                raise_if_interrupted()
                _, ids, mask = corpus[rng.choice(len(corpus), p=weights)]
                rows = rng.integers(0, ids.shape[0], config.batch_size)
                params, opt_state, loss = update(
                    run.params, run.opt_state, ids[rows], mask[rows]
                )
                losses, history = (*run.losses, loss), run.history
                elapsed = time.perf_counter() - start
                out_of_time = (
                    config.time_limit_s is not None and elapsed > config.time_limit_s
                )
                logged = step % log_every == 0 or step == config.steps or out_of_time
                if logged:
                    record = {
                        "step": step,
                        "loss": float(np.mean(jax.device_get(losses))),
                        "wall_time_s": round(elapsed, 1),
                    }
                    losses, history = (), (*history, record)
                    if log is not None:
                        log(record)
                # one assignment: an interrupt sees this step whole or not at all
                run = _Committed(
                    step, params, opt_state, rng.bit_generator.state, losses, history
                )
                if logged and checkpoint_dir is not None:
                    _save(checkpoint_dir, run, config, model_config)
                if out_of_time:
                    break
        except KeyboardInterrupt:
            if checkpoint_dir is not None:
                _save(checkpoint_dir, run, config, model_config)
            raise
    return run.params, list(run.history)


class _Committed(NamedTuple):
    """Pretraining after its last whole step: what a checkpoint holds."""

    step: int
    params: dict
    opt_state: Any
    rng: dict
    """The data order's NumPy generator state."""
    losses: tuple
    """Losses since the last logged record (float32 scalars)."""
    history: tuple


def _settings(config: PretrainConfig, model_config: LMConfig) -> dict:
    """What a resumed pretraining must share with its checkpoint (not the time limit)."""
    return {
        "pretrain": {**dataclasses.asdict(config), "time_limit_s": None},
        "model": dataclasses.asdict(model_config),
    }


def _save(directory, run: _Committed, config, model_config) -> None:
    meta = {
        "settings": _settings(config, model_config),
        "step": run.step,
        "rng": run.rng,
        "losses": [float(x) for x in jax.device_get(run.losses)],
        "history": list(run.history),
    }
    save_checkpoint(directory, (run.params, run.opt_state), meta)


def _restore(directory, fresh: _Committed, config, model_config) -> _Committed:
    meta = read_meta(directory)
    settings = json.loads(json.dumps(_settings(config, model_config)))  # as stored
    if meta.get("settings") != settings:
        raise ValueError(
            f"the checkpoint in {directory} was written by another pretraining (other "
            "settings); continue it with the settings it was started with, or remove "
            f"{checkpoint_path(directory)}"
        )
    (params, opt_state), meta = load_checkpoint(
        directory, template=(fresh.params, fresh.opt_state)
    )
    losses = tuple(np.float32(x) for x in meta["losses"])
    history = tuple(meta["history"])
    return _Committed(meta["step"], params, opt_state, meta["rng"], losses, history)
