"""What the campaign shows while it runs: permanent event lines and a live status line.

The display knows nothing of the campaign; the loop decides what the lines say.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from typing import TextIO


class Progress:
    """Permanent lines for events; on a terminal also a live status line, rewritten in place.

    Off a terminal (piped, CI, a log file) there is no carriage-return trickery: events only,
    plus the status as a plain line every ``plain_every`` seconds.
    """

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None,
                 plain_every: float = 30.0):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.plain_every = plain_every
        self._last_plain = time.monotonic()
        self._status = ""
        self._lock = threading.Lock()

    def log(self, message: str) -> None:
        with self._lock:
            if self.tty and self._status:
                self.stream.write("\r\x1b[K")
            self.stream.write(message + "\n")
            if self.tty and self._status:
                self.stream.write(self._status)
            self.stream.flush()

    def status(self, text: str) -> None:
        with self._lock:
            if self.tty:
                width = _term_width()
                self._status = text if len(text) < width else text[: width - 1]
                self.stream.write("\r\x1b[K" + self._status)
                self.stream.flush()
            elif time.monotonic() - self._last_plain >= self.plain_every:
                self._last_plain = time.monotonic()
                self.stream.write(text + "\n")
                self.stream.flush()

    def clear(self) -> None:
        with self._lock:
            if self.tty and self._status:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            self._status = ""


def _term_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 120


def fmt_gain(x: float | None) -> str:
    """A relative gain as the campaign's lines show it (``+12.3%``; ``-`` when unknown)."""
    return "-" if x is None or not math.isfinite(x) else f"{x:+.1%}"


def fmt_duration(seconds: float) -> str:
    """Seconds as ``m:ss``."""
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"
