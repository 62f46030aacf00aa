"""Progress that a log can show: tqdm's bar on a terminal, plain lines elsewhere.

A batch job's stderr is a file, where tqdm's carriage-return updates arrive as one unreadable line; there
`progress` prints `desc: 120/1000 img (12%), 31 s` at every tenth of the work (every 100 units when the
total is unknown), at most one line per `ZSAD_PROGRESS_INTERVAL` seconds (default 10), so a long job's log
shows where it is and a short run prints nothing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

LINES = 10  # lines per run when the total is known


class LineProgress:
    """The part of tqdm's interface zsad uses (`update`, `set_postfix`, `close`, iteration, `with`), as lines."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0) -> None:
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc, self.unit, self.n, self.postfix = desc, unit, initial, ""
        self.start = self.last = time.monotonic()
        self.interval = float(os.environ.get("ZSAD_PROGRESS_INTERVAL", "10"))
        self.step = max(1, -(-self.total // LINES)) if self.total else 100
        self.printed = initial // self.step

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def update(self, count: int = 1) -> None:
        self.n += count
        if self.n // self.step > self.printed and time.monotonic() - self.last >= self.interval:
            self.printed = self.n // self.step
            self.last = time.monotonic()
            self._line()

    def _line(self) -> None:
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        percent = f" ({100 * self.n // self.total}%)" if self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done} {self.unit}{percent}, {time.monotonic() - self.start:.0f} s{extra}",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, disable: bool = False):
    """`tqdm(...)` on a terminal; `LineProgress` when stderr is a file or a pipe; nothing when `disable`."""
    from tqdm.auto import tqdm

    if disable or sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial)
