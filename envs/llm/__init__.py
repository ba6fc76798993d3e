"""LLM-reasoning environments (ids under ``llm/``).

A reasoning task (Countdown, reasoning-gym datasets, or your own `Task`) becomes an
environment whose policy is a small recurrent byte-level language model; ES fine-tunes
it on outcome-only rewards scored on the host from the decoded text. Modules:
``reward`` (Countdown reward), ``tasks`` (problems and splits), ``tokenizer``,
``model`` (the LM and its checkpoints), ``generate`` (population generation),
``evaluate``, ``finetune`` / ``train`` (ES fine-tuning), ``pretrain``, ``env`` (the
token-level environment), ``bench`` (tokens/s, EGGROLL vs plain).
"""

from esrl.envs.llm.reward import countdown_reward
from esrl.envs.llm.tasks import (
    Problem,
    Task,
    countdown_task,
    make_splits,
    reasoning_gym_task,
)

__all__ = [
    "Problem",
    "Task",
    "countdown_reward",
    "countdown_task",
    "make_splits",
    "reasoning_gym_task",
    "register_builtins",
]

REASONING_GYM = ("chain_sum", "basic_arithmetic", "gsm_symbolic")
"""reasoning-gym datasets registered as ``llm/reasoning-gym/<name>``."""


def register_builtins(register) -> None:
    """Register ``llm/countdown[-3|-4]`` and ``llm/reasoning-gym/<name>`` (lazily)."""
    entry = "esrl.envs.llm.env:make_countdown"
    register("llm/countdown", entry)
    register("llm/countdown-3", entry, num_numbers=3)
    register("llm/countdown-4", entry, num_numbers=4)
    for name in REASONING_GYM:
        register(
            f"llm/reasoning-gym/{name}",
            "esrl.envs.llm.env:make_reasoning_gym",
            name=name,
        )
