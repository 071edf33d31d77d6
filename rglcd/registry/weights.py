"""A registered version's weights on this machine: pulled from the DVC remote by pointer, once per md5.

`local_weights(pointer)` returns `<cache>/<md5>/<name>`: the first call pulls the exact tree the pointer
names (DVC checks every object's md5 while fetching, and the file count and size after checkout) into a
temporary sibling and renames it into place, so a failed or interrupted pull never leaves a directory
that a later call would trust; later calls reuse the folder named by the content hash.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from rglcd.storage import Pointer, pull, read_pointer

DEFAULT_CACHE = "~/.cache/rglcd/weights"
CACHE_ENV = "RGLCD_WEIGHTS_CACHE"


def cache_root(explicit: str | Path | None = None) -> Path:
    """The weights cache: the argument, else $RGLCD_WEIGHTS_CACHE, else ~/.cache/rglcd/weights."""
    return Path(explicit or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def local_weights(pointer: Pointer | str | Path, cache: str | Path | None = None) -> Path:
    """The directory holding `pointer`'s tree, pulled (and hash-checked) on the first call."""
    pointer = read_pointer(pointer)
    root = cache_root(cache) / pointer.md5.removesuffix(".dir")
    name = Path(pointer.path).name
    dest = root / (name if name not in ("", ".", "..") else "model")     # the pointer is data: no way out of root
    if dest.is_dir():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pull-", dir=root))
    try:
        pull(pointer, tmp / "tree")
        os.replace(tmp / "tree", dest)          # atomic: a concurrent loader either sees all of it or none
    except OSError:
        if not dest.is_dir():                   # not a lost race with another loader
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
