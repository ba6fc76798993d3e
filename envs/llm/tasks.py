"""Reasoning tasks: a seeded prompt source plus a host-side scoring function.

A `Task` turns ``(seed, count)`` into `Problem`s (a prompt, a reference answer and the
data its scorer needs) and scores a decoded completion. Built in: Countdown with 3 or 4
numbers and any reasoning-gym dataset. `make_splits` draws fixed, seeded train and
held-out splits that never share a prompt.

Prompt and answer format (what the shipped model was pretrained on)::

    Countdown:     "Use 8 3 5 to make 19.\\n"
    reasoning-gym: the dataset's question followed by "\\n"
    completion:    "<think>8*3=24\\n24-5=19</think>\\n<answer>(8*3)-5</answer>"
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from esrl.envs.llm.reward import countdown_reward, extract_answer, format_score

from esrl.checks import require


class Problem(NamedTuple):
    """One prompt with its reference answer and the data its scorer reads."""

    prompt: str
    answer: str
    data: Any


@dataclass(frozen=True)
class Task:
    """A prompt source and a scoring function; wrap your own task with this."""

    name: str
    """A readable name (used in ids, logs and seeds)."""
    generate: Callable[[int, int], list[Problem]]
    """``generate(seed, count)`` -> ``count`` problems, deterministic in ``seed``."""
    score: Callable[[str, Problem], float]
    """``score(completion, problem)`` -> reward (decoded text, specials removed)."""
    max_new_tokens: int = 96
    """Completion length budget (tokens) that fits a full worked answer."""

    def __post_init__(self):
        for field in ("generate", "score"):
            if not callable(getattr(self, field)):
                raise TypeError(
                    f"task {self.name!r}: {field} must be callable, got "
                    f"{getattr(self, field)!r}"
                )
        require(self, ">= 1", "max_new_tokens")

    def reward(self, completion: str, problem: Problem) -> float:
        """``score`` as a float; a score that raises or is not a number is an error.

        None (a scorer without ``return``) would become a NaN reward, the worst, and a
        str would be parsed as a number: both silently.
        """
        try:
            value = self.score(completion, problem)
        except Exception as error:  # name the input: inside a rollout jax wraps it
            raise RuntimeError(
                f"task {self.name!r}: score raised {type(error).__name__}: {error} "
                f"for the completion {completion!r} of the prompt {problem.prompt!r}; "
                "it must return a number for any completion"
            ) from error
        if value is None or isinstance(value, (str, bytes)) or np.ndim(value) != 0:
            raise TypeError(
                f"task {self.name!r}: score returned {value!r} for the prompt "
                f"{problem.prompt!r}; it must return a number"
            )
        return float(value)


class Splits(NamedTuple):
    """Fixed train and held-out problems; no prompt appears in both."""

    train: list[Problem]
    eval: list[Problem]


def _seed(*parts: Any) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def _generate(task: Task, seed: int, count: int) -> list[Problem]:
    """``task.generate(seed, count)``; anything but a `Problem` is an error."""
    problems = list(task.generate(seed, count))
    for problem in problems:
        if not isinstance(problem, Problem) or not isinstance(problem.prompt, str):
            raise TypeError(
                f"task {task.name!r}: generate must return Problem(prompt: str, "
                f"answer, data) items, got {problem!r}"
            )
    return problems


def _unique(problems: list[Problem], exclude: set[str]) -> list[Problem]:
    seen, out = set(exclude), []
    for problem in problems:
        if problem.prompt not in seen:
            seen.add(problem.prompt)
            out.append(problem)
    return out


def make_splits(
    task: Task, seed: int, train_size: int, eval_size: int, strict: bool = True
) -> Splits:
    """Seeded train / held-out splits of unique prompts that never overlap.

    With ``strict=False`` the train split may come out smaller than ``train_size``
    when the task has fewer distinct problems.
    """
    if train_size < 0 or eval_size < 0:
        raise ValueError("train_size and eval_size must be >= 0")
    evals = _generate(task, _seed(task.name, seed, "eval"), 2 * eval_size)
    evals = _unique(evals, set())[:eval_size]
    train = _generate(task, _seed(task.name, seed, "train"), 2 * train_size + 16)
    train = _unique(train, {p.prompt for p in evals})[:train_size]
    if len(evals) < eval_size or (strict and len(train) < train_size):
        raise ValueError(
            f"task {task.name!r} produced only {len(train)} train / {len(evals)} eval "
            f"unique prompts (asked {train_size} / {eval_size}); ask for fewer or "
            "use a harder task configuration with more distinct problems"
        )
    return Splits(train, evals)


# ---------------------------------------------------------------- Countdown


def _combine(rng: random.Random, x: int, y: int, max_value: int):
    """A random legal step: (swap, op, value) with a positive integer value, or None."""
    ops = ["+", "-", "*", "/"]
    rng.shuffle(ops)
    for op in ops:
        swap = x < y and op in "-/"
        a, b = (y, x) if swap else (x, y)
        if (op == "-" and a == b) or (op == "/" and (b == 1 or a % b)):
            continue
        value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
        if 0 < value <= max_value:
            return swap, op, value
    return None


def _countdown_solution(rng: random.Random, numbers: list[int], max_value: int):
    """Combine random pairs until one value is left: (target, steps, expression)."""
    pool = [(n, str(n)) for n in numbers]
    steps = []
    while len(pool) > 1:
        i, j = rng.sample(range(len(pool)), 2)
        (x, ex), (y, ey) = pool[i], pool[j]
        step = _combine(rng, x, y, max_value)
        if step is None:
            return None
        swap, op, value = step
        (a, ea), (b, eb) = ((y, ey), (x, ex)) if swap else ((x, ex), (y, ey))
        steps.append(f"{a}{op}{b}={value}")
        pool = [p for k, p in enumerate(pool) if k not in (i, j)]
        pool.append((value, f"({ea}{op}{eb})" if len(pool) else f"{ea}{op}{eb}"))
    return pool[0][0], steps, pool[0][1]


def countdown_prompt(numbers: list[int], target: int) -> str:
    """The Countdown prompt text."""
    return f"Use {' '.join(map(str, numbers))} to make {target}.\n"


def countdown_problems(
    seed: int,
    count: int,
    num_numbers: int = 3,
    max_number: int = 20,
    max_value: int = 200,
) -> list[Problem]:
    """Solvable Countdown problems: the target comes from a random legal expression."""
    rng = random.Random(seed)
    problems = []
    while len(problems) < count:
        numbers = [rng.randint(1, max_number) for _ in range(num_numbers)]
        solution = _countdown_solution(rng, numbers, max_value)
        if solution is None or solution[0] in numbers:
            continue
        target, steps, expression = solution
        answer = f"<think>{chr(10).join(steps)}</think>\n<answer>{expression}</answer>"
        data = {"numbers": numbers, "target": target}
        problems.append(Problem(countdown_prompt(numbers, target), answer, data))
    return problems


def _score_countdown(completion: str, problem: Problem) -> float:
    return countdown_reward(completion, problem.data["numbers"], problem.data["target"])


def countdown_task(
    num_numbers: int = 3, max_number: int = 20, max_value: int = 200
) -> Task:
    """Countdown with ``num_numbers`` numbers in [1, max_number]."""
    if not 2 <= num_numbers <= 6:
        raise ValueError(f"num_numbers must be in [2, 6], got {num_numbers}")
    if max_number < 2:
        raise ValueError(f"max_number must be >= 2, got {max_number}")
    if max_value < 1:  # every value is positive: no target would ever be found
        raise ValueError(f"max_value must be >= 1, got {max_value}")

    def generate(seed: int, count: int) -> list[Problem]:
        return countdown_problems(seed, count, num_numbers, max_number, max_value)

    budget = 16 * num_numbers  # longest worked answer: ~12 * num_numbers tokens
    return Task(f"countdown-{num_numbers}", generate, _score_countdown, budget)


# ---------------------------------------------------------------- reasoning-gym


EVAL_SCORERS = frozenset({
    "binary_matrix", "countdown", "intermediate_integration", "n_queens",
    "polynomial_multiplication", "puzzle24", "simple_integration",
    "spiral_matrix", "string_insertion",
})  # fmt: skip
"""reasoning-gym datasets (0.1.25) whose ``score_answer`` runs the answer as Python
(``eval`` or ``sympy.parse_expr``): a completion can execute any code or hang the
scorer (``9**9**9``). `reasoning_gym_task` refuses them unless ``trust_scorer``."""


def _dataset_names(name: str, config: dict) -> set[str]:
    """``name`` and, for a ``composite``, the names of the datasets it mixes."""
    specs = (config.get("datasets") or ()) if name == "composite" else ()
    return {name, *(s["name"] if isinstance(s, dict) else s.name for s in specs)}


def reasoning_gym_task(
    name: str, max_new_tokens: int = 96, trust_scorer: bool = False, **config
) -> Task:
    """Any reasoning-gym dataset; ``config`` goes to its config (``max_digits``...).

    Datasets in `EVAL_SCORERS` evaluate the model's text as code and are refused
    unless ``trust_scorer=True`` (``llm/countdown`` scores Countdown safely).
    """
    import reasoning_gym

    unsafe = sorted(_dataset_names(name, config) & EVAL_SCORERS)
    if unsafe and not trust_scorer:
        raise ValueError(
            f"reasoning-gym's {unsafe[0]!r} scorer evaluates the model's answer as Python "
            "(eval / sympy.parse_expr), so a completion could run code or hang it "
            "(e.g. 9**9**9); pass trust_scorer=True to use it anyway"
        )
    try:
        reasoning_gym.create_dataset(name, seed=0, size=1, **config)
    except Exception as err:  # reasoning-gym raises several types for bad names
        raise ValueError(
            f"reasoning-gym cannot build dataset {name!r} with {config}: {err}. "
            "See reasoning_gym.factory.DATASETS for the names."
        ) from err

    def generate(seed: int, count: int) -> list[Problem]:
        dataset = reasoning_gym.create_dataset(name, seed=seed, size=count, **config)
        out = []
        for entry in dataset:
            answer = f"<think></think>\n<answer>{entry['answer']}</answer>"
            out.append(Problem(entry["question"] + "\n", answer, (dataset, entry)))
        return out

    def score(completion: str, problem: Problem) -> float:
        dataset, entry = problem.data
        answer = extract_answer(completion)
        # reasoning-gym's own extract_answer strips: " 42 " must score as "42"
        answer = None if answer is None else answer.strip()
        try:
            correct = (
                0.0 if answer is None else float(dataset.score_answer(answer, entry))
            )
        except Exception:  # noqa: BLE001 - dataset scorers may choke on hostile text
            correct = 0.0
        return 0.1 * format_score(completion) + correct

    return Task(f"reasoning-gym/{name}", generate, score, max_new_tokens)
