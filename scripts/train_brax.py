"""Train a Brax environment (default inverted_double_pendulum); EGGROLL by default.

    python scripts/train_brax.py [--env {inverted_double_pendulum,ant,hopper,...}]
        [--agent {eggroll,openai_es,ppo}] [--out DIR] [--resume DIR]
        [any other `esrl train` option]

A thin preset over ``esrl train --env brax/<name>`` (``--env`` takes the short name).
ES takes the Brax defaults of ``esrl train`` (normalised observations, 1000-step
episodes; inverted_double_pendulum: 256 members, 150 generations); PPO the settings
below (PureJaxRL's Brax recipe scaled to a CPU). Measured numbers and costs are in
docs/results.md: on a 2-core CPU compiling a Brax rollout takes 0.5-2 minutes and ES
solves inverted_double_pendulum (~9340) in about 3.5 minutes. ``--env ant`` works with
the ``brax/`` defaults (512 members x 1000 steps = 512k env steps per generation; ant
stepped at ~6k env steps/s on the loaded 2-core CPU, so ~1.5 minutes a generation and
about 12 hours for the default 500: a GPU job). Writes DIR/metrics.jsonl,
summary.json, curve.png and a checkpoint that ``--resume DIR`` continues from; without
``--out`` the run goes to runs/brax_<agent> (runs/brax_<env>_<agent> for another
--env), replacing an earlier run there.
"""

from __future__ import annotations

import sys

from esrl.preset import Preset, run_preset

PRESET = Preset(
    env="brax/inverted_double_pendulum",
    name="brax",
    options={
        "ppo": {
            "total_steps": 2_000_000, "num_envs": 64, "num_steps": 64,
            "update_epochs": 4, "num_minibatches": 8, "lr": 3e-4, "ent_coef": 0.0,
            "normalize_obs": True, "normalize_reward": True, "eval_episodes": 8,
            "eval_every": 25,
        },
    },
    env_prefix="brax/",
)  # fmt: skip

if __name__ == "__main__":
    raise SystemExit(run_preset(PRESET, sys.argv[1:], __doc__))
