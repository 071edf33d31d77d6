"""The version of a training source, computed without reading the data (docs/operations.md 4.6).

`source_version(spec)` answers "did the data behind this spec change since the production model was
trained?" from what the store already knows, so a scheduled run can stop before any GPU is requested:

- a prep output (a folder or prefix with `manifest.json`): the manifest's content hash, which is also the
  data version prep records, so both ids agree;
- an S3 prefix, object or brace pattern: one object listing, every key with its size and ETag (what S3
  itself uses to tell objects apart; ETags change with the bytes);
- an http(s) file: its size and ETag or Last-Modified (HEAD);
- a local folder, file or pattern: the stats of every file below it (relative path, size, mtime_ns), the
  same signal `make` and DVC's state database use to skip unchanged files; no file is read;
- `builtin:photos[:N]`: the spec and the source of its generator (rglcd/data/builtin.py);
- `dvc://REPO[@REV]/PATH`: the path's DVC md5 at that revision, from the repository's metadata alone
  (`rglcd.data.dvcsource.dvc_source_version`, "dvc:<md5>"; an unrelated commit leaves it unchanged).

Each other version is a sha256 hex digest. Schemes dispatch through `VERSIONERS` (prefix -> function); a source
that no entry can version cheaply raises `NoCheapVersion`, and the caller decides (the check step then runs
the pipeline rather than guess). Listings use fsspec (s3fs over boto3), as prep reads the same data.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Callable, Iterable

from rglcd.data.dvcsource import dvc_source_version
from rglcd.data.io import filesystem, list_tars
from rglcd.data.manifest import read_manifest
from rglcd.data.sources import TABLE_SUFFIXES
from rglcd.plugins import source_handler
from rglcd.urls import redact_urls


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class NoCheapVersion(ValueError):
    """The source's store offers nothing (listing, ETag, stats) that versions it without reading it."""


def _digest(kind: str, rows: Iterable[tuple]) -> str:
    """sha256 over a kind tag and sorted rows: the same files in any listing order give the same version."""
    digest = hashlib.sha256(f"rglcd-source/{kind}\n".encode())
    for row in sorted(rows):
        digest.update(("\t".join(str(v) for v in row) + "\n").encode())
    return digest.hexdigest()


def _manifest_version(spec: str) -> str | None:
    """A prep output's content hash (one small read), or None when `spec` is not a prep output."""
    if "{" in spec or spec.endswith(".tar") or spec.lower().endswith(TABLE_SUFFIXES):
        return None
    manifest = read_manifest(spec)
    if manifest is None:
        return None
    version = manifest.get("content_hash")
    if not isinstance(version, str) or not version:
        raise ValueError(f"{redact_urls(spec)}/manifest.json: content_hash {str(version)[:80]!r} is not allowed; "
                         "allowed: the hex digest `rglcd prep` writes")
    return version


def _local_version(spec: str) -> str:
    """Stats of every file under a folder, or of the file(s) a path or brace pattern names."""
    manifest = _manifest_version(spec)
    if manifest is not None:
        return manifest
    root = Path(spec).expanduser()
    if "{" in spec:
        files = [Path(p) for p in list_tars(spec)]
        base = root.parent
    elif root.is_dir():
        files = [p for p in root.rglob("*") if p.is_file()]
        base = root
    elif root.is_file():
        files, base = [root], root.parent
    else:
        raise FileNotFoundError(f"data source {spec!r} does not exist")
    rows = []
    for path in files:
        st = os.stat(path)     # symlinks followed: a link to changed data changes the version
        rows.append((path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path),
                     st.st_size, st.st_mtime_ns))
    return _digest("stat", rows)


def _entry_tag(info: dict) -> str:
    """What tells one remote object's content from another's: ETag, else Last-Modified, else nothing."""
    for key in ("ETag", "etag", "LastModified", "last_modified", "Last-Modified", "mtime"):
        if info.get(key):
            return str(info[key]).strip('"')
    return ""


def _remote_version(spec: str) -> str:
    """An object listing (S3) or a HEAD (http) of every object the spec names: key, size, ETag."""
    manifest = _manifest_version(spec)
    if manifest is not None:
        return manifest
    fs = filesystem(spec)
    fs.invalidate_cache()          # fsspec instances are shared and cache listings: ask the store again
    if "{" in spec:
        infos = [fs.info(url) for url in list_tars(spec)]
    elif fs.isdir(spec):
        infos = list(fs.find(spec.rstrip("/"), detail=True).values())
    elif fs.exists(spec):
        infos = [fs.info(spec)]
    else:
        raise FileNotFoundError(f"data source {redact_urls(spec)!r} does not exist")
    rows = [(str(i.get("name", "")), i.get("size"), _entry_tag(i)) for i in infos if i.get("type", "file") == "file"]
    if not rows:
        raise FileNotFoundError(f"data source {redact_urls(spec)!r}: no objects found")
    missing = [name for name, _, tag in rows if not tag]
    if missing:
        raise NoCheapVersion(f"data source {redact_urls(spec)!r}: {redact_urls(missing[0])} has no ETag or "
                             "Last-Modified, so a change of its bytes cannot be seen without reading it")
    return _digest("listing", rows)


def _builtin_version(spec: str) -> str:
    """The spec and the generator's source: the records are a pure function of both."""
    code = (Path(__file__).with_name("builtin.py")).read_bytes()
    return _digest("builtin", [(spec, hashlib.sha256(code).hexdigest())])


# prefix -> versioner; the first prefix that matches wins, plain paths fall through to `_local_version`.
VERSIONERS: dict[str, Callable[[str], str]] = {
    "builtin:": _builtin_version,
    "s3://": _remote_version,
    "http://": _remote_version,
    "https://": _remote_version,
    "dvc://": dvc_source_version,
}


def source_version(spec: str) -> str:
    """The cheap version (sha256 hex) of the training source `spec` (a `data.train` value).

    Equal versions mean the store reports the same files with the same sizes and ETags/stats; a prep
    output's version is its manifest content hash. Raises NoCheapVersion when the store cannot tell."""
    handler = source_handler("version", spec)       # a registered scheme ("toy:shapes", rglcd.plugins)
    if handler is not None:
        return handler(spec)
    for prefix, versioner in VERSIONERS.items():
        if spec.startswith(prefix):
            return versioner(spec)
    if _SCHEME.match(spec) and not spec.startswith("file://"):
        raise NoCheapVersion(f"data source {redact_urls(spec)!r}: no versioner for its scheme; "
                             f"known: {', '.join(VERSIONERS)} and local paths")
    return _local_version(spec.removeprefix("file://"))


__all__ = ["source_version", "NoCheapVersion", "VERSIONERS"]
