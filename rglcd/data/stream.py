"""The deterministic training stream: every example at a fixed global position, each process its own part.

The stream is the data set repeated forever. Epoch e visits the source's units (shards) in a
permutation seeded by (seed, e) and shuffles records inside aligned windows of `shuffle_buffer`
positions with a permutation seeded by (seed, e, window). Global micro-batch g covers positions
[g*B*W, (g+1)*B*W) for per-process batch B and W processes; process r takes [g*B*W + r*B, ... + B).
So the union over processes of micro-batch g does not depend on W (a 2-process run with batch B sees
the examples a 1-process run with batch 2B sees), and resuming at micro-batch g is exact: skip whole
epochs and shards by their counts, read one window. DataLoader worker k of n builds the batches
g = start + k (mod n); the loader's round-robin order then equals the single-worker order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from rglcd.data.images import BadImage, image_from_bytes, to_training_tensor
from rglcd.data.io import read_bytes
from rglcd.data.sources import Record, Source


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


def materialize(record: Record, latents: bool, resolution: int, generator: np.random.Generator | None) -> torch.Tensor:
    """A record -> latent moments (8, h, w) or pixels (3, res, res) in [-1, 1]."""
    if latents:
        if record.latent_moments is None:
            raise ValueError(f"{record.key}: the manifest says latents are precomputed, but this record has none")
        return torch.from_numpy(np.asarray(record.latent_moments, dtype=np.float32))
    image = record.image
    try:
        if isinstance(image, (bytes, str)):
            image = image_from_bytes(read_bytes(image) if isinstance(image, str) else image)
        if image is None:
            raise BadImage("no image")
    except (BadImage, OSError) as err:
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

    def _owner(self, position: int) -> tuple[int, int] | None:
        """Position -> (micro-batch, slot) when this process (and worker) uses it, else None."""
        s = self.spec
        batch, within = divmod(position, s.batch_size * s.world_size)
        rank, slot = divmod(within, s.batch_size)
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if rank != s.rank or (batch - s.start_batch) % workers != worker:
            return None
        return batch, slot

    def __iter__(self) -> Iterator[dict]:
        s = self.spec
        start = s.start_batch * s.batch_size * s.world_size
        items: list[tuple[torch.Tensor, str, int]] = []
        for position, record in global_records(self.source, s.seed, s.shuffle_buffer, start):
            if self._owner(position) is None:
                continue
            gen = np.random.default_rng([s.seed, position // self.total, record.index, 2]) if s.random_crop else None
            items.append((materialize(record, self.source.latents, s.resolution, gen), record.caption, record.index))
            if len(items) == s.batch_size:
                yield collate(items, self.source.latents)
                items = []


def _ignore_sigterm(worker_id: int) -> None:
    """Loader workers leave SIGTERM to the training process, which checkpoints first; they end with it."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(source: Source, spec: StreamSpec, num_workers: int = 0) -> DataLoader:
    """An endless DataLoader over this process's micro-batches (batches are built in the stream)."""
    return DataLoader(TrainStream(source, spec), batch_size=None, num_workers=num_workers,
                      worker_init_fn=_ignore_sigterm)
