"""Run directories shared by the ES and PPO loops: validation, saving, interruption.

A run directory holds one checkpoint whose metadata is ``{"spec": ..., "counters":
...}``: the spec rebuilds the run on ``--resume``, the counters continue its clocks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from esrl import distributed as dist
from esrl.checkpoint import has_checkpoint, read_meta, save_checkpoint
from esrl.logger import RunLogger, check_not_busy


def check_run_dir(out_dir: Path | None, resume: bool, overwrite: bool) -> dict | None:
    """Check ``out_dir`` before anything compiles; returns the saved spec when resuming.

    A fresh run refuses a directory that already holds one unless ``overwrite``; no
    run takes a directory another process is writing to (`esrl.logger.RunDirBusy`).
    """
    # the directory, or the nearest of its parents that exists (it is created in that)
    paths = () if out_dir is None else (out_dir, *out_dir.parents)
    found = next((p for p in paths if p.exists()), None)
    if found is not None and not found.is_dir():
        raise ValueError(
            f"{str(found)!r} is a file, not a directory; choose another --out"
        )
    if out_dir is not None:
        check_not_busy(out_dir)
    if resume:
        if out_dir is None:
            raise ValueError("resuming needs the run directory (--resume DIR)")
        return run_spec(read_meta(out_dir), out_dir)
    if out_dir is not None and has_checkpoint(out_dir) and not overwrite:
        raise ValueError(
            f"{str(out_dir)!r} already holds a run; continue it with --resume "
            f"{shlex.quote(str(out_dir))}, choose another --out, or pass --overwrite"
        )
    return None


def run_spec(meta: dict, out_dir: str | Path) -> dict:
    """The spec in a checkpoint's ``meta``; a clear error if no esrl train run wrote it."""
    if "spec" not in meta:
        raise ValueError(
            f"{str(out_dir)!r} holds no esrl train run (an LLM fine-tuning run "
            "resumes with scripts/train_countdown.py --resume)"
        )
    return meta["spec"]


def run_agent(run_dir: str | Path | None) -> str | None:
    """The agent of the run in ``run_dir``, if it holds a checkpoint that names one."""
    if run_dir is None or not has_checkpoint(run_dir):
        return None
    meta = read_meta(run_dir)
    return meta.get("agent") or meta.get("spec", {}).get("agent")


def mark_env_object(spec: Any, env: Any) -> Any:
    """``spec`` noting the class of an environment object passed as ``env=``."""
    if env is None:
        return spec
    return dataclasses.replace(spec, env_object=type(env).__name__)


def check_env_object(run_dir: str | Path, saved: dict, env: Any) -> None:
    """Refuse to rebuild from its id a run that trained on an object passed as ``env=``.

    ``make(spec.env)`` may be another environment (other arguments, another class):
    resuming or evaluating on it would silently continue or score a different task.
    """
    name = saved.get("env_object")
    if name is not None and env is None:
        raise ValueError(
            f"the run in {run_dir} trained on a {name} object passed as env=, which "
            f"the id {saved['env']!r} need not rebuild; pass the same environment "
            "again (train(..., resume=True, env=...), evaluate_run(..., env=...))"
        )


def save_run(out_dir: Path | None, spec: Any, state: Any, counters: Any) -> None:
    """Checkpoint ``state`` with the spec and counters (main process only)."""
    if out_dir is not None and dist.is_main_process():
        meta = {"spec": spec.to_dict(), "counters": counters._asdict()}
        save_checkpoint(out_dir, state, meta)


def report_interrupt(
    logger: RunLogger, out_dir: Path | None, unit: str, done: int
) -> None:
    """Close the logs at the checkpoint, ``done`` ``unit``s in; say how to continue.

    Call after the checkpoint is saved; records logged after it are dropped.
    """
    logger.close(keep_until=done)
    if out_dir is not None:
        logger.message(
            f"interrupted after {unit} {done}; checkpoint saved, "
            f"continue with: esrl train --resume {shlex.quote(str(out_dir))}"
        )


def report_unstarted(resume_dir: str | Path | None, total: str = "") -> None:
    """Say that an interrupt came before the first step (setting up, compiling).

    Nothing was written then: a resumed run (``resume_dir``) continues as it would
    have, up to the ``total`` it was asked for (``--generations 60``: the checkpoint
    still holds the shorter run's); a fresh one starts again.
    """
    if not dist.is_main_process():
        return
    text = "interrupted before training started; nothing was written"
    if resume_dir is not None:
        command = f"esrl train --resume {shlex.quote(str(resume_dir))} {total}"
        text += f", continue with: {command.strip()}"
    print(text, file=sys.stderr)


_received: list[int] = []
"""Signals handled within `sigterm_as_interrupt` (forgotten when it ends)."""


def raise_if_interrupted() -> None:
    """Raise the KeyboardInterrupt of a signal whose own one Python dropped.

    A handler's exception raised while a gc callback (jax registers one) or a
    ``__del__`` runs is printed ("Exception ignored in ...") and dropped; the training
    loops call this between steps, so such a signal still stops the run.
    """
    if _received:
        raise KeyboardInterrupt(f"signal {_received[-1]}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within this block SIGTERM (``kill``, a scheduler's preemption) acts as Ctrl-C.

    The training loops then checkpoint the generations done and stop, as on Ctrl-C,
    so a killed run resumes where it stopped. The signal is handled between Python
    bytecodes, that is once the running generation (a compiled call) has returned.
    Both signals are recorded for `raise_if_interrupted` (SIGINT unless ignored).
    Outside the main thread (where signals cannot be handled) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        _received.append(signum)
        raise KeyboardInterrupt(f"signal {signum}")

    handled = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        handled.append(signal.SIGINT)  # not where ignored (started with "&")
    previous = {s: signal.signal(s, interrupt) for s in handled}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _received.clear()
