"""Filesystem helpers for outputs that must never be seen half-written (docs/architecture.md 7.3: nothing written is lost).

`replace_dir` swaps a finished directory into place. `build_once` is the one "build into a cache" of the
project (tiny teachers, S3 model copies, tiny reward weights, FID reference images, the toy world):

    path = build_once("~/.cache/rglcd", "tiny-epsilon-v1", lambda tmp: save_tiny_teacher(tmp, "epsilon"))

The entry is built in a temporary folder inside the cache root and published by one `rename`, so a
reader sees the whole entry or none. The build holds an exclusive `fcntl.flock` on `.<key>.lock`
beside it: a second process asking for the same key waits, then uses the winner's entry instead of
building again. A failed build (any exception, KeyboardInterrupt included) removes its temporary
folder; one left by a builder that was killed (SIGKILL, OOM, a lost node) is removed by the next
builder of that key, which holds the lock, so no live builder can own it. The lock files stay: removing
a lock file while another process waits on it would let two builders run at once.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

_BUILD_TAG = ".build-"      # temporary build folders: .<key>.build-<host>-<pid>-<random>


def replace_dir(tmp: str | Path, out: str | Path) -> Path:
    """Move a finished directory `tmp` to `out`.

    An existing `out` is renamed aside first and deleted only after the new one is in place, so at
    every moment `out` is either the old complete directory or the new complete one.
    """
    tmp, out = Path(tmp), Path(out)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.time_ns()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def cache_root(cache_dir: str | Path) -> Path:
    """The cache directory (`~` expanded), created if missing."""
    path = Path(os.path.expanduser(str(cache_dir)))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _check_key(key: str) -> None:
    if not key or key in (".", "..") or "/" in key or os.sep in key or key.startswith("."):
        raise ValueError(f"cache key {key!r} is not allowed; allowed: one path component not starting with '.'")


@contextlib.contextmanager
def _locked(path: Path, what: str) -> Iterator[bool]:
    """Hold an exclusive flock on `path` (yields True), or yield False where the filesystem has no locks."""
    with open(path, "a+b") as handle:
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another process building %s", what)
                fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            yield False          # no locks here: the rename race below still keeps one complete entry
            return
        yield True               # the lock is released when the file is closed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # alive, owned by someone else
        return True
    return True


def _stale(tmp: Path, key: str, locked: bool) -> bool:
    """A temporary folder of `key` whose builder is gone: any, under the lock; else a dead pid of this host."""
    if locked:
        return True
    host, _, rest = tmp.name[len(f".{key}{_BUILD_TAG}"):].rpartition("-")[0].rpartition("-")
    return host == socket.gethostname() and rest.isdigit() and not _pid_alive(int(rest))


def clean_stale(root: Path, key: str, locked: bool) -> list[Path]:
    """Remove the temporary build folders of `key` that no live builder owns; returns what was removed."""
    removed = []
    for tmp in root.glob(glob.escape(f".{key}{_BUILD_TAG}") + "*"):
        if _stale(tmp, key, locked):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    if removed:
        log.info("removed %d unfinished build(s) of %s", len(removed), root / key)
    return removed


def _build(root: Path, key: str, build: Callable[[Path], object]) -> None:
    final = root / key
    tmp = root / f".{key}{_BUILD_TAG}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        build(tmp)
        try:
            tmp.rename(final)                  # atomic; refused when `final` exists and is not empty
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not final.is_dir():
                raise
            log.info("%s was built by another process first; using it", final)
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build_once(root: str | Path, key: str, build: Callable[[Path], object],
               ready: Callable[[Path], bool] = Path.is_dir) -> Path:
    """`root/key`, built first by `build(tmp_dir)` unless it is there already; see the module docstring.

    `ready(path)` says whether an existing entry is complete (default: it is a directory); one that is
    not (e.g. written by an older, non-atomic version) is removed and built again.
    """
    _check_key(key)
    root = cache_root(root)
    final = root / key
    if ready(final):
        return final
    with _locked(root / f".{key}.lock", str(final)) as locked:
        if ready(final):                       # built while this process waited for the lock
            return final
        clean_stale(root, key, locked)
        if final.exists():                     # an incomplete entry: set it aside, then remove it
            aside = root / f".{key}{_BUILD_TAG}{socket.gethostname()}-0-incomplete-{uuid.uuid4().hex[:8]}"
            final.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
        _build(root, key, build)
    if not ready(final):
        raise RuntimeError(f"cache entry {final} is incomplete after its build")
    return final
