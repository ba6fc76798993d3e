"""Train gymnax Pendulum-v1 (continuous torque); EGGROLL by default.

    python scripts/train_pendulum.py [--agent {eggroll,openai_es,ppo}] [--out DIR]
                                     [--resume DIR] [any other `esrl train` option]

A thin preset over ``esrl train --env gymnax/Pendulum-v1``: ES takes the Pendulum
defaults of ``esrl train`` (256 members x 8 episodes, 400 generations), PPO the
settings below (1e-3 Adam, gamma 0.95, reward scaling, 800k steps). Both reach an
evaluation return above -200 with each of ten seeds on a 2-core CPU in about a minute
(docs/results.md).
Writes DIR/metrics.jsonl, summary.json, curve.png and a checkpoint that
``--resume DIR`` continues from; without ``--out`` the run goes to
runs/pendulum_<agent>, replacing an earlier run there.
"""

from __future__ import annotations

import sys

from esrl.preset import Preset, run_preset

PRESET = Preset(
    env="gymnax/Pendulum-v1",
    name="pendulum",
    options={
        "ppo": {
            "total_steps": 800_000, "num_envs": 16, "num_steps": 128,
            "update_epochs": 10, "num_minibatches": 8, "lr": 1e-3, "gamma": 0.95,
            "ent_coef": 0.0, "normalize_reward": True, "horizon": 200,
            "eval_every": 25, "eval_episodes": 64,
        },
    },
)  # fmt: skip

if __name__ == "__main__":
    raise SystemExit(run_preset(PRESET, sys.argv[1:], __doc__))
