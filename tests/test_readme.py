"""The README's Python example runs as written (two generations instead of twenty)."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    section = README.read_text().split("### In Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    assert "range(20)" in code
    scope: dict = {}
    exec(code.replace("range(20)", "range(2)"), scope)  # noqa: S102 - our own README
    assert int(scope["state"].generation) == 2
    assert np.isfinite(float(scope["metrics"]["fitness_mean"]))
