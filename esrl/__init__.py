"""esrl: evolution strategies at hyperscale on vectorized JAX environments."""

from esrl.env import AutoReset, Environment
from esrl.registry import list_envs, make, register

__all__ = ["AutoReset", "Environment", "list_envs", "make", "register"]
__version__ = "0.1.0"
