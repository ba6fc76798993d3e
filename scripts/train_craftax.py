"""Train Craftax-Classic-Symbolic with a GRU policy (EGGROLL); compare with random play.

    python scripts/train_craftax.py [--agent {eggroll,openai_es,ppo}] [--out DIR]
        [--env craftax/Craftax-Symbolic-v1] [--resume DIR] [any `esrl train` option]

A thin preset over ``esrl train --env craftax/Craftax-Classic-Symbolic-v1 --policy
gru``: Craftax is partially observable (a local view; day/night, sleep), so the
policy is recurrent. ES takes the Craftax defaults of ``esrl train`` (64 members, lr
0.02, 300-step episodes, 40 generations: about 2-3 minutes on a 2-core CPU, 40 % of it
compiling). After training, a uniformly random policy is evaluated with the trained
one's evaluation settings (episodes, horizon and seed; a key of its own, so other
episodes) and both are printed side by side: mean return and achievements unlocked
per episode (DIR/random_baseline.json; an interrupted run gets it when this script
resumes it). ``--env Craftax-Symbolic-v1`` trains full Craftax. ``--agent ppo``
trains a greedy-evaluated GRU for 1M steps (about 6 minutes here); its auto-reset
draws finished environments from 16 fresh reset states per step (``--reset-pool
16``), as one Craftax reset per environment and step would make it impractically slow
on a CPU. Writes DIR/metrics.jsonl, summary.json, curve.png and a checkpoint that
``--resume DIR`` continues from; without ``--out`` the run goes to
runs/craftax_<agent> (runs/craftax_<env>_<agent> for another --env), replacing an
earlier run there.
"""

from __future__ import annotations

import sys

from esrl.preset import Preset, run_preset

PRESET = Preset(
    env="craftax/Craftax-Classic-Symbolic-v1",
    name="craftax",
    options={
        "ppo": {
            "policy": "gru", "hidden": 128, "total_steps": 1_000_000, "num_envs": 64,
            "num_steps": 64, "num_minibatches": 8, "lr": 3e-4, "horizon": 300,
            "eval_episodes": 32, "reset_pool": 16,
        },
    },
    env_prefix="craftax/",
    baseline=True,
)  # fmt: skip

if __name__ == "__main__":
    raise SystemExit(run_preset(PRESET, sys.argv[1:], __doc__))
