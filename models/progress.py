"""Terminal progress for long CLI work: a live line on a TTY, sparse log lines otherwise.

Progress always goes to stderr so ``--json`` output on stdout stays machine-readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, total: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.label = label
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self._tty = self.stream.isatty()
        self._start = time.monotonic()
        self._last = 0.0

    def update(self, n: int = 1, **info: object) -> None:
        self.done = min(self.done + n, self.total)
        now = time.monotonic()
        if not self.enabled:
            return
        # Non-TTY output (CI logs) gets a line every 5 s at most, a TTY ten redraws a second.
        if self.done < self.total and now - self._last < (0.1 if self._tty else 5.0):
            return
        self._last = now
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        pct = 100.0 * self.done / self.total
        line = f"{self.label}: {self.done}/{self.total} ({pct:5.1f}%) {now - self._start:6.1f}s {extra}".rstrip()
        if self._tty:
            self.stream.write("\r\x1b[2K" + line + ("\n" if self.done >= self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._tty and self.done < self.total:
            self.stream.write("\n")
            self.stream.flush()
