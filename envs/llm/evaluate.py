"""Host-side scoring of generated completions and held-out accuracy.

Generation runs jitted on the device; the decoded text is scored on the host by the
task's Python scoring function (rewards are outcome-only, so nothing here needs to be
differentiable or jittable).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np
from esrl.envs.llm.generate import GenerationConfig, generate
from esrl.envs.llm.model import RecurrentLM
from esrl.envs.llm.reward import extract_answer, format_score
from esrl.envs.llm.tasks import Problem, Task
from esrl.envs.llm.tokenizer import decode, encode, encode_prompts

CORRECT = 1.0
"""A reward of at least this is a correct answer (rewards are 0.1*format + answer)."""


class EvalResult(NamedTuple):
    """Held-out metrics of one model on a list of problems."""

    accuracy: float
    reward_mean: float
    format_rate: float
    completions: list[str]


def score_completions(
    task: Task, problems: list[Problem], completions: np.ndarray
) -> np.ndarray:
    """Rewards [..., P] of completion ids [..., P, N] for ``problems`` (length P)."""
    completions = np.asarray(completions)
    flat = completions.reshape(-1, len(problems), completions.shape[-1])
    rewards = np.zeros(flat.shape[:2], np.float32)
    for member, rows in enumerate(flat):
        for index, (row, problem) in enumerate(zip(rows, problems, strict=True)):
            rewards[member, index] = task.reward(decode(row), problem)
    return rewards.reshape(completions.shape[:-1])


def evaluate(
    model: RecurrentLM,
    params,
    task: Task,
    problems: list[Problem],
    config: GenerationConfig | None = None,
    batch_size: int = 256,
) -> EvalResult:
    """Greedy (by default) held-out accuracy, mean reward and full-format rate."""
    if not problems:
        raise ValueError("evaluate needs at least one problem")
    config = config or GenerationConfig(max_new_tokens=task.max_new_tokens)
    batch_size = min(batch_size, len(problems))
    length = max(len(encode(p.prompt, bos=True)) for p in problems)
    texts, rewards = [], []
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        # pad to a fixed batch and length so that every chunk reuses one compilation
        padded = chunk + [chunk[-1]] * (batch_size - len(chunk))
        ids, lengths = encode_prompts([p.prompt for p in padded], length)
        out = generate(jax.random.key(0), model, params, ids, lengths, None, config)
        out = np.asarray(out)[: len(chunk)]
        rewards.append(score_completions(task, chunk, out))
        texts.extend(decode(row) for row in out)
    rewards = np.concatenate(rewards)
    formatted = np.mean([format_score(text) == 1.0 for text in texts])
    return EvalResult(
        accuracy=float(np.mean(rewards >= CORRECT)),
        reward_mean=float(np.mean(rewards)),
        format_rate=float(formatted),
        completions=texts,
    )


class StyleBreakdown(NamedTuple):
    """How much of a Countdown accuracy is answer style (see `style_breakdown`)."""

    accuracy: float
    equation_style: float
    """Share of completions whose answer is an equation (``expr=target``), rejected."""
    accuracy_if_fixed: float
    """Accuracy with every equation answer cut to its left-hand side."""


def style_breakdown(
    task: Task, problems: list[Problem], completions: list[str]
) -> StyleBreakdown:
    """Separate answer style from arithmetic: the accuracy with equations cut to ``expr``.

    The pretraining corpus writes half its answers as ``<answer>expr=target</answer>``,
    which the strict reward rejects; this shows how much of a gain is that style.
    """
    if len(problems) != len(completions) or not problems:
        raise ValueError(
            f"need one completion per problem, got {len(completions)} completions "
            f"for {len(problems)} problems"
        )
    equations = correct = fixed = 0
    for text, problem in zip(completions, problems):
        answer = extract_answer(text)
        right = task.score(text, problem) >= CORRECT
        correct += right
        if answer is not None and "=" in answer:
            equations += 1
            cut = text.replace(f"<answer>{answer}</answer>",
                               f"<answer>{answer.split('=')[0]}</answer>")  # fmt: skip
            right = task.score(cut, problem) >= CORRECT
        fixed += right
    n = len(problems)
    return StyleBreakdown(correct / n, equations / n, fixed / n)
