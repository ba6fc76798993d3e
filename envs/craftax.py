"""Craftax adapter (ids ``craftax/<name>``)."""

NAMES: tuple[str, ...] = ()
