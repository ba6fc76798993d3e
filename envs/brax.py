"""Brax adapter (ids ``brax/<name>``)."""

NAMES: tuple[str, ...] = ()
