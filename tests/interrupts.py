"""Ctrl-C at a chosen metrics record, for the interrupt tests of the trainers."""

from __future__ import annotations

from esrl.logger import RunLogger


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
