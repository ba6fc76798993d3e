"""LLM-reasoning tasks as esrl environments: an episode is a prompt, a step a token.

`LLMEnv` follows the esrl protocol (jittable, vmappable). ``reset`` draws a problem
from a fixed, seeded table (the train or the held-out split of the task) and observes
BOS. Each ``step`` reads the agent's next token (`action`, an id in
``Discrete(VOCAB_SIZE)``): while the prompt lasts the action is ignored and the next
prompt token is forced; afterwards the action is appended to the completion. The
observation is always the token just fed (the input of a recurrent LM's next step).
The episode terminates after EOS and is truncated after ``max_new_tokens`` generated
tokens. The reward is 0 on every step except the last, where the task's host-side
scorer reads the decoded completion through `jax.pure_callback` (outcome-only
rewards, exactly what `esrl.envs.llm.finetune` optimises; the ES fine-tuning path
bypasses this env and scores batched generations directly).

Ids: ``llm/countdown`` (3 numbers; ``num_numbers=4`` for 4), ``llm/countdown-3``,
``llm/countdown-4`` and ``llm/reasoning-gym/<name>`` for chain_sum, basic_arithmetic
and gsm_symbolic; ``esrl.register("llm/reasoning-gym/<other>",
"esrl.envs.llm.env:make_reasoning_gym", name="<other>")`` adds any other dataset
(those whose scorer evaluates the answer as code need ``trust_scorer=True``), and
`make_task_env` wraps your own `Task`.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
from esrl.envs.llm.tasks import Task, countdown_task, make_splits, reasoning_gym_task
from esrl.envs.llm.tokenizer import BOS, EOS, PAD, VOCAB_SIZE, decode, encode_prompts
from flax import struct

from esrl import spaces
from esrl.checks import SEED, is_int, require_value
from esrl.env import Environment


@struct.dataclass
class LLMState:
    """One episode: the problem, its tokens so far and the current position."""

    problem: jax.Array  # index into the env's problem table
    tokens: jax.Array  # [prompt_len + max_new_tokens] BOS prompt completion, PAD after
    prompt_len: jax.Array  # tokens of BOS + prompt
    pos: jax.Array  # index of the token observed last


class LLMEnv(Environment):
    """A `Task` as a token-level environment (see the module docstring).

    ``size`` problems (default: 1000 for ``split="train"``, ``eval_pool`` for
    ``"eval"``); the train split never holds the first ``eval_pool`` held-out ones.
    """

    def __init__(
        self,
        task: Task,
        split: str = "train",
        size: int | None = None,
        seed: int = 0,
        eval_pool: int = 200,
        max_new_tokens: int | None = None,
    ):
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        for name, value in (("size", size), ("eval_pool", eval_pool),
                            ("max_new_tokens", max_new_tokens)):  # fmt: skip
            if value is not None and not is_int(value):
                raise TypeError(f"{name} must be an integer, got {value!r}")
        require_value("seed", seed, SEED)
        if size is None:  # the held-out split holds eval_pool problems, no more
            size = 1000 if split == "train" else eval_pool
        require_value("size", size, ">= 1")
        if max_new_tokens is not None:
            require_value("max_new_tokens", max_new_tokens, ">= 1")
        if split == "eval" and size > eval_pool:
            # The train split excludes only the first eval_pool held-out problems;
            # more of them would overlap it.
            raise ValueError(
                f"split='eval' with size={size} needs eval_pool >= {size}; pass the "
                "same eval_pool to the train environment so the splits stay disjoint"
            )
        splits = make_splits(task, seed, size if split == "train" else 0, eval_pool)
        self.task, self.split = task, split
        self.problems = (splits.train if split == "train" else splits.eval)[:size]
        self.max_new_tokens = max_new_tokens or task.max_new_tokens
        ids, lengths = encode_prompts([p.prompt for p in self.problems])
        self._prompts = jnp.asarray(
            np.pad(ids, ((0, 0), (0, self.max_new_tokens)), constant_values=PAD)
        )
        self._lengths = jnp.asarray(lengths)
        # a scorer that fails on an empty or the reference completion fails here,
        # not in the middle of a jitted rollout
        for completion in ("", self.problems[0].answer):
            self.task.reward(completion, self.problems[0])

    @property
    def name(self) -> str:
        return f"llm/{self.task.name}"

    @property
    def sequence_length(self) -> int:
        """Longest BOS + prompt + completion an episode can hold."""
        return int(self._prompts.shape[1])

    def observation_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(VOCAB_SIZE)

    def action_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(VOCAB_SIZE)

    def reset(self, key: jax.Array, params=None):
        problem = jax.random.randint(key, (), 0, len(self.problems))
        state = LLMState(
            problem=problem,
            tokens=self._prompts[problem],
            prompt_len=self._lengths[problem],
            pos=jnp.zeros((), jnp.int32),
        )
        return jnp.asarray(BOS, jnp.int32), state

    def step(self, key: jax.Array, state: LLMState, action: jax.Array, params=None):
        pos = state.pos + 1
        forced = pos < state.prompt_len
        token = jnp.where(forced, state.tokens[pos], jnp.asarray(action, jnp.int32))
        tokens = state.tokens.at[pos].set(token)
        generated = pos - state.prompt_len + 1
        terminated = ~forced & (token == EOS)
        truncated = ~forced & ~terminated & (generated >= self.max_new_tokens)
        done = terminated | truncated
        reward = jax.pure_callback(
            self._score_host,
            jax.ShapeDtypeStruct(done.shape, jnp.float32),
            state.problem,
            tokens,
            state.prompt_len,
            done,
            vmap_method="broadcast_all",
        )
        state = state.replace(tokens=tokens, pos=pos)
        return token, state, reward, terminated, truncated, {}

    def _score_host(self, problem, tokens, prompt_len, done) -> np.ndarray:
        """Reward of every finished episode (any leading batch shape), 0 elsewhere."""
        problem, prompt_len, done = map(np.asarray, (problem, prompt_len, done))
        tokens = np.asarray(tokens)
        rewards = np.zeros(done.shape, np.float32)
        for index in np.ndindex(done.shape):
            if not done[index]:
                continue
            completion = decode(tokens[index][int(prompt_len[index]) :])
            rewards[index] = self.task.reward(completion, self.problems[problem[index]])
        return rewards

    def completion(self, state: LLMState) -> str:
        """The decoded completion of one (unbatched) episode state."""
        tokens = np.asarray(state.tokens)
        return decode(tokens[int(state.prompt_len) : int(state.pos) + 1])


def make_countdown(
    num_numbers: int = 3, max_number: int = 20, max_value: int = 200, **kwargs
) -> LLMEnv:
    """``llm/countdown``: Countdown with 3 (or ``num_numbers``) numbers.

    Numbers are drawn from [1, ``max_number``]; targets and intermediate values stay
    in [1, ``max_value``].
    """
    return LLMEnv(countdown_task(num_numbers, max_number, max_value), **kwargs)


def make_reasoning_gym(
    name: str,
    config: dict | None = None,
    max_new_tokens: int = 96,
    trust_scorer: bool = False,
    **kwargs,
) -> LLMEnv:
    """``llm/reasoning-gym/<name>``; ``config`` goes to the dataset config.

    ``trust_scorer``: allow a dataset whose scorer evaluates the answer as code
    (`esrl.envs.llm.tasks.EVAL_SCORERS`).
    """
    unknown = sorted(set(kwargs) - set(inspect.signature(LLMEnv).parameters))
    if unknown:  # a dataset option passed where the environment's go
        raise TypeError(
            f"llm/reasoning-gym/{name} got unknown keyword {unknown[0]!r}; dataset "
            f"options go in config={{{unknown[0]!r}: ...}}"
        )
    task = reasoning_gym_task(
        name, max_new_tokens=max_new_tokens, trust_scorer=trust_scorer, **(config or {})
    )
    return LLMEnv(task, **kwargs)


def make_task_env(task: Task, **kwargs) -> LLMEnv:
    """An environment for your own `Task` (a prompt source plus a scoring function)."""
    if not isinstance(task, Task):
        raise TypeError(
            "make_task_env needs an esrl.envs.llm.Task(name, generate, score); got "
            f"{type(task).__name__}"
        )
    return LLMEnv(task, **kwargs)
