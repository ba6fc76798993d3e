"""The training-script presets (`esrl.preset`): argument errors, interrupts and the
random-policy baseline, without compiling where the logic does not need it (the
scripts' own tiny runs are in test_scripts.py)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from esrl.checkpoint import save_checkpoint
from esrl.preset import Preset, run_preset

BRAX = Preset(env="brax/inverted_double_pendulum", name="brax", env_prefix="brax/")


@pytest.mark.parametrize("option", ["--env", "--out", "--resume", "--agent"])
def test_a_missing_value_is_reported_with_the_esrl_train_usage(option, capsys):
    with pytest.raises(SystemExit) as e:
        run_preset(BRAX, ["--population", "4", option])
    assert e.value.code == 2
    err = capsys.readouterr().err
    # was the pre-parser's usage, listing only --agent --env --out --resume -h
    assert "usage: esrl train" in err and "--population N" in err
    assert f"esrl train: error: argument {option}: expected one argument" in err


CRAFTAX = Preset(env="craftax/Craftax-Classic-Symbolic-v1", name="cx", baseline=True)


@pytest.mark.parametrize("when", ["training", "baseline"])
def test_an_interrupt_says_how_to_get_the_random_baseline(
    when, tmp_path, monkeypatch, capsys
):
    import esrl.cli
    import esrl.preset

    out = tmp_path / "d"
    save_checkpoint(out, {"x": np.zeros(1)}, {"spec": {"agent": "eggroll"}})

    def train(argv):  # as esrl train returns after Ctrl-C or SIGTERM
        print(
            f"interrupted ...; continue with: esrl train --resume {out}",
            file=sys.stderr,
        )
        return 130 if when == "training" else 0

    def baseline(out):
        assert when == "baseline", "no comparison after an interrupted run"
        raise KeyboardInterrupt

    monkeypatch.setattr(esrl.cli, "main", train)
    monkeypatch.setattr(esrl.preset, "report_baseline", baseline)
    assert run_preset(CRAFTAX, ["--out", str(out)]) == 130  # was a traceback
    err = capsys.readouterr().err
    # esrl train --resume, as the run says, would finish it without the comparison
    assert (
        f"run this script with --resume {out} to make it (esrl train does not)" in err
    )


def test_an_interrupt_before_training_suggests_no_resume(tmp_path, monkeypatch, capsys):
    """Nothing was written: "run this script with --resume DIR" found no checkpoint."""
    import esrl.cli

    def train(argv):  # as esrl train returns after Ctrl-C while compiling
        print(
            "interrupted before training started; nothing was written", file=sys.stderr
        )
        return 130

    monkeypatch.setattr(esrl.cli, "main", train)
    assert run_preset(CRAFTAX, ["--out", str(tmp_path / "d")]) == 130
    assert capsys.readouterr().err == (
        "interrupted before training started; nothing was written\n"
    )


def test_help_with_resume_lists_the_options_of_the_runs_agent(tmp_path, capsys):
    save_checkpoint(tmp_path, {"x": np.zeros(1)}, {"spec": {"agent": "ppo"}})
    assert run_preset(BRAX, ["--resume", str(tmp_path), "--help"]) == 0
    text = capsys.readouterr().out
    # was eggroll's (the preset's agent): --generations, which a PPO run refuses
    assert "--total-steps" in text and "--generations" not in text
    assert run_preset(BRAX, ["--resume", str(tmp_path / "none"), "-h"]) == 0
    assert "--generations" in capsys.readouterr().out  # no run there: the preset's


@pytest.mark.parametrize("option", ["--agent", "--resume"])
def test_esrl_train_reports_a_missing_value_with_its_usage(option, capsys):
    from esrl.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--population", "4", option])
    assert e.value.code == 2
    err = capsys.readouterr().err
    # was the router's usage: 'usage: esrl [--agent AGENT] [--resume RESUME]'
    assert "usage: esrl train" in err and "--population N" in err
    assert f"esrl train: error: argument {option}: expected one argument" in err
