"""Filesystem helpers for outputs that must never be seen half-written (docs/architecture.md 7.3: nothing written is lost)."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path


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
