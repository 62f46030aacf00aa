"""`BackgroundWriter`: output writing (PNG panels, maps, thumbnails, result rows) off the forward loop, so
that the model never waits for encoding (docs/benchmarks.md, "End to end").

A job has two parts: `work` (drawing and encoding one image's files), run on a pool of `threads` threads
(PIL's encoders and numpy release the GIL for most of their time, so two threads encode about twice as
fast), and `commit` (e.g. appending the image's results row), run strictly in submission order once its
`work` has finished. So whatever depends on order (a row appended only after its overlay is on disk,
which `zsad detect --resume` relies on) stays exact. At most `max_pending` jobs wait: a writer that falls
that far behind makes the submitter wait rather than grow memory without bound.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Optional

DEFAULT_MAX_PENDING = 256


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS says, else the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_writer_threads() -> int:
    """One encoding thread per core, at most 4."""
    return max(1, min(4, usable_cores()))


def _done() -> None:
    return None


class BackgroundWriter:
    """Run submitted jobs beside the caller; `close()` waits for them all.

    The first exception a job raises stops the writer (later commits are skipped) and is raised again by
    the next `submit` or by `close`. Use as a context manager to always close.
    """

    def __init__(self, max_pending: int = DEFAULT_MAX_PENDING, threads: Optional[int] = None, name: str = "zsad-writer") -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1; got {max_pending}")
        threads = default_writer_threads() if threads is None else threads
        if threads < 1:
            raise ValueError(f"threads must be >= 1; got {threads}")
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._commits: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._committer = threading.Thread(target=self._run_commits, name=f"{name}-commit", daemon=True)
        self._committer.start()

    def _run_commits(self) -> None:
        while True:
            item = self._commits.get()
            try:
                if item is None:
                    return
                work, commit = item
                if self._error is None:
                    work.result()
                    if commit is not None:
                        commit()
                else:
                    work.cancel()
            except BaseException as error:  # re-raised in the submitting thread
                self._error = error
            finally:
                self._commits.task_done()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, work: Callable[[], Any] | None = None, commit: Callable[[], Any] | None = None) -> None:
        """Queue a job: `work` on the pool, then `commit` in submission order. Blocks while `max_pending`
        jobs wait; raises an earlier job's exception."""
        self._raise_error()
        future: Future = self._pool.submit(work or _done)
        self._commits.put((future, commit))

    def wait(self) -> None:
        """Wait until every submitted job has run; raises the first exception one of them raised."""
        self._commits.join()
        self._raise_error()

    def close(self) -> None:
        """Run what is queued, stop the threads, raise the first job exception (if any)."""
        if self._committer.is_alive():
            self._commits.put(None)
            self._committer.join()
        self._pool.shutdown(wait=True)
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
