"""Ctrl-C at a chosen metrics record, or a signal Python drops, for the interrupt tests
of the trainers; what TensorBoard files a run left."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from esrl.logger import RunLogger


class SignalledInDel:
    """SIGTERM handled inside ``__del__`` (or a gc callback: jax registers one), where
    Python prints the handler's KeyboardInterrupt and drops it."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):  # the handler runs between these bytecodes
            pass


def ctrl_c_at_record(monkeypatch, iteration: int, written: bool):
    """Make `RunLogger.log` raise KeyboardInterrupt at record ``iteration``.

    ``written``: the record is written first (the interrupt lands after the log call,
    before the state is kept); otherwise it is not. Returns the original ``log``.
    """
    log = RunLogger.log

    def interrupted(self, record):
        if record["iteration"] != iteration:
            return log(self, record)
        if written:
            log(self, record)
        raise KeyboardInterrupt

    monkeypatch.setattr(RunLogger, "log", interrupted)
    return log


def tensorboard_steps(directory: Path, tag: str) -> list[list[int]]:
    """The steps of ``tag`` in each event file of ``directory``/tb, oldest file first."""
    from tensorboardX.proto.event_pb2 import Event

    files = []
    for path in sorted((directory / "tb").glob("events.out.tfevents.*")):
        data, at, steps = path.read_bytes(), 0, []
        while at < len(data):  # TFRecords: length, its crc, the event, its crc
            n = int.from_bytes(data[at : at + 8], "little")
            event = Event.FromString(data[at + 12 : at + 12 + n])
            steps += [event.step for v in event.summary.value if v.tag == tag]
            at += 16 + n
        files.append(steps)
    return files
