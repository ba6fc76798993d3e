"""Policies built from perturbable layers: MLP or recurrent actors, optional critic.

One definition serves plain inference, EGGROLL, OpenAI-ES and PPO. Every policy has the
recurrent signature ``(carry, obs) -> (carry, PolicyOutput)``; an MLP's carry is ``()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from esrl import spaces
from esrl.checks import require_type
from esrl.nn import CELLS, Dense, initial_carry, perturbation, perturbed

ACTIVATIONS = {"tanh": jnp.tanh, "relu": nn.relu, "gelu": nn.gelu}


class PolicyOutput(NamedTuple):
    """Action distribution parameters (and value, if the policy has a critic)."""

    logits: jax.Array
    """Categorical logits [A], or the Gaussian mean [A] for continuous actions."""
    log_std: jax.Array
    """Gaussian log standard deviation [A] (zeros for discrete actions)."""
    value: jax.Array
    """State value (0 without a critic)."""


_STRUCTURED_OBS = (
    "policies take one array observation, got {}; flatten it into one array with an "
    "esrl.Wrapper (override reset and step to concatenate the parts, and "
    "observation_space to return the matching Box)"
)


def _describe(obs) -> str:
    if isinstance(obs, Mapping):
        return f"a dict with keys {sorted(obs)}"
    return f"a {type(obs).__name__} of {len(obs)}"


class Policy(nn.Module):
    """Actor (and optional critic) over an MLP or recurrent torso."""

    action_dim: int
    discrete: bool = True
    hidden: int = 64
    num_layers: int = 2
    cell: str = "mlp"
    critic: bool = False
    activation: str = "tanh"
    obs_classes: int = 0
    """One-hot encode the observation into this many classes (a Discrete observation
    space); 0: read it as numbers."""

    @nn.compact
    def __call__(self, carry, obs: jax.Array):
        act = ACTIVATIONS[self.activation]
        if isinstance(obs, (Mapping, tuple, list)):
            raise TypeError(_STRUCTURED_OBS.format(_describe(obs)))
        # one example (batch with vmap), in the default float dtype (float64 under x64)
        x = jnp.ravel(obs)
        if self.obs_classes:  # an index as a number would order unrelated states
            x = jnp.ravel(jax.nn.one_hot(x, self.obs_classes))
        x = x.astype(jnp.result_type(float))
        if self.cell == "mlp":
            features = trunk = x  # the critic's input: its own MLP
            for i in range(self.num_layers):
                features = act(Dense(self.hidden, name=f"actor_{i}")(features))
        else:
            features = act(Dense(self.hidden, name="embed")(x))
            carry, features = CELLS[self.cell](self.hidden, name="cell")(
                carry, features
            )
            trunk = features  # the critic branches off the cell's output
            for i in range(self.num_layers - 1):
                features = act(Dense(self.hidden, name=f"actor_{i}")(features))
        small = nn.initializers.variance_scaling(0.01, "fan_in", "truncated_normal")
        logits = Dense(self.action_dim, kernel_init=small, name="head")(features)
        if self.discrete:
            log_std = jnp.zeros((self.action_dim,), logits.dtype)
        else:
            log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))
            log_std = perturbed(log_std, perturbation(self, "log_std"))
        value = jnp.zeros((), logits.dtype)
        if self.critic:
            value = self._critic(trunk, act)
        return carry, PolicyOutput(logits, log_std, value)

    def _critic(self, x: jax.Array, act) -> jax.Array:
        for i in range(self.num_layers if self.cell == "mlp" else 1):
            x = act(Dense(self.hidden, name=f"critic_{i}")(x))
        return Dense(1, kernel_init=nn.initializers.orthogonal(1.0), name="value")(x)[0]

    def initial_carry(self):
        """The zero carry for one example."""
        return initial_carry(self.cell, self.hidden)


@dataclass(frozen=True)
class PolicySpec:
    """What a policy looks like, independent of the environment."""

    kind: str = "mlp"
    """Torso: mlp, gru, mingru or lstm."""
    hidden: int = 64
    """Width of every hidden layer."""
    num_layers: int = 2
    """Hidden layers (for recurrent torsos: an input embedding, then the cell plus
    num_layers - 1 dense layers)."""
    activation: str = "tanh"
    """Activation: tanh, relu or gelu."""

    def __post_init__(self):
        require_type(self, "an int", "hidden", "num_layers")  # a float failed in jit
        if self.kind != "mlp" and self.kind not in CELLS:
            raise ValueError(
                f"unknown policy {self.kind!r}; choose one of mlp, {', '.join(CELLS)}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; choose one of "
                f"{', '.join(ACTIVATIONS)}"
            )
        if self.hidden < 1:
            raise ValueError(f"hidden width must be >= 1, got {self.hidden}")
        if self.num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {self.num_layers}")
        if self.kind != "mlp" and self.num_layers < 1:
            raise ValueError(
                f"a {self.kind} policy needs num_layers >= 1 (its cell is the first)"
            )


def make_policy(
    spec: PolicySpec,
    action_space,
    critic: bool = False,
    observation_space=None,
    normalize_obs: bool = False,
) -> Policy:
    """A `Policy` for ``action_space``; raises a clear error for spaces it cannot serve.

    A Discrete ``observation_space`` is one-hot encoded (normalising it is refused).
    """
    obs_classes = 0
    if isinstance(observation_space, spaces.Discrete):
        obs_classes = int(observation_space.n)
        if normalize_obs:
            raise ValueError(
                "observation normalisation does not apply to a Discrete observation "
                f"space ({observation_space!r}, one-hot encoded); leave out "
                "--normalize-obs (normalize_obs=False)"
            )
    if isinstance(action_space, spaces.Discrete):
        discrete, dim = True, int(action_space.n)
    elif isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
        discrete, dim = False, int(action_space.shape[0])
    else:
        raise ValueError(
            f"policies serve Discrete or 1-D Box action spaces, not {action_space!r}; "
            "wrap the environment to flatten its actions"
        )
    return Policy(
        action_dim=dim,
        discrete=discrete,
        hidden=spec.hidden,
        num_layers=spec.num_layers,
        cell=spec.kind,
        critic=critic,
        activation=spec.activation,
        obs_classes=obs_classes,
    )


def greedy_action(out: PolicyOutput, action_space) -> jax.Array:
    """The deterministic action: argmax for discrete, the clipped mean for Box."""
    if isinstance(action_space, spaces.Discrete):
        return jnp.argmax(out.logits, axis=-1).astype(action_space.dtype)
    return clip_action(out.logits, action_space)


def sample_action(key: jax.Array, out: PolicyOutput, action_space) -> jax.Array:
    """A stochastic action (categorical or Gaussian), unclipped for Box spaces."""
    if isinstance(action_space, spaces.Discrete):
        return jax.random.categorical(key, out.logits).astype(action_space.dtype)
    noise = jax.random.normal(key, out.logits.shape)
    return out.logits + jnp.exp(out.log_std) * noise


def clip_action(action: jax.Array, action_space) -> jax.Array:
    """A continuous action clipped into the Box bounds (which may be traced env params),
    in the Box's dtype: rounded for an integer Box, float32 from a float64 policy."""
    low = jnp.broadcast_to(jnp.asarray(action_space.low), action_space.shape)
    high = jnp.broadcast_to(jnp.asarray(action_space.high), action_space.shape)
    dtype = jax.dtypes.canonicalize_dtype(action_space.dtype)
    if not jnp.issubdtype(dtype, jnp.inexact):
        action = jnp.round(action)
    return jnp.clip(action, low, high).astype(dtype)
