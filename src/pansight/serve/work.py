"""A bounded queue of jobs run by worker threads, so inference never blocks the event loop and
a burst of requests is refused (:class:`QueueFull`) instead of piling up in memory."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class QueueFull(Exception):
    """Every place in the queue is taken."""


class WorkQueue:
    """At most ``size`` waiting jobs, run in order by ``workers`` threads.

    A job is taken off the queue when a worker starts it, so ``size`` counts jobs not yet
    started; jobs canceled before they start are skipped.
    """

    def __init__(self, size: int, workers: int = 1) -> None:
        if size < 1 or workers < 1:
            raise ValueError(f"need size >= 1 and workers >= 1, got {size} and {workers}")
        self.size, self.workers = size, workers
        self._jobs: queue.Queue[tuple[Future, Callable[[], Any]] | None] = queue.Queue(size)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the worker threads."""
        for index in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"pansight-worker-{index}")
            thread.daemon = True
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Let the workers finish the jobs already queued, then end them."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def submit(self, job: Callable[[], Any]) -> Future:
        """Queue ``job``; its future holds what it returns or raises.

        Raises:
            QueueFull: ``size`` jobs are already waiting.
        """
        future: Future = Future()
        try:
            self._jobs.put_nowait((future, job))
        except queue.Full:
            raise QueueFull(f"{self.size} requests are already waiting") from None
        return future

    def waiting(self) -> int:
        """The number of queued jobs no worker has started yet."""
        return self._jobs.qsize()

    def _work(self) -> None:
        while (item := self._jobs.get()) is not None:
            future, job = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except Exception as error:
                future.set_exception(error)
