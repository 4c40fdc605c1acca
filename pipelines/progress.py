"""A progress display for long local builds: a bar on a terminal, a line every half minute otherwise.

It follows the counters the reading DoFns bump in this process (transforms/events/progress.py), so it
shows only on the local runners, where the DoFns run here.
"""
from __future__ import annotations

import shutil
import sys
import threading
import time
import uuid
from typing import TextIO

from tqdm import tqdm

from labelbeam.transforms.events import progress

LINE_EVERY_S = 30.0   # without a terminal: quiet builds stay quiet, long ones say they are alive
BAR_EVERY_S = 0.5


class ReadProgress:
    """`with ReadProgress(parts) as run:` pass `run` to ReadEvents; None (no display) when `enabled` is False."""

    def __init__(self, total_parts: int, enabled: bool = True, stream: TextIO | None = None,
                 line_every_s: float = LINE_EVERY_S):
        self._total = total_parts
        self._enabled = enabled
        self._stream = stream
        self._line_every_s = line_every_s
        self._stop = threading.Event()
        self.run: str | None = None

    def __enter__(self) -> str | None:
        if not self._enabled:
            return None
        self.run = uuid.uuid4().hex
        progress.start(self.run)
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._show, name="labelbeam-progress", daemon=True)
        self._thread.start()
        return self.run

    def __exit__(self, *exc) -> None:
        if self.run is None:
            return
        self._stop.set()
        self._thread.join()
        progress.finish(self.run)

    def _show(self) -> None:
        stream = self._stream or sys.stderr
        if stream.isatty():
            # A terminal that reports no size (a bare pty) would hide the bar: assume 80x24 there.
            size = shutil.get_terminal_size((80, 24))
            with tqdm(total=self._total, unit="part", desc="reading inputs", file=stream, leave=False,
                      ncols=size.columns or 80, nrows=size.lines or 24) as bar:
                while not self._stop.wait(BAR_EVERY_S):
                    done = progress.read(self.run)
                    if done.parts >= self._total:  # the later stages (dedup, consensus, publish) run on
                        bar.set_description("inputs read, building", refresh=False)
                    bar.update(done.parts - bar.n)
                    bar.set_postfix(events=f"{done.events:,}", refresh=True)
            return
        out = self._stream or sys.stdout
        while not self._stop.wait(self._line_every_s):
            done = progress.read(self.run)
            print(f"  ... {time.monotonic() - self._started:.0f} s: read {done.parts} of {self._total} input parts, "
                  f"{done.events:,} events", file=out, flush=True)
