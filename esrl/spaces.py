"""Spaces keep the gymnax shape: ``sample(key)``, ``contains(x)``, ``shape``, ``dtype``."""

from gymnax.environments.spaces import Box, Dict, Discrete, Space, Tuple

__all__ = ["Box", "Dict", "Discrete", "Space", "Tuple"]
