"""Train gymnax CartPole-v1; EGGROLL by default, with settings that solve it.

    python scripts/train_cartpole.py [--agent {eggroll,openai_es,ppo}] [--out DIR]
                                     [any other `esrl train` option]

A thin preset over ``esrl train --env gymnax/CartPole-v1`` (see ``esrl train --help``
for every option and the CartPole defaults). Writes DIR/metrics.jsonl, summary.json,
curve.png and a checkpoint that ``--resume DIR`` continues from. Without ``--out`` the
run goes to runs/cartpole_<agent>, replacing an earlier run there.
"""

from __future__ import annotations

import argparse
import sys

from esrl.cli import main

ENV = "gymnax/CartPole-v1"


def build_argv(argv: list[str]) -> list[str]:
    """The ``esrl train`` arguments this preset stands for."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--agent", default="eggroll")
    pre.add_argument("--out")
    pre.add_argument("--resume")
    known, _ = pre.parse_known_args(argv)
    extra = [] if known.resume else ["--env", ENV]
    if "--agent" not in argv and not known.resume:
        extra += ["--agent", known.agent]
    if known.out is None and known.resume is None:
        extra += ["--out", f"runs/cartpole_{known.agent}", "--overwrite"]
    return ["train", *extra, *argv]


if __name__ == "__main__":
    raise SystemExit(main(build_argv(sys.argv[1:])))
