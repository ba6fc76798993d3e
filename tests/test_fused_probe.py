"""scripts/fused_probe.py: the hand-fused C++ rollout matches its NumPy reference."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "fused_probe.py"
spec = importlib.util.spec_from_file_location("fused_probe", SCRIPT)
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


@pytest.fixture(scope="module")
def dll(tmp_path_factory):
    return probe.build(str(tmp_path_factory.mktemp("probe")))


@pytest.mark.parametrize("kind", ["mlp", "gru"])
@pytest.mark.parametrize("noise", [False, True])
def test_probe_rollout_equals_materialised_weights(dll, kind, noise):
    p = probe.make(kind, members=12, hidden=24, seed=3)
    obs, logits, _ = probe.rollout(dll, p, steps=4, sigma=0.2, noise=noise, chunk=6)
    want_obs, want_logits = probe.reference(p, steps=4, sigma=0.2, noise=noise)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(obs, want_obs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["mlp", "gru"])
def test_probe_noise_moves_every_member_and_pairs_move_oppositely(dll, kind):
    p = probe.make(kind, members=8, hidden=16, seed=4)
    p["obs"][1::2] = p["obs"][0::2]  # both members of a pair see the same input
    plain = probe.rollout(dll, p, steps=1, sigma=1e-3, noise=False, chunk=8)[1]
    noisy = probe.rollout(dll, p, steps=1, sigma=1e-3, noise=True, chunk=8)[1]
    assert np.all(np.linalg.norm(noisy - plain, axis=1) > 1e-5)
    # to first order in sigma a pair's outputs move by opposite amounts
    diff = (noisy - plain).reshape(4, 2, 2)
    second_order = np.linalg.norm(diff[:, 0] + diff[:, 1])
    assert second_order < 0.05 * np.linalg.norm(diff[:, 0] - diff[:, 1])


def test_probe_main_prints_both_rows(capsys):
    probe.main(["--kind", "gru", "--population", "6", "--hidden", "8", "--steps", "2",
                "--rounds", "2"])  # fmt: skip
    out = capsys.readouterr().out
    assert "| fused plain |" in out and "| fused eggroll |" in out


@pytest.mark.parametrize(
    "argv, says",
    [(["--population", "5"], "must be even"), (["--chunk", "0"], "integer >= 1")],
)
def test_probe_refuses_bad_sizes_before_building(argv, says, capsys):
    with pytest.raises(SystemExit):
        probe.main(argv)
    assert says in capsys.readouterr().err
