"""Train gymnax Breakout-MinAtar; PPO by default, EGGROLL/OpenAI-ES with --agent.

    python scripts/train_breakout.py [--agent {ppo,eggroll,openai_es}] [--out DIR]
                                     [--resume DIR] [any other `esrl train` option]

A thin preset over ``esrl train --env gymnax/Breakout-MinAtar``. PPO runs 3M steps of
32 envs x 64 steps with an entropy bonus of 0.05: with the usual 0.01 its policy
collapses onto a 7-brick rally and stays there (so does rank-1 ES: every member of a
generation scores at most 7, which leaves no ranking signal). EGGROLL and OpenAI-ES
take the Breakout defaults of ``esrl train``: 1000 generations of 256 members x 2
episodes with sigma 0.1, EGGROLL with rank-3 perturbations (about a minute here),
which got past that plateau on 3 of the 5 seeds tried; OpenAI-ES (about 7 minutes)
did not. Measured numbers are in docs/results.md. Writes DIR/metrics.jsonl,
summary.json, curve.png and a checkpoint that ``--resume DIR`` continues from; without
``--out`` the run goes to runs/breakout_<agent>, replacing an earlier run there.
"""

from __future__ import annotations

import sys

from esrl.preset import Preset, run_preset

PRESET = Preset(
    env="gymnax/Breakout-MinAtar",
    name="breakout",
    agent="ppo",
    options={
        "ppo": {
            "total_steps": 3_000_000, "num_envs": 32, "num_steps": 64,
            "update_epochs": 4, "num_minibatches": 4, "lr": 2.5e-3, "ent_coef": 0.05,
            "eval_every": 50, "eval_episodes": 32,
        },
    },
)  # fmt: skip

if __name__ == "__main__":
    raise SystemExit(run_preset(PRESET, sys.argv[1:], __doc__))
