"""Push, verify and pull artifact directories with DVC's data layer (`dvc_data`), no git repo needed.

push:   hash the directory (DVC md5 tree) -> upload the file objects that the remote lacks, then the
        `.dir` object last (so a `.dir` in the remote means its files are there) -> list the remote to
        check that every object is present -> return the pointer. Uploads stream straight from the
        directory (no local cache copy); S3 uploads of large files are multipart (s3fs: files from
        100 MiB, 50 MiB parts, grown to stay under S3's 10,000-part limit). Content already in the
        remote is not uploaded again. File hashes are kept in DVC's own state database (dvc_data
        `hashfile/state.py` State: an sqlite table of path -> md5 that is valid while the file's
        inode, mtime and size are unchanged; `dvc` opens it in dvc/repo/__init__.py under its site cache
        dir), here at `<storage.cache_dir>/state`, attached to the object DB so that dvc_data's
        `hashfile/build.py` (`_get_hashes`) looks every file up before hashing it: an unchanged re-push
        reads no file contents, and a one-file change re-hashes that one file (docs/operations.md 2.8).
pull:   read and check the pointer's `.dir` listing (paths that stay inside DEST, md5s), fetch its
        objects into the local cache (each re-hashed on arrival), copy the tree out into a staging
        folder and rename it to DEST. Only the pointer is needed: the remote comes from its meta.
"""
from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rglcd.storage.listing import check_listing, read_listing, where
from rglcd.storage.pointer import Pointer, read_pointer
from rglcd.storage.remote import (RemoteSpec, StorageError, explain, make_remote, open_cache, open_remote,
                                  remote_errors)


@dataclass(frozen=True)
class PushResult:
    pointer: Pointer
    objects_uploaded: int           # file objects sent (plus the .dir object, not counted here)
    objects_present: int            # file objects the remote already had (dedupe)
    bytes_uploaded: int
    seconds: float

    def summary(self) -> str:
        p = self.pointer
        return (f"pushed {p.path} to {p.remote}: {p.md5}, {p.nfiles} files, {p.size} bytes; uploaded "
                f"{self.objects_uploaded} objects ({self.bytes_uploaded} bytes), {self.objects_present} already "
                f"in the remote; verified; {self.seconds:.2f} s")


@dataclass(frozen=True)
class PullResult:
    path: Path
    pointer: Pointer
    objects_fetched: int            # objects downloaded (0 when the local cache had them all)
    seconds: float

    def summary(self) -> str:
        p = self.pointer
        return (f"pulled {p.md5} from {p.remote} to {self.path}: {p.nfiles} files, {p.size} bytes; "
                f"fetched {self.objects_fetched} objects; {self.seconds:.2f} s")


def _storage(cfg: Any):
    return getattr(cfg, "storage", cfg)


def remote_from_config(cfg: Any) -> RemoteSpec:
    """RemoteSpec of `cfg.storage` (a Config or a StorageConfig)."""
    s = _storage(cfg)
    return make_remote(s.remote, s.endpoint_url, s.region)


def remote_from_pointer(pointer: Pointer, url: str | None = None, endpoint_url: str | None = None) -> RemoteSpec:
    """The pointer's remote, optionally reached by another URL/endpoint (e.g. MinIO seen from a laptop)."""
    return make_remote(url or pointer.remote, endpoint_url or pointer.endpoint_url, pointer.region,
                       field="remote" if url else "pointer meta.rglcd.remote")


STATE_DIR = "state"   # under storage.cache_dir: DVC's hash cache (dvc_data State)


def hash_state(cfg: Any):
    """DVC's state database (file md5s keyed on inode + mtime + size) at `<storage.cache_dir>/state`.
    One that sqlite cannot read is only a cache: it is moved aside (`state.unreadable-<time>`) and a new
    one started. The caller closes it."""
    root = Path(os.path.expanduser(_storage(cfg).cache_dir)).resolve() / STATE_DIR
    try:
        return _open_state(root)
    except sqlite3.DatabaseError as err:
        aside = root.with_name(f"{STATE_DIR}.unreadable-{time.time_ns()}")
        root.rename(aside)
        logging.getLogger(__name__).warning("hash cache %s is unreadable (%s); moved to %s, hashing anew",
                                            root, err, aside.name)
        return _open_state(root)


def _open_state(root: Path):
    from dvc_data.hashfile.state import State

    root.mkdir(parents=True, exist_ok=True)
    state = State(root_dir=None, tmp_dir=str(root))
    try:
        state.hashes.is_empty()   # reads the database: fails here, not in the middle of a push
    except sqlite3.DatabaseError:
        state.close()
        raise
    return state


def _check_dir(path: Path) -> None:
    if not path.is_dir():
        raise StorageError(f"push: {str(path)!r} is not a directory; push versions artifact directories")
    if not any(p.is_file() for p in path.rglob("*")):
        raise StorageError(f"push: directory {str(path)!r} holds no files; nothing to version")


def _failed(action: str, spec: RemoteSpec, failed: int, total: int, errors: list[BaseException]) -> StorageError:
    cause = explain(errors[0], spec) if errors else f"remote {spec.describe()} refused them"
    return StorageError(f"{action} failed: {failed} of {total} objects not transferred ({cause}); "
                        "objects already transferred are kept, so a retry only sends the rest")


def push(cfg: Any, path: str | Path, jobs: int | None = None, callback: Any = None) -> PushResult:
    """Push directory `path` to the remote of `cfg.storage`, verify it there, return its pointer.

    `callback`: an fsspec Callback told about each uploaded object (progress bars).
    """
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.transfer import transfer
    from dvc_objects.fs.local import LocalFileSystem
    from fsspec.callbacks import DEFAULT_CALLBACK

    start, path = time.perf_counter(), Path(path).resolve()
    _check_dir(path)
    spec = remote_from_config(cfg)
    state = hash_state(cfg)
    with remote_errors(spec, f"push of {path.name!r}") as errors, closing(state):
        odb = open_remote(spec, create=True, state=state)   # build() hashes through odb.state
        staging, meta, tree = build(odb, str(path), LocalFileSystem(), "md5")   # md5 of new/changed files + tree
        sizes = {hi.value: m.size or 0 for _, m, hi in tree}                      # oid -> bytes
        # shallow=False: check every file object, not only the .dir (the default would upload a lone
        # .dir and skip its files, and would not repair a remote that lost a file).
        result = transfer(staging, odb, {tree.hash_info}, jobs=jobs, shallow=False,
                          callback=callback or DEFAULT_CALLBACK)
        if result.failed:
            raise _failed(f"push of {path.name!r}", spec, len(result.failed), len(sizes) + 1, errors)
    sent = {hi.value for hi in result.transferred} - {tree.hash_info.value}
    pointer = Pointer(md5=tree.hash_info.value, size=meta.size or 0, nfiles=meta.nfiles or 0, path=path.name,
                      remote=spec.url, endpoint_url=spec.endpoint_url, region=spec.region)
    verify(pointer)
    return PushResult(pointer, len(sent), len(sizes) - len(sent), sum(sizes[o] for o in sent),
                      time.perf_counter() - start)


def verify(pointer: Pointer | str | Path, remote: RemoteSpec | None = None) -> int:
    """Check (by listing the remote, no caches) that the `.dir` object and every file object exist.

    Returns the number of objects checked; raises StorageError naming what is missing.
    """
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree

    pointer = read_pointer(pointer)
    spec = remote or remote_from_pointer(pointer)
    with remote_errors(spec, f"verify of {pointer.md5}"):
        odb = open_remote(spec)
        try:
            tree = Tree.load(odb, HashInfo("md5", pointer.md5))
        except FileNotFoundError:
            raise StorageError(f"verify: {pointer.md5} ({pointer.path}) is not in remote {spec.describe()}") from None
        oids = {hi.value for _, _, hi in tree}
        missing = oids - set(odb.oids_exist(oids))
    if missing:
        raise StorageError(f"verify: {len(missing)} of {len(oids)} objects of {pointer.md5} are missing from "
                           f"remote {spec.describe()} (e.g. {sorted(missing)[0]}); push the directory again")
    if len(tree) != pointer.nfiles:
        raise StorageError(f"verify: remote tree {pointer.md5} lists {len(tree)} files, the pointer says {pointer.nfiles}")
    return len(oids) + 1


def _check_dest(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise StorageError(f"pull: destination {str(dest)!r} exists and is not an empty directory; pull into a new one")


def pull(pointer: Pointer | str | Path, dest: str | Path, cache_dir: str | Path | None = None,
         remote: RemoteSpec | None = None, jobs: int | None = None) -> PullResult:
    """Materialise the exact version `pointer` names into the new directory `dest`.

    `cache_dir`: local DVC cache kept for later pulls (None: a temporary one, removed afterwards).
    `remote`: reach the pointer's remote by another URL/endpoint.
    The remote's listing is checked before anything is fetched (rglcd.storage.listing), and the tree is
    checked out into a staging folder beside `dest` that is renamed to `dest` only when complete, so a
    failed pull leaves no partial file.
    """
    start = time.perf_counter()
    pointer = read_pointer(pointer)
    dest = Path(dest).resolve()
    _check_dest(dest)
    spec = remote or remote_from_pointer(pointer)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.pull-", dir=dest.parent))
    try:
        fetched = _fetch_and_checkout(pointer, dest, work, spec, Path(cache_dir or work / "cache"), jobs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return PullResult(dest, pointer, fetched, time.perf_counter() - start)


def _fetch(pointer: Pointer, spec: RemoteSpec, cache, jobs: int | None) -> tuple[list[tuple[str, str]], int]:
    """Check the listing, then bring every object into `cache`; returns (entries, objects fetched)."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.transfer import transfer

    action = f"pull of {pointer.md5}"
    with remote_errors(spec, action) as errors:
        odb = open_remote(spec)
        source = cache if cache.exists(pointer.md5) else odb
        entries = check_listing(read_listing(source, pointer, spec), pointer, spec)
        result = transfer(odb, cache, {HashInfo("md5", pointer.md5)}, jobs=jobs, shallow=False, verify=True)
        if result.failed:
            raise _failed(action, spec, len(result.failed), pointer.nfiles + 1, errors)
    # DVC drops an object whose bytes do not match its md5 (verify=True) without failing the transfer
    for relpath, oid in [*entries, ("the listing", pointer.md5)]:   # a bad file stops DVC before the listing
        file = Path(cache.oid_to_path(oid))
        if file.is_symlink() or not file.is_file():
            raise StorageError(f"pull of {where(pointer, spec)} failed: object {oid} ({relpath}) is missing or "
                               "corrupt in the remote; push the directory again")
    return entries, len(result.transferred)


def _fetch_and_checkout(pointer: Pointer, dest: Path, work: Path, spec: RemoteSpec, cache_dir: Path,
                        jobs: int | None) -> int:
    from dvc_data.hashfile.checkout import checkout
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree
    from dvc_objects.fs.local import LocalFileSystem

    cache = open_cache(cache_dir)
    _, fetched = _fetch(pointer, spec, cache, jobs)
    tree = Tree.load(cache, HashInfo("md5", pointer.md5))
    staged = work / "tree"
    checkout(str(staged), LocalFileSystem(), tree, cache, force=True)
    _check_checkout(staged, pointer)
    if dest.exists():
        dest.rmdir()                     # empty (checked by _check_dest)
    staged.rename(dest)
    return fetched


def _check_checkout(dest: Path, pointer: Pointer) -> None:
    links = [p for p in dest.rglob("*") if p.is_symlink()]
    if links:
        raise StorageError(f"pull: checkout of {pointer.md5} produced a symlink ({links[0].name}); refused")
    files = [p for p in dest.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    if len(files) != pointer.nfiles or size != pointer.size:
        raise StorageError(f"pull: {pointer.md5} checked out {len(files)} files / {size} bytes, the pointer "
                           f"says {pointer.nfiles} / {pointer.size}; the cache may be corrupt")
