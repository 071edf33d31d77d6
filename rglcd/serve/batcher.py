"""Dynamic batching: images of concurrent requests generated together (docs/serving.md 3).

Every image a request asks for is one queue entry with its own future. One worker task takes the first
waiting entry, then whatever else arrives within `max_wait_s`, up to `max_batch` images, and runs them as
one `run_batch` call in a single worker thread (the accelerator does one batch at a time; the event loop
keeps accepting requests meanwhile). Entries whose request went away (client disconnected, the handler
cancelled) are skipped before the batch runs, and a result for a future nobody awaits is dropped.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass
class _Entry:
    item: Any
    future: asyncio.Future


class Batcher:
    def __init__(self, run_batch: Callable[[list[Any]], Sequence[Any]], max_batch: int, max_wait_s: float,
                 on_batch: Callable[[int, float], None] | None = None):
        """run_batch: items -> results (same order), called in the worker thread; on_batch(size, seconds)."""
        self.run_batch, self.max_batch, self.max_wait_s = run_batch, max_batch, max_wait_s
        self.on_batch = on_batch or (lambda size, seconds: None)
        self.queue: asyncio.Queue[_Entry] | None = None
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rglcd-batch")
        self.task: asyncio.Task | None = None

    def _start(self) -> None:
        if self.task is None:                       # on the server's running loop, at the first request
            self.queue = asyncio.Queue()
            self.task = asyncio.get_running_loop().create_task(self._work(), name="rglcd-batcher")

    async def submit(self, items: list[Any]) -> list[Any]:
        """Results for `items`, in order, each computed in some batch."""
        self._start()
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures):
            self.queue.put_nowait(_Entry(item, future))
        try:
            return list(await asyncio.gather(*futures))
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()
            raise

    async def _collect(self) -> list[_Entry]:
        batch = [await self.queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                batch.append(self.queue.get_nowait() if left <= 0 else await asyncio.wait_for(self.queue.get(), left))
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
        return [e for e in batch if not e.future.done()]       # a cancelled request's images are not made

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, [e.item for e in batch])
            except Exception as err:  # noqa: BLE001  (the requests of this batch fail; the server goes on)
                for e in batch:
                    if not e.future.done():
                        e.future.set_exception(err)
                continue
            self.on_batch(len(batch), time.perf_counter() - started)
            for e, result in zip(batch, results):
                if not e.future.done():
                    e.future.set_result(result)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=True)
