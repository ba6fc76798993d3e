"""gymnax's spaces: all have ``sample(key)`` and ``contains(x)``; Box and Discrete also
``shape`` and ``dtype``. gymnax's ``Dict.contains`` reads attributes (``x.key``), so it
raises on a plain dict observation: check a dict's entries with their own spaces.
"""

from gymnax.environments.spaces import Box, Dict, Discrete, Space, Tuple

__all__ = ["Box", "Dict", "Discrete", "Space", "Tuple"]
