"""gymnax adapter: every registered gymnax environment as ``gymnax/<name>``.

gymnax 1.x already separates ``terminated`` from ``truncated``; its ``step`` always
auto-resets, so the adapter calls the pure ``step_env`` and asks ``is_truncated``
itself. Any object with the gymnax 1.x API (a user's own
``gymnax.environments.environment.Environment`` subclass too) is wrapped the same way.
"""

from __future__ import annotations

import gymnax
import jax
import jax.numpy as jnp
from esrl.envs.legacy import five_values

from esrl.env import Environment


class GymnaxEnv(Environment):
    """Wraps a gymnax 1.x environment (``step_env``/``reset_env``/``is_truncated``)."""

    def __init__(self, env, prefix: str = ""):
        self.env = env
        self.prefix = prefix  # "gymnax/" for the built-in ids, not for a user's env

    @property
    def default_params(self):
        return self.env.default_params

    def reset(self, key, params=None):
        params = self.default_params if params is None else params
        return self.env.reset_env(key, params)

    def step(self, key, state, action, params=None):
        params = self.default_params if params is None else params
        obs, new_state, reward, terminated, info = five_values(
            self.env.step_env(key, state, action, params),
            f"{self.env.name}.step_env",
            "the gymnax API returns (obs, state, reward, terminated, info), with "
            "truncation from is_truncated(state, params)",
        )
        # keep the state's dtypes, as lax.scan and compiled chunks need: under x64
        # Pendulum's reset stores a float64 last_u, its step the float32 action
        state = jax.tree.map(
            lambda x, old: jnp.asarray(x, jnp.result_type(old)), new_state, state
        )
        truncated = self.env.is_truncated(state, params)
        terminated = jnp.asarray(terminated, dtype=bool)
        truncated = jnp.asarray(truncated, dtype=bool)
        reward = jnp.asarray(reward, dtype=jnp.result_type(float))  # float64 under x64
        return obs, state, reward, terminated, truncated, dict(info)

    def observation_space(self, params=None):
        return self.env.observation_space(
            self.default_params if params is None else params
        )

    def action_space(self, params=None):
        return self.env.action_space(self.default_params if params is None else params)

    @property
    def name(self) -> str:
        return f"{self.prefix}{self.env.name}"


MNIST_DIR = "/tmp/mnist"
"""Where gymnax's MNISTBandit-bsuite reads MNIST, downloading it when it is missing."""


def make_gymnax(name: str, **kwargs) -> GymnaxEnv:
    """Build ``gymnax/<name>``; keyword arguments go to the gymnax constructor."""
    try:
        env, _ = gymnax.make(name, **kwargs)
    except OSError as e:  # MNISTBandit downloads MNIST when built (URLError offline)
        if name != "MNISTBandit-bsuite":
            raise
        raise FileNotFoundError(
            f"gymnax/{name} needs MNIST, which gymnax downloads into {MNIST_DIR} when "
            f"it is built, and that failed ({e}); run it once with internet access, or "
            f"put the four MNIST .gz files (train-images-idx3-ubyte.gz, ...) in "
            f"{MNIST_DIR} (delete a partly downloaded file first)"
        ) from e
    return GymnaxEnv(env, prefix="gymnax/")


def names() -> list[str]:
    """The gymnax environment names this gymnax version registers."""
    return list(gymnax.registered_envs)
