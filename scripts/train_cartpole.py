"""Train gymnax CartPole-v1; EGGROLL by default, with settings that solve it.

    python scripts/train_cartpole.py [--agent {eggroll,openai_es,ppo}] [--out DIR]
                                     [--resume DIR] [any other `esrl train` option]

A thin preset over ``esrl train --env gymnax/CartPole-v1``: every agent takes the
CartPole defaults of ``esrl train`` (``--help`` lists them), which reach the maximum
return of 500 on a 2-core CPU in under half a minute (docs/results.md). Writes
DIR/metrics.jsonl, summary.json, curve.png and a checkpoint that ``--resume DIR``
continues from; without ``--out`` the run goes to runs/cartpole_<agent>, replacing an
earlier run there.
"""

from __future__ import annotations

import sys

from esrl.preset import Preset, run_preset

PRESET = Preset(env="gymnax/CartPole-v1", name="cartpole")

if __name__ == "__main__":
    raise SystemExit(run_preset(PRESET, sys.argv[1:], __doc__))
