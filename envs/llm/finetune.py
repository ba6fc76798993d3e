"""ES fine-tuning of the recurrent LM on outcome rewards (EGGROLL or OpenAI-ES).

Qiu et al. 2025, "Evolution Strategies at Scale: LLM Fine-Tuning Beyond Reinforcement
Learning" (arXiv 2509.24372): every generation, each member answers the same batch of
training prompts with greedy decoding, each answer is scored on the host, rewards are
z-scored per prompt across the population (`esrl.fitness.group_normalize`) and averaged
into the member's fitness. EGGROLL (Sarkar et al. 2025, arXiv 2511.16652) perturbs every
matrix with rank-r noise instead of full-rank noise, so the population's generation
costs little more than plain batched inference.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from esrl.envs.llm.evaluate import EvalResult, evaluate, score_completions
from esrl.envs.llm.generate import GenerationConfig, completion_lengths, generate
from esrl.envs.llm.model import RecurrentLM
from esrl.envs.llm.pretrain import EVAL_POOL, MAX_CORPUS
from esrl.envs.llm.tasks import Problem, Splits, Task, make_splits
from esrl.envs.llm.tokenizer import encode, encode_prompts

from esrl.checks import SEED, require
from esrl.es import ES, ESState
from esrl.fitness import group_normalize
from esrl.runs import raise_if_interrupted


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning run (the ES hyperparameters live in the agent config)."""

    generations: int = 300
    """ES generations."""
    prompts_per_generation: int = 16
    """Training prompts every member answers per generation (the prompt groups)."""
    train_size: int = 20_000
    """Distinct training problems (never overlapping the held-out set)."""
    eval_size: int = 200
    """Fixed held-out problems scored before, during and after training (at most
    `EVAL_POOL`, the ones pretraining excludes)."""
    eval_every: int = 0
    """Evaluate every this many generations (0: only before and after)."""
    max_new_tokens: int | None = None
    """Completion budget; None takes the task's."""
    split_seed: int = 0
    """Seed of the train / held-out split (0 matches the pretraining exclusion)."""
    skip_train: int = MAX_CORPUS
    """Skip this many train-split problems: the first ones are the pretraining corpus,
    and ES should learn from problems the model has not memorised."""
    seed: int = 0
    """Seed of the noise and of the prompt order."""
    time_limit_s: float | None = None
    """Stop after this many seconds of training (the final evaluation still runs)."""
    checkpoint_every: int = 25
    """Call the checkpoint hook every this many generations (and after evaluations)."""

    def __post_init__(self):
        if self.generations < 0:
            raise ValueError(f"generations must be >= 0, got {self.generations}")
        if self.prompts_per_generation < 1:
            raise ValueError(
                f"prompts_per_generation must be >= 1, got {self.prompts_per_generation}"
            )
        if self.train_size < self.prompts_per_generation:
            raise ValueError(
                f"train_size {self.train_size} must be at least the "
                f"{self.prompts_per_generation} prompts of one generation"
            )
        if self.eval_size < 1:
            raise ValueError(f"eval_size must be >= 1, got {self.eval_size}")
        if self.eval_size > EVAL_POOL:
            # pretraining excludes only the first EVAL_POOL held-out problems
            raise ValueError(
                f"eval_size must be <= {EVAL_POOL} (the held-out problems pretraining "
                f"excludes), got {self.eval_size}"
            )
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        require(self, ">= 0", "eval_every", "skip_train")
        require(self, SEED, "seed")
        require(self, ">= 1", "checkpoint_every")
        if self.time_limit_s is not None:
            require(self, "> 0", "time_limit_s")


class GenerationBatch(NamedTuple):
    """What one ES generation saw: prompts, rewards [members, prompts], token count."""

    problems: list[Problem]
    rewards: np.ndarray
    tokens: int


def _held_out(task: Task, config: FinetuneConfig) -> int:
    """How many held-out problems the train stream excludes: pretraining's `EVAL_POOL`
    for the built-in tasks its corpus comes from, ``eval_size`` for one's own."""
    builtin = re.fullmatch(r"countdown-\d+", task.name) or task.name.startswith(
        "reasoning-gym/"
    )
    return EVAL_POOL if builtin else config.eval_size


def _finetune_splits(task: Task, config: FinetuneConfig) -> Splits:
    """Held-out problems and the train problems after the first ``skip_train``.

    For a built-in task the train stream excludes the same `EVAL_POOL` held-out
    prompts as pretraining, so its first ``skip_train`` problems are exactly the
    pretraining corpus.
    """
    size = config.skip_train + config.train_size
    held_out = _held_out(task, config)
    splits = make_splits(task, config.split_seed, size, held_out, strict=False)
    train = splits.train[config.skip_train :]
    if len(train) < config.prompts_per_generation:
        train = splits.train[-config.train_size :]  # a small task: reuse what exists
    if len(train) < config.prompts_per_generation:
        raise ValueError(
            f"task {task.name!r} has only {len(train)} training problems; lower "
            "prompts_per_generation"
        )
    return Splits(train, splits.eval[: config.eval_size])


class Finetuner:
    """Ask / generate / score / tell for one model, task and ES strategy."""

    def __init__(
        self, model: RecurrentLM, task: Task, strategy: ES, config: FinetuneConfig
    ):
        self.model, self.task, self.strategy, self.config = (
            model,
            task,
            strategy,
            config,
        )
        self.splits: Splits = _finetune_splits(task, config)
        self.generation_config = GenerationConfig(
            max_new_tokens=config.max_new_tokens or task.max_new_tokens
        )
        self.prompt_len = max(
            len(encode(p.prompt, bos=True)) for p in self.splits.train
        )
        self._ask = jax.jit(strategy.ask)
        self._tell = jax.jit(strategy.tell)

    def init(self, key: jax.Array, params) -> ESState:
        """The ES state starting from ``params``."""
        return self.strategy.init(key, params)

    def prompts(self, generation: int) -> list[Problem]:
        """The training prompts of ``generation`` (seeded, without replacement)."""
        rng = np.random.default_rng([self.config.seed, generation])
        train = self.splits.train
        picks = rng.choice(
            len(train), self.config.prompts_per_generation, replace=False
        )
        return [train[i] for i in picks]

    def rollout(self, state: ESState, problems: list[Problem]) -> GenerationBatch:
        """Every member answers ``problems``; rewards scored on the host."""
        ids, lengths = encode_prompts([p.prompt for p in problems], self.prompt_len)
        perturbations = self._ask(state)
        key = jax.random.fold_in(state.key, state.generation)
        completions = generate(
            key,
            self.model,
            state.params,
            jnp.asarray(ids),
            jnp.asarray(lengths),
            perturbations,
            self.generation_config,
        )
        completions = np.asarray(completions)
        rewards = score_completions(self.task, problems, completions)
        return GenerationBatch(
            problems, rewards, int(completion_lengths(completions).sum())
        )

    def step(self, state: ESState, generation: int) -> tuple[ESState, dict]:
        """One generation: rollout, per-prompt normalised fitness, ES update."""
        batch = self.rollout(state, self.prompts(generation))
        rewards = jnp.asarray(batch.rewards)
        shaped = group_normalize(rewards)
        state, metrics = self._tell(state, rewards.mean(axis=1), shaped)
        record = {k: float(v) for k, v in metrics.items()}
        record.update(
            train_return_mean=float(batch.rewards.mean()),
            train_return_max=float(batch.rewards.mean(axis=1).max()),
            train_accuracy=float((batch.rewards >= 1.0).mean()),
            tokens=batch.tokens,
        )
        return state, record

    def evaluate(self, params) -> EvalResult:
        """Greedy held-out metrics of ``params`` (unperturbed)."""
        return evaluate(
            self.model, params, self.task, self.splits.eval, self.generation_config
        )


def finetune(
    finetuner: Finetuner,
    state: ESState,
    start: int = 0,
    log: Callable[[dict], None] | None = None,
    on_checkpoint: Callable[[int, ESState], None] | None = None,
) -> tuple[ESState, list[dict]]:
    """Run generations ``start..config.generations``; evaluates every ``eval_every``.

    A generation's state is kept once ``log`` has returned: on KeyboardInterrupt,
    ``on_checkpoint`` gets the last generation whose record was logged. A signal whose
    interrupt Python dropped (`esrl.runs.raise_if_interrupted`) stops it the same way.
    """
    config, history = finetuner.config, []
    begin = time.perf_counter()
    try:
        for generation in range(start, config.generations):
            raise_if_interrupted()
            new_state, record = _generation(finetuner, state, generation)
            if log is not None:  # interrupted in here: checkpoint the state before
                log(record)
            state = new_state
            history.append(record)
            last = generation + 1 == config.generations
            due = record.get("eval_return") is not None
            due = due or (generation + 1) % config.checkpoint_every == 0
            if on_checkpoint is not None and due and not last:
                on_checkpoint(generation + 1, state)
            limit = config.time_limit_s
            if limit is not None and time.perf_counter() - begin > limit:
                break
    except KeyboardInterrupt:
        if on_checkpoint is not None:  # keep the generations done so far
            on_checkpoint(int(state.generation), state)
        raise
    return state, history


def _generation(finetuner: Finetuner, state: ESState, generation: int):
    """One timed generation, evaluated when ``eval_every`` says so."""
    config = finetuner.config
    tick = time.perf_counter()
    state, record = finetuner.step(state, generation)
    record.update(iteration=generation + 1, generation_s=time.perf_counter() - tick)
    last = generation + 1 == config.generations
    if config.eval_every and (generation + 1) % config.eval_every == 0 and not last:
        result = finetuner.evaluate(state.params)
        record.update(eval_return=result.accuracy, eval_reward=result.reward_mean)
    return state, record
