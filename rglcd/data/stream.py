"""The deterministic training stream: every example at a fixed global position, each process its own part.

The stream is the data set repeated forever. Epoch e visits the source's units (shards) in a
permutation seeded by (seed, e) and shuffles records inside aligned windows of `shuffle_buffer`
positions with a permutation seeded by (seed, e, window). Global micro-batch g covers positions
[g*B*W, (g+1)*B*W) for per-process batch B and W processes; process r takes [g*B*W + r*B, ... + B).
So the union over processes of micro-batch g does not depend on W (a 2-process run with batch B sees
the examples a 1-process run with batch 2B sees), and resuming at micro-batch g is exact: skip whole
epochs and shards by their counts, read one window. DataLoader worker k of n builds the batches
g = start + k (mod n); the loader's round-robin order then equals the single-worker order.

Reading (docs/architecture.md 2.6.1): the order depends only on the units' record counts, so a
position's record is found without reading anything (`GlobalOrder.locate`). From a random-access
source (rglcd.data.sources.RandomAccessSource) each (rank, worker) reads just its own records, by
place, in chunks of `read_ahead` records (one ranged request each, sent together: concurrent on S3),
read and decoded on a background thread while the chunk before is used. Other sources, and a single
reader (one process, one worker: it uses every record), read whole units in order; every (rank, worker)
keeps its share (`global_records`). Both give the same batches.
"""
from __future__ import annotations

import itertools
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from rglcd.data.images import BadImage, image_from_bytes, pixel_limit, to_training_tensor
from rglcd.data.io import TooLarge, read_bytes
from rglcd.data.sources import Record, Source, read_records


@dataclass
class StreamSpec:
    batch_size: int            # examples per process per micro-batch
    resolution: int            # training resolution in px (pixel path)
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    shuffle_buffer: int = 1000  # positions shuffled together (1: source order, units still permuted)
    random_crop: bool = True
    start_batch: int = 0       # micro-batches already consumed (resume position)
    max_pixels: int | None = None  # larger images are refused (None: rglcd.data.images.pixel_limit(resolution))
    read_ahead: int = 16       # records a worker reads together, the next ones on a thread (0: one at a time)


READ_THREADS = 4  # at most this many threads per `read_ahead` call
T = TypeVar("T")


def unit_order(num_units: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0]).permutation(num_units)


def _records_from(source: Source, order: np.ndarray, counts: list[int], start: int) -> Iterator[Record]:
    """Records of one epoch in unit order, from epoch position `start`."""
    for u in order:
        if start >= counts[u]:
            start -= counts[u]
            continue
        expected = counts[u] - start
        got = 0
        for record in source.read_unit(int(u), skip=start):
            got += 1
            yield record
        if got != expected:
            raise ValueError(f"{source.name}: unit {u} yielded {got} records from offset {start}, expected "
                             f"{expected} (shards changed after their manifest was written?)")
        start = 0


def global_records(source: Source, seed: int, shuffle_buffer: int, start: int = 0) -> Iterator[tuple[int, Record]]:
    """(global position, record) for every position >= start, forever."""
    counts = source.unit_counts()
    total = sum(counts)
    if total == 0:
        raise ValueError(f"{source.name}: holds no records")
    epoch, offset = divmod(start, total)
    while True:
        window_start = offset - offset % shuffle_buffer
        records = _records_from(source, unit_order(len(counts), seed, epoch), counts, window_start)
        for w0 in range(window_start, total, shuffle_buffer):
            window = [next(records) for _ in range(min(shuffle_buffer, total - w0))]
            perm = np.random.default_rng([seed, epoch, 1, w0]).permutation(len(window))
            for j, k in enumerate(perm):
                position = epoch * total + w0 + j
                if position >= start:
                    yield position, window[k]
        epoch, offset = epoch + 1, 0


class GlobalOrder:
    """Global position -> (unit, record within the unit) of the order `global_records` yields, from the
    units' record counts alone. Caches the last epoch's unit order and the last window's permutation:
    a worker's positions only grow."""

    def __init__(self, counts: list[int], seed: int, shuffle_buffer: int):
        self.counts = np.asarray(counts, dtype=np.int64)
        self.total, self.seed, self.shuffle_buffer = int(self.counts.sum()), seed, shuffle_buffer
        if self.total == 0:
            raise ValueError("the source holds no records")
        self._epoch, self._order, self._ends = -1, self.counts, self.counts
        self._window, self._perm = (-1, -1), np.zeros(0, dtype=np.int64)

    def locate(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.total)
        w0 = offset - offset % self.shuffle_buffer
        if (epoch, w0) != self._window:
            n = min(self.shuffle_buffer, self.total - w0)
            self._window, self._perm = (epoch, w0), np.random.default_rng([self.seed, epoch, 1, w0]).permutation(n)
        q = w0 + int(self._perm[offset - w0])                 # the record's place in the epoch's unit order
        if epoch != self._epoch:
            self._epoch, self._order = epoch, unit_order(len(self.counts), self.seed, epoch)
            self._ends = np.cumsum(self.counts[self._order])  # where each unit ends, in visiting order
        k = int(np.searchsorted(self._ends, q, side="right"))
        unit = int(self._order[k])
        return unit, q - int(self._ends[k] - self.counts[unit])


def read_ahead(tasks: Iterator[Callable[[], T]], depth: int) -> Iterator[T]:
    """The tasks' results in order, running up to `depth` tasks ahead on READ_THREADS threads."""
    if depth <= 0:
        for task in tasks:
            yield task()
        return
    with ThreadPoolExecutor(max_workers=min(depth, READ_THREADS), thread_name_prefix="rglcd-read") as pool:
        pending: deque = deque()
        try:
            for task in tasks:
                pending.append(pool.submit(task))
                if len(pending) > depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # closed early (the loader stops): drop what has not started
            for future in pending:
                future.cancel()


def materialize(record: Record, latents: bool, resolution: int, generator: np.random.Generator | None,
                max_pixels: int | None = None) -> torch.Tensor:
    """A record -> latent moments (8, h, w) or pixels (3, res, res) in [-1, 1]; images over the pixel limit
    (`max_pixels`, default from `resolution`) are refused before decoding."""
    if record.problem is not None:
        raise ValueError(f"{record.key}: unusable ({record.problem}); validate the data set with `rglcd prep`")
    if latents:
        if record.latent_moments is None:
            raise ValueError(f"{record.key}: the manifest says latents are precomputed, but this record has none")
        return torch.from_numpy(np.asarray(record.latent_moments, dtype=np.float32))
    image = record.image
    try:
        if isinstance(image, (bytes, str)):
            limit = pixel_limit(resolution, max_pixels)
            image = image_from_bytes(read_bytes(image, 4 * limit + (1 << 20)) if isinstance(image, str) else image, limit)
        if image is None:
            raise BadImage("no image")
    except (BadImage, TooLarge, OSError) as err:
        raise ValueError(f"{record.key}: image unusable ({err}); validate the data set with `rglcd prep`") from None
    return to_training_tensor(image, resolution, generator)


def collate(items: list[tuple[torch.Tensor, str, int]], latents: bool) -> dict:
    """-> {"pixel_values" | "latent_moments": (B, C, H, W), "captions": list[str], "index": LongTensor (B,)}."""
    key = "latent_moments" if latents else "pixel_values"
    return {key: torch.stack([t for t, _, _ in items]), "captions": [c or "" for _, c, _ in items],
            "index": torch.tensor([i for _, _, i in items], dtype=torch.long)}


class TrainStream(IterableDataset):
    """Yields this process's collated micro-batches start_batch, start_batch + 1, ... forever."""

    def __init__(self, source: Source, spec: StreamSpec):
        if spec.batch_size < 1 or spec.world_size < 1 or not 0 <= spec.rank < spec.world_size:
            raise ValueError(f"bad stream layout: batch {spec.batch_size}, rank {spec.rank} of {spec.world_size}")
        self.source, self.spec = source, spec
        self.total = sum(source.unit_counts())

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        return self.batches(*((info.id, info.num_workers) if info else (0, 1)))

    def batches(self, worker: int = 0, workers: int = 1) -> Iterator[dict]:
        """The micro-batches loader worker `worker` of `workers` builds: start_batch + worker, + workers, ..."""
        if not 0 <= worker < workers:
            raise ValueError(f"bad loader layout: worker {worker} of {workers}")
        # one reader (1 process, 1 worker) uses every record: whole units streamed read each byte once too,
        # with the fewest requests
        direct = getattr(self.source, "random_access", False) and self.spec.world_size * workers > 1
        items = self._read_direct(worker, workers) if direct else self._read_units(worker, workers)
        batch: list[tuple[torch.Tensor, str | None, int]] = []
        for item in items:
            batch.append(item)
            if len(batch) == self.spec.batch_size:
                yield collate(batch, self.source.latents)
                batch = []

    def _positions(self, worker: int, workers: int) -> Iterator[int]:
        """This process's and worker's global positions, in order: B of every `workers`-th micro-batch."""
        s = self.spec
        batch = s.start_batch + worker
        while True:
            first = (batch * s.world_size + s.rank) * s.batch_size
            yield from range(first, first + s.batch_size)
            batch += workers

    def _read_direct(self, worker: int, workers: int) -> Iterator[tuple[torch.Tensor, str | None, int]]:
        """Only this worker's records, read by place `read_ahead` at a time, the next chunk on a thread."""
        order = GlobalOrder(self.source.unit_counts(), self.spec.seed, self.spec.shuffle_buffer)
        positions, size = self._positions(worker, workers), max(1, self.spec.read_ahead)

        def load(chunk: list[int], places: list[tuple[int, int]]) -> list[tuple[torch.Tensor, str | None, int]]:
            return [self._item(p, r) for p, r in zip(chunk, read_records(self.source, places))]

        def tasks() -> Iterator[Callable[[], list]]:
            while True:
                chunk = list(itertools.islice(positions, size))
                yield partial(load, chunk, [order.locate(p) for p in chunk])  # located here: one thread

        for items in read_ahead(tasks(), 1 if self.spec.read_ahead else 0):
            yield from items

    def _read_units(self, worker: int, workers: int) -> Iterator[tuple[torch.Tensor, str | None, int]]:
        """Every record in stream order (whole units read), keeping this worker's ones."""
        s = self.spec
        start = s.start_batch * s.batch_size * s.world_size
        for position, record in global_records(self.source, s.seed, s.shuffle_buffer, start):
            batch, within = divmod(position, s.batch_size * s.world_size)
            if within // s.batch_size == s.rank and (batch - s.start_batch) % workers == worker:
                yield self._item(position, record)

    def _item(self, position: int, record: Record) -> tuple[torch.Tensor, str | None, int]:
        s = self.spec
        gen = np.random.default_rng([s.seed, position // self.total, record.index, 2]) if s.random_crop else None
        return (materialize(record, self.source.latents, s.resolution, gen, s.max_pixels), record.caption,
                record.index)


def _ignore_sigterm(worker_id: int) -> None:
    """Loader workers leave SIGTERM to the training process, which checkpoints first; they end with it."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(source: Source, spec: StreamSpec, num_workers: int = 0) -> DataLoader:
    """An endless DataLoader over this process's micro-batches (batches are built in the stream)."""
    return DataLoader(TrainStream(source, spec), batch_size=None, num_workers=num_workers,
                      worker_init_fn=_ignore_sigterm)
