"""A batch of environments stepped together, with optional (cheap) auto-reset.

``VecEnv(env, num_envs, autoreset=True, reset_pool=None)``: with ``reset_pool=None``
every finished environment gets its own fresh reset (exact, one reset per env per step,
fine for gymnax and Brax). With ``reset_pool=K`` only K reset states are generated per
step and each finished environment takes one of them at random ("optimistic reset"):
K resets per batch instead of ``num_envs``, which is what makes Craftax affordable.

With auto-reset, an environment whose observation or reward stops being finite (a physics
blow-up, say) is cut like a time limit (``truncated``) and reset, rather than left sending
NaN until its episode ends (`esrl.env.cut_broken`); its last observation stays in
``info["final_obs"]``.
"""

from __future__ import annotations

import jax

from esrl.checks import is_int
from esrl.env import Environment, cut_broken, where_done, without_autoreset
from esrl.registry import as_environment


class VecEnv:
    """``num_envs`` copies of ``env`` (a raw gymnax or 5-tuple env is adapted first).

    Arrays carry a leading batch axis.
    """

    def __init__(
        self,
        env: Environment,
        num_envs: int,
        autoreset: bool = True,
        reset_pool: int | None = None,
    ):
        if not is_int(num_envs) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        if reset_pool is not None:
            if not is_int(reset_pool) or not 1 <= reset_pool <= num_envs:
                raise ValueError(
                    f"reset_pool must be in [1, num_envs], got {reset_pool!r} (an int "
                    f"at most num_envs = {num_envs})"
                )
            if not autoreset:
                raise ValueError("reset_pool only applies with autoreset=True")
        # A raw gymnax env's own step auto-resets: its final obs would be a reset obs.
        env = as_environment(env)
        if autoreset:
            # Reset here only: after the inner reset, "final_obs" would be a reset obs.
            env = without_autoreset(
                env, "resetting again here would lose final observations (or pass "
                "autoreset=False)",
            )  # fmt: skip
        self.env = env
        self.num_envs = int(num_envs)
        self.autoreset = autoreset
        self.reset_pool = None if reset_pool is None else int(reset_pool)

    def reset(self, key: jax.Array, params=None):
        """Reset all environments; returns batched ``(obs, state)``."""
        keys = jax.random.split(key, self.num_envs)
        return jax.vmap(self.env.reset, in_axes=(0, None))(keys, params)

    def step(self, key: jax.Array, state, action: jax.Array, params=None):
        """Step all; finished ones reset (if ``autoreset``), final obs in ``info``."""
        key_step, key_reset, key_pick = jax.random.split(key, 3)
        keys = jax.random.split(key_step, self.num_envs)
        obs, state, reward, terminated, truncated, info = jax.vmap(
            self.env.step, in_axes=(0, 0, 0, None)
        )(keys, state, action, params)
        if not self.autoreset:
            return obs, state, reward, terminated, truncated, info
        truncated, done = cut_broken(obs, reward, terminated, truncated, 1)
        pool = self.reset_pool or self.num_envs
        obs_reset, state_reset = jax.vmap(self.env.reset, in_axes=(0, None))(
            jax.random.split(key_reset, pool), params
        )
        if self.reset_pool is not None:
            pick = jax.random.randint(key_pick, (self.num_envs,), 0, pool)
            obs_reset, state_reset = jax.tree.map(
                lambda x: x[pick], (obs_reset, state_reset)
            )

        next_obs = where_done(done, obs_reset, obs)
        next_state = where_done(done, state_reset, state)
        info = {**info, "final_obs": obs}
        return next_obs, next_state, reward, terminated, truncated, info

    def observation_space(self, params=None):
        """The space of one environment's observation."""
        return self.env.observation_space(params)

    def action_space(self, params=None):
        """The space of one environment's action."""
        return self.env.action_space(params)
