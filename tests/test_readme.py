"""The README's Python examples run as written (training: two generations, not 20)."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def _first_python_block(after: str) -> str:
    section = README.read_text().split(after, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_environment_example_runs():
    scope: dict = {}
    exec(_first_python_block("## Environments"), scope)  # noqa: S102 - our own README
    assert (
        scope["terminated"].shape == ()
        and "gymnax/CartPole-v1" in scope["esrl"].list_envs()
    )


def test_readme_python_example_runs():
    code = _first_python_block("### In Python")
    assert "range(20)" in code
    scope: dict = {}
    exec(code.replace("range(20)", "range(2)"), scope)  # noqa: S102 - our own README
    assert int(scope["state"].generation) == 2
    assert np.isfinite(float(scope["metrics"]["fitness_mean"]))
