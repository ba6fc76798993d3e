"""Adapter for the older 5-tuple step API (Craftax, Kinetix, POPGym Arcade style)."""


def is_legacy(obj) -> bool:
    """Whether ``obj`` has the older 5-tuple ``step`` API."""
    return False
