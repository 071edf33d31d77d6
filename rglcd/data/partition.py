"""Partitions of a data source for parallel prep: deterministic, disjoint, ordered ranges of its records.

The concatenation of the partitions in order is the whole source in order, whatever `parts` is
(docs/architecture.md "Prep in parallel"). With at least `parts` units (tar shards, table chunks),
partition `part` is the units [units * part // parts, units * (part + 1) // parts), each read whole: no
record counts needed (counting tar shards without a manifest would read them all). With fewer units
(an image folder, builtin photos: one unit), it is the records [total * part // parts, total * (part + 1)
// parts) of the record sequence, from the source's `unit_counts()`. A unit that ends inside a partition
is read to its end there, so that partition also sees records beyond a stale count and reports a
truncated shard (the unit's `on_error`); the other partitions that share the unit stop at their range
and ignore errors past it.
"""
from __future__ import annotations

from itertools import islice
from typing import Iterator

from rglcd.data.sources import ErrorHook, Record, Source


def partition_bounds(total: int, part: int, parts: int) -> tuple[int, int]:
    """[start, stop) of partition `part` of `parts` over `total` records."""
    if parts < 1 or not 0 <= part < parts:
        raise ValueError(f"partition {part} of {parts}: allowed 0 <= partition < partitions, partitions >= 1")
    return total * part // parts, total * (part + 1) // parts


def read_partition(source: Source, part: int, parts: int, on_error: ErrorHook) -> Iterator[Record]:
    """The records of partition `part` of `parts`, in source order (parts == 1: every unit, read whole)."""
    units = source.num_units()
    if units >= parts:
        start, stop = partition_bounds(units, part, parts)
        for unit in range(start, stop):
            yield from source.read_unit(unit, on_error=on_error)
        return
    counts = source.unit_counts()
    total = sum(counts)
    start, stop = partition_bounds(total, part, parts)
    offset = 0
    for unit, count in enumerate(counts):
        end = offset + count
        if count == 0:   # nothing counted: read (and report) by the partition its position falls in
            if start <= offset < stop or (offset >= total and part == parts - 1):
                yield from source.read_unit(unit, on_error=on_error)
        elif offset < stop and start < end:
            skip = max(start - offset, 0)
            if end <= stop:  # the unit ends here: read it to its end
                yield from source.read_unit(unit, skip=skip, on_error=on_error)
            else:
                yield from islice(source.read_unit(unit, skip=skip, on_error=lambda *_: None), stop - offset - skip)
        offset = end
