"""The demo's console: one line per step, a live progress line, nothing when quiet."""

from __future__ import annotations

import sys


class Console:
    """Status output: a live, rewritten progress line on a terminal, plain lines otherwise."""

    def __init__(self, stream=None, quiet: bool = False):
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._open_line = False

    def say(self, text: str) -> None:
        if self.quiet:
            return
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def progress(self, text: str, final: bool = False) -> None:
        if self.quiet:
            return
        if self.live:
            self.stream.write("\r\033[K" + text)
            self._open_line = not final
            if final:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _mean2(metrics: dict, name: str):
    vals = [metrics.get(f"{name}_i2t"), metrics.get(f"{name}_t2i")]
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"
