"""`BackgroundWriter`: output writing (PNG panels, maps, thumbnails, result rows) on a thread of its own,
so that the forward loop never waits for encoding (issue: throughput; docs/benchmarks.md).

Jobs run one at a time in the order they were submitted, so whatever depends on order (a results row
appended after its overlay is on disk, which `zsad detect --resume` relies on) stays exact. PIL's PNG
encoder and file writes release the GIL for most of their time, so one thread overlaps them with the
model's forward. The queue holds at most `max_pending` jobs: a writer that falls that far behind makes the
submitter wait rather than grow memory without bound.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

DEFAULT_MAX_PENDING = 256


class BackgroundWriter:
    """Run submitted callables in order on one background thread; `close()` waits for them all.

    The first exception a job raises stops the writer (later jobs are dropped) and is raised again by the
    next `submit` or by `close`. Use as a context manager to always close.
    """

    def __init__(self, max_pending: int = DEFAULT_MAX_PENDING, name: str = "zsad-writer") -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1; got {max_pending}")
        self._jobs: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if self._error is None:
                    job()
            except BaseException as error:  # re-raised in the submitting thread
                self._error = error
            finally:
                self._jobs.task_done()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, job: Callable[[], Any]) -> None:
        """Queue `job` (blocks while `max_pending` jobs wait); raises an earlier job's exception."""
        self._raise_error()
        self._jobs.put(job)

    def wait(self) -> None:
        """Wait until every submitted job has run; raises the first exception one of them raised."""
        self._jobs.join()
        self._raise_error()

    def close(self) -> None:
        """Run what is queued, stop the thread, raise the first job exception (if any)."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        self._raise_error()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        if exc_info[0] is None:
            self.close()
        else:  # an error in the submitting thread: finish the queued jobs, keep the original error
            try:
                self.close()
            except BaseException:
                pass
