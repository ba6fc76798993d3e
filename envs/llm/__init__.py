"""LLM-reasoning environments (ids under ``llm/``).

A reasoning task (Countdown, reasoning-gym datasets, or your own `Task`) becomes an
environment whose policy is a small recurrent byte-level language model; ES fine-tunes
it on outcome-only rewards scored on the host from the decoded text.
"""

from esrl.envs.llm.reward import countdown_reward

__all__ = ["countdown_reward", "register_builtins"]


def register_builtins(register) -> None:
    """Register the ``llm/`` ids (filled in by the LLM issue)."""
