"""Per-record byte ranges of prep's tar shards, so training reads only the records it uses.

A prep shard holds its records one after another, each a run of tar members sharing a key (webdataset
layout: `000000007.jpg`, `000000007.txt`, ...). The manifest lists, per shard, `offsets`: where each
record's first header starts, then where the last record's data ends, so record j is the bytes
[offsets[j], offsets[j+1]) (docs/architecture.md 2.6.1). Offsets come from an untrusted manifest: their
count, alignment and order are checked with the manifest (`check_offsets`), and the file size before a
shard's first ranged read (rglcd.data.sources.ShardSource).
"""
from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

BLOCK = 512  # tar headers and data are laid out in 512-byte blocks


def record_offsets(path: str | Path) -> list[int]:
    """The `offsets` of a local tar shard: one header scan (member data is seeked over, not read)."""
    from webdataset.tariterators import base_plus_ext

    starts: list[int] = []
    key, end = None, 0
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            name_key, _ = base_plus_ext(member.name)
            if not member.isreg() or name_key is None:
                continue
            if name_key != key:
                starts.append(member.offset)  # the first header of the record (an extended one if any)
                key = name_key
            end = member.offset_data + -(-member.size // BLOCK) * BLOCK
    return starts + [end]


def check_offsets(offsets: Any, count: int) -> str | None:
    """Why `offsets` cannot describe `count` records of a tar shard, or None when they can."""
    if not isinstance(offsets, list) or len(offsets) != count + 1:
        return f"must be a list of {count + 1} byte offsets (records + 1)"
    previous = -1
    for i, value in enumerate(offsets):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value % BLOCK:
            return f"offsets[{i}] {str(value)[:40]!r} is not a byte offset (an integer >= 0, a multiple of {BLOCK})"
        if value <= previous:
            return f"offsets[{i}] {value} does not follow {previous} (records would overlap)"
        previous = value
    return None


def parse_records(data: bytes) -> list[dict] | None:
    """Samples {"__key__", ext: bytes} in whole records of a prep shard, or None when the bytes hold anything
    but plain regular members (extended headers, links, a cut member, end-of-archive blocks): then the
    caller parses them with the full tar reader (rglcd.data.sources.iter_tar), which names the problem.
    Headers are parsed and checked (checksum) by tarfile; keys and extensions split as webdataset does."""
    from webdataset.tariterators import base_plus_ext

    samples: list[dict] = []
    pos = 0
    while pos < len(data):
        try:
            info = tarfile.TarInfo.frombuf(data[pos:pos + BLOCK], "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            return None
        start = pos + BLOCK
        pos = start + -(-info.size // BLOCK) * BLOCK
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or info.name.startswith("__") or pos > len(data):
            return None
        key, ext = base_plus_ext(info.name)
        if key is None:
            continue
        if not samples or samples[-1]["__key__"] != key:
            samples.append({"__key__": key})
        samples[-1][ext.lower()] = data[start:start + info.size]
    return samples
