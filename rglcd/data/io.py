"""Opening local paths and URLs (s3://, http(s)://) through fsspec, and listing shard files.

S3 endpoints other than AWS (MinIO, Ceph, a test server) come from AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL; credentials follow boto's usual chain.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import IO

REMOTE_SCHEMES = ("s3://", "http://", "https://")
MAX_SHARDS = 1_000_000  # a brace pattern naming more is refused, not expanded (e.g. {0..999999999})


def is_remote(url: str) -> bool:
    return url.startswith(REMOTE_SCHEMES)


def _s3_options() -> dict:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


def filesystem(url: str):
    """The fsspec filesystem for a URL (local for plain paths)."""
    import fsspec

    if url.startswith("s3://"):
        return fsspec.filesystem("s3", **_s3_options())
    if url.startswith(("http://", "https://")):
        return fsspec.filesystem("https" if url.startswith("https") else "http")
    return fsspec.filesystem("file")


def open_binary(url: str) -> IO[bytes]:
    """A readable binary stream for a local path or URL."""
    if not is_remote(url):
        return open(Path(url).expanduser(), "rb")
    return filesystem(url).open(url, "rb")


class TooLarge(ValueError):
    """A file larger than the reader allows."""


def read_bytes(url: str, max_bytes: int | None = None) -> bytes:
    """All bytes of a local path or URL; with `max_bytes`, TooLarge instead of reading more than that."""
    with open_binary(url) as handle:
        data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise TooLarge(f"larger than the {max_bytes} bytes allowed")
    return data


def read_ranges(urls: list[str], starts: list[int], ends: list[int]) -> list[bytes]:
    """Bytes [start, end) of each (url, start, end), all URLs of one scheme: from local files, a seek and a read
    each; remote, one ranged request each (HTTP Range GETs on S3), sent together (fsspec `cat_ranges`:
    concurrent on s3fs/HTTP's asyncio). ValueError when a file ends before its `end`."""
    if urls and is_remote(urls[0]):
        datas = filesystem(urls[0]).cat_ranges(list(urls), list(starts), list(ends), on_error="raise")
    else:
        datas = []
        for url, start, end in zip(urls, starts, ends):
            with open(Path(url).expanduser(), "rb") as handle:
                handle.seek(start)
                datas.append(handle.read(end - start))
    for url, start, end, data in zip(urls, starts, ends, datas):
        if len(data) != end - start:
            raise ValueError(f"{url}: bytes {start}-{end} asked for, the file ends at byte {start + len(data)}")
    return datas


def file_size(url: str) -> int:
    """Size in bytes of a local file or remote object (a stat, or one HEAD request)."""
    if is_remote(url):
        return int(filesystem(url).size(url))
    return Path(url).expanduser().stat().st_size


_GROUP = re.compile(r"\{([^{}]*)\}")                      # an innermost {...} group
_INT_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?")
_CHAR_RANGE = re.compile(r"[A-Za-z]\.\.[A-Za-z](\.\.-?\d+)?")


def _pattern_size(spec: str) -> int:
    """An upper bound of the names a brace pattern expands to (product over its groups)."""
    total = 1
    for group in _GROUP.findall(spec):
        match = _INT_RANGE.fullmatch(group)
        if match:
            step = abs(int(match[3] or 1)) or 1
            total *= abs(int(match[2]) - int(match[1])) // step + 1
        elif _CHAR_RANGE.fullmatch(group):
            total *= 52                                            # a letter range
        else:
            total *= group.count(",") + 1                          # a list
    return total


def list_tars(spec: str) -> list[str]:
    """Shard URLs for a spec: a .tar file or URL, a brace pattern (shard-{000..009}.tar), or a folder/prefix."""
    import braceexpand

    if "{" in spec:
        if _pattern_size(spec) > MAX_SHARDS:  # braceexpand builds each range in memory: count first
            raise ValueError(f"data source {spec[:120]!r}: the pattern names more than {MAX_SHARDS} shards")
        return list(braceexpand.braceexpand(spec))
    if spec.endswith(".tar"):
        return [spec]
    if is_remote(spec):
        fs = filesystem(spec)
        names = sorted(p for p in fs.ls(spec.rstrip("/"), detail=False) if p.endswith(".tar"))
        return [f"s3://{p}" if spec.startswith("s3://") and not p.startswith("s3://") else p for p in names]
    return [str(p) for p in sorted(Path(spec).expanduser().glob("*.tar"))]
