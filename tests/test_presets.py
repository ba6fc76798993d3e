"""The training-script presets (`esrl.preset`): argument handling, interrupts and the
random-policy baseline, on tiny gymnax runs (the scripts' own runs are in
test_scripts.py)."""

from __future__ import annotations

import pytest

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
