"""esrl: evolution strategies at hyperscale on vectorized JAX environments."""

from esrl.xla import avoid_triton_gemm

avoid_triton_gemm()  # before any computation starts a backend (see its docstring)

from esrl.checks import EnvCheckError, check_env
from esrl.env import AutoReset, Environment, Wrapper
from esrl.gymnasium import to_gymnasium
from esrl.registry import list_envs, make, register
from esrl.vec import VecEnv

__all__ = [
    "AutoReset",
    "EnvCheckError",
    "Environment",
    "VecEnv",
    "Wrapper",
    "check_env",
    "list_envs",
    "make",
    "register",
    "to_gymnasium",
]
__version__ = "0.1.0"
