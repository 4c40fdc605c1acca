"""How far a local run has read its inputs: counters the reading DoFns bump and the launcher shows.

Process-local on purpose: on the local runners the DoFns run in the launching process, so a progress bar
can follow them without waiting for Beam's metrics (which those runners report only at the end). On a
runner with remote workers nothing here moves, and the launcher shows no bar.
"""
from __future__ import annotations

import threading
from typing import NamedTuple


class Progress(NamedTuple):
    parts: int    # input ranges read whole
    events: int   # raw events read


_lock = threading.Lock()
_runs: dict[str, list[int]] = {}


def start(run: str) -> None:
    with _lock:
        _runs[run] = [0, 0]


def add(run: str | None, parts: int = 0, events: int = 0) -> None:
    """Count read work for `run`; nothing when no launcher in this process follows it."""
    if run is None:
        return
    with _lock:
        counts = _runs.get(run)
        if counts is not None:
            counts[0] += parts
            counts[1] += events


def read(run: str) -> Progress:
    with _lock:
        return Progress(*_runs.get(run, (0, 0)))


def finish(run: str) -> None:
    with _lock:
        _runs.pop(run, None)
