"""A memory task for tests: a cue shown at t=0 must be recalled ``delay`` steps later.

Observation: ``[one-hot cue (t=0 only), query flag (t=delay only)]``. The action at the
query step is graded (reward 1 if it names the cue, 0 otherwise) and ends the episode;
earlier actions do nothing. A memoryless policy sees the same observation at the query
whatever the cue, so it scores 1/num_cues on average; a recurrent one can score 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from esrl import spaces
from esrl.env import Environment


@struct.dataclass
class MemoryState:
    """The cue to remember and the time step."""

    cue: jax.Array
    t: jax.Array


class MemoryEnv(Environment):
    """Recall the cue after ``delay`` blank steps."""

    def __init__(self, delay: int = 4, num_cues: int = 2):
        self.delay = delay
        self.num_cues = num_cues

    def _obs(self, cue: jax.Array, t: jax.Array) -> jax.Array:
        shown = jax.nn.one_hot(cue, self.num_cues) * (t == 0)
        return jnp.concatenate([shown, (t == self.delay)[None].astype(jnp.float32)])

    def reset(self, key, params=None):
        cue = jax.random.randint(key, (), 0, self.num_cues)
        state = MemoryState(cue=cue, t=jnp.zeros((), jnp.int32))
        return self._obs(cue, state.t), state

    def step(self, key, state, action, params=None):
        query = state.t == self.delay
        correct = query & (action == state.cue)
        reward = correct.astype(jnp.float32)
        state = state.replace(t=state.t + 1)
        obs = self._obs(state.cue, state.t)
        info = {"correct": correct.astype(jnp.float32)}
        return obs, state, reward, query, jnp.zeros((), bool), info

    def observation_space(self, params=None):
        return spaces.Box(0.0, 1.0, (self.num_cues + 1,), jnp.float32)

    def action_space(self, params=None):
        return spaces.Discrete(self.num_cues)

    @property
    def name(self) -> str:
        return "test/Memory-v0"


def register(register_fn=None) -> None:
    """Register ``test/Memory-v0`` (importing this module as a ``--plugin`` does it)."""
    import esrl

    (register_fn or esrl.register)("test/Memory-v0", MemoryEnv, override=True)


register()
