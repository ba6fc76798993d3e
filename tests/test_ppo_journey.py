"""PPO as a user meets it: bad input is refused with a message before training."""

from __future__ import annotations

import jax.numpy as jnp
import pytest
from esrl.agents.ppo import PPOConfig

import esrl
from esrl import cli, spaces
from esrl.env import Environment
from esrl.train_ppo import PPORunSpec, prepare

TINY = PPOConfig(total_steps=8, num_envs=2, num_steps=4, num_minibatches=1)


class DictObs(Environment):
    """An environment whose observation is a dict (policies take one array)."""

    def reset(self, key, params=None):
        return {"a": jnp.zeros(2), "b": jnp.zeros(1)}, jnp.zeros(())

    def step(self, key, state, action, params=None):
        obs, state = self.reset(key)
        return obs, state, 0.0, jnp.array(False), jnp.array(False), {}

    def observation_space(self, params=None):
        box = spaces.Box(-1.0, 1.0, (2,), jnp.float32)
        return spaces.Dict({"a": box, "b": spaces.Box(-1.0, 1.0, (1,), jnp.float32)})

    def action_space(self, params=None):
        return spaces.Discrete(2)


def test_a_dict_observation_is_an_error_line_not_a_traceback(tmp_path, capsys):
    # was: prepare passed, fit raised the TypeError while compiling: a traceback
    # from `esrl train` (exit 1) instead of its "error:" line (exit 2)
    spec = PPORunSpec(env="test/DictObs-v0", ppo=TINY, progress=False)
    with pytest.raises(TypeError, match="policies take one array observation"):
        prepare(spec, tmp_path / "py", env=DictObs())
    if "test/DictObs-v0" not in esrl.list_envs():
        esrl.register("test/DictObs-v0", DictObs)
    argv = [
        "train", "--agent", "ppo", "--env", "test/DictObs-v0", "--num-envs", "2",
        "--num-steps", "4", "--num-minibatches", "1", "--total-steps", "8",
        "--no-progress", "--out", str(tmp_path / "cli"),
    ]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("esrl train: error: policies take one array observation")


def test_an_environment_object_as_the_spec_env_is_refused_at_once():
    # was: accepted; the run compiled and trained its first chunk, then crashed
    # writing the checkpoint ("Object of type GymnaxEnv is not JSON serializable")
    env = esrl.make("gymnax/CartPole-v1")
    with pytest.raises(TypeError, match=r"train_ppo\(spec, DIR, env=\.\.\.\)"):
        PPORunSpec(env=env, ppo=TINY)
