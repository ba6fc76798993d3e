"""LLM-reasoning environments (ids under ``llm/``)."""


def register_builtins(register) -> None:
    """Register the ``llm/`` ids (filled in by the LLM issue)."""
