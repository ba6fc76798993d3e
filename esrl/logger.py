"""Run outputs shared by every trainer: metrics.jsonl, TensorBoard, progress bar, plots.

`RunLogger` owns a run directory (README, Training):

- ``metrics.jsonl``: one JSON object per logged iteration (``iteration``, ``env_steps``,
  ``wall_time_s``, ``train_return_mean``, ``eval_return`` where evaluated, ...);
  resuming from iteration k keeps lines up to k and appends after them;
- ``tb/``: the same scalars for TensorBoard (tensorboardX), when asked for;
- a rich progress bar (generation, mean/max return, eval return, env steps/s), or a
  plain line per evaluation when the output is not a terminal;
- ``curve.png`` (matplotlib, no GUI backend) and ``summary.json`` at `finish` (a
  resume that extends a run removes the shorter run's until it finishes).

While it is open it holds an exclusive lock on the directory (``flock``, where the
system has it): a second process training into the same directory, a resume or an
``--overwrite`` started by mistake, stops with an error instead of interleaving its
metrics and checkpoints with the first's.

Non-finite numbers are written as JSON ``null`` so every line is strict JSON.
"""

from __future__ import annotations

import errno
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Self

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from esrl.checkpoint import FILENAME as CHECKPOINT
from esrl.checkpoint import replace_atomically

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CURVE = "curve.png"
BASELINE = "random_baseline.json"
"""A random policy's evaluation, written by `esrl.preset` scripts after training."""
FINAL_OUTPUTS = (SUMMARY, CURVE, BASELINE)
"""What a finished run writes; a fresh run in the same directory removes them when it
starts its metrics."""


def to_json(value: Any) -> Any:
    """Plain JSON values: numpy/jax scalars and arrays become floats/ints/lists."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (str, bool)) or value is None:
        return value
    array = np.asarray(value)
    if array.ndim:
        return [to_json(v) for v in array.tolist()]
    item = array.item()
    if isinstance(item, float) and not math.isfinite(item):
        return None
    return item


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temporary file and ``os.replace``."""
    text = json.dumps(to_json(data), indent=2, allow_nan=False) + "\n"
    replace_atomically(path, lambda tmp: tmp.write_text(text))


def _parse(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and not text.endswith("\n"):
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:  # a run killed while writing its last record
            lines.pop()
    return [json.loads(line) for line in lines]


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All records of a metrics.jsonl file (a directory means its metrics.jsonl).

    An unfinished last line (a run killed while writing it) is left out.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS
    if not path.is_file():
        return []
    return _parse(path.read_text())


def _keep_until(path: Path, iteration: int) -> None:
    """Drop records after ``iteration`` (left by a run killed after its checkpoint)."""
    text = path.read_text()
    records = _parse(text)
    kept = [r for r in records if r.get("iteration", 0) <= iteration]
    if len(kept) != len(records) or (text and not text.endswith("\n")):
        text = "".join(json.dumps(r) + "\n" for r in kept)
        replace_atomically(path, lambda tmp: tmp.write_text(text))


def plot_curve(records: list[dict], path: Path, title: str = "") -> None:
    """Train (mean, max) and eval return against environment steps, to a PNG (atomic)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()

    def series(key):
        pts = [(r["env_steps"], r[key]) for r in records if r.get(key) is not None]
        return tuple(zip(*pts, strict=True)) if pts else ((), ())

    ax.plot(*series("train_return_mean"), label="train mean", color="tab:blue")
    ax.plot(*series("train_return_max"), label="train max", color="tab:blue", alpha=0.3)
    ax.plot(*series("eval_return"), "o-", label="eval (mean policy)", color="tab:red")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    replace_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))


class RunDirBusy(ValueError):
    """Another process holds the run directory (`RunLogger` locks it while open)."""


def _lock(out_dir: Path) -> int | None:
    """An exclusive ``flock`` on ``out_dir`` (its descriptor), or `RunDirBusy`."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        return None
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            return None  # a file system without locks: run unlocked
        raise RunDirBusy(
            f"another process is writing to {str(out_dir)!r} (a run, a resume of it "
            "or an --overwrite); wait for it to end, or choose another --out"
        ) from None
    return fd


def check_not_busy(out_dir: Path) -> None:
    """Raise `RunDirBusy` now, before compiling, if another process holds ``out_dir``."""
    if out_dir.is_dir() and (fd := _lock(out_dir)) is not None:
        os.close(fd)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}"


class RunLogger:
    """Metrics file, TensorBoard, progress bar and end-of-run files of one run."""

    def __init__(
        self,
        out_dir: str | os.PathLike | None,
        total: int,
        start: int = 0,
        *,
        title: str = "train",
        progress: bool = True,
        tensorboard: bool = False,
        enabled: bool = True,
    ):
        self.out_dir = Path(out_dir) if out_dir is not None and enabled else None
        self.total, self.title, self.enabled = total, title, enabled
        self.last_eval: float | None = None
        self.console = Console(file=sys.stderr)
        self._file = self._tb = self._progress = self._lock = None
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._lock = _lock(self.out_dir)
            metrics = self.out_dir / METRICS
            if start > 0:  # resumed: its checkpoint stays, even if metrics.jsonl went
                if metrics.exists():
                    _keep_until(metrics, start)
                self._file = open(metrics, "a")  # noqa: SIM115 (closed in close)
                if start < total:  # extended: the summary and curve of its shorter
                    for name in (SUMMARY, CURVE):  # run would outlive an interrupt
                        (self.out_dir / name).unlink(missing_ok=True)
            else:
                self._file = open(metrics, "w")  # noqa: SIM115
                # a replaced run's end results would otherwise sit beside the new
                # run's metrics until it finishes (and label it in plot_curves.py)
                for name in FINAL_OUTPUTS:
                    (self.out_dir / name).unlink(missing_ok=True)
                # and its checkpoint: --resume after a kill before the new run's first
                # save would continue the old run on top of the new run's metrics
                (self.out_dir / CHECKPOINT).unlink(missing_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                # tensorboardX names a file by the second and opens it "wb": a resume
                # within the second would overwrite the file of the run it continues
                self._tb = SummaryWriter(
                    str(self.out_dir / "tb"), purge_step=start + 1,
                    filename_suffix=f".{time.time_ns()}",
                )  # fmt: skip
        self._plain = not (progress and enabled and self.console.is_terminal)
        self._quiet = not (progress and enabled)
        if not self._plain:
            self._progress = Progress(
                TextColumn("[bold]{task.fields[title]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._task = self._progress.add_task(
                "", total=total, completed=start, title=escape(title), stats=""
            )
            self._progress.start()

    def _stats(self, r: dict) -> str:
        sps, best = r.get("env_steps_per_s"), r.get("train_return_max")
        return (
            f"mean {_fmt(r.get('train_return_mean'))}"
            + (f" max {_fmt(best)}" if "train_return_max" in r else "")  # not PPO's
            + f" eval {_fmt(self.last_eval)}"
            + (f" {sps / 1e3:,.0f}k steps/s" if sps else "")
        )

    def log(self, record: dict) -> None:
        """Record one iteration (needs ``iteration``; ``eval_return`` where evaluated)."""
        if not self.enabled:
            return
        record = to_json(record)
        if record.get("eval_return") is not None:
            self.last_eval = record["eval_return"]
        if self._file is not None:
            self._file.write(json.dumps(record, allow_nan=False) + "\n")
            self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, record["iteration"])
        it = record["iteration"]
        if self._progress is not None:
            self._progress.update(self._task, completed=it, stats=self._stats(record))
        elif not self._quiet and ("eval_return" in record or it == self.total):
            self.message(f"{self.title} {it}/{self.total} {self._stats(record)}")

    def message(self, text: str) -> None:
        """Print a line (a warning, a note) above the progress bar."""
        if self.enabled:  # verbatim: paths in it may hold "[...]" and be long
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def close(self, keep_until: int | None = None) -> None:
        """Stop the progress bar, close the files and release the directory.

        ``keep_until`` drops the records after that iteration (and a torn last line):
        an interrupt that lands between a record and the checkpoint of its iteration
        then leaves metrics.jsonl matching the checkpoint.
        """
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._file is not None:
            self._file.close()
            self._file = None
            if keep_until is not None:
                _keep_until(self.out_dir / METRICS, keep_until)
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the flock
            self._lock = None

    def finish(self, summary: dict) -> None:
        """Write ``summary.json`` and ``curve.png`` from all of metrics.jsonl, then close."""
        try:
            if self.out_dir is not None:  # every record is flushed as it is logged
                write_json_atomic(self.out_dir / SUMMARY, summary)
                plot_curve(read_metrics(self.out_dir), self.out_dir / CURVE, self.title)
        finally:
            self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
