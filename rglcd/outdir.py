"""Output folders a user names (`rglcd prep --out`, `rglcd sample --out`): nothing the project did not
write is ever replaced or deleted (docs/threat-model.md 3.7).

    with work_area(out) as work:                  # out/.rglcd-work: locked, emptied of a killed run's leftovers
        stale = claim(out, owned, set(), overwrite, "--out")     # early: refuse a folder of someone else's files
        ... write into work ...
        stale = claim(out, owned, new, overwrite, "--out")       # names known: refuse replacing a foreign file
        install(work, out, new, last="manifest.json", stale=stale, journal=owned | new)

`owned` are the files an earlier run wrote (its manifest lists them); everything else in `out` is
foreign. A folder holding foreign files is refused unless `overwrite`; even then a foreign file is
never replaced or deleted, and a new file whose name a foreign file has is an error. Temporary files
live in `out/.rglcd-work` (never beside `out`), so a killed run leaves nothing outside its folder and
the next run clears it; a journal there lists the files being installed, so a run killed mid-install
still recognises them as its own.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

WORK = ".rglcd-work"
_LOCK, _JOURNAL = "lock", "journal.json"


def files_in(out: Path) -> set[str]:
    """Relative POSIX paths of every file and link under `out`, outside the work area."""
    if not out.is_dir():
        return set()
    found = set()
    for path in out.rglob("*"):
        rel = path.relative_to(out)
        if rel.parts[0] != WORK and (path.is_symlink() or not path.is_dir()):
            found.add(rel.as_posix())
    return found


def journal(out: Path) -> set[str]:
    """Files a run killed while installing had started to put in `out` (its journal), else empty."""
    try:
        names = json.loads((out / WORK / _JOURNAL).read_text())
    except (OSError, ValueError):
        return set()
    return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()


def claim(out: Path, owned: set[str], new: set[str], overwrite: bool, flag: str = "--out") -> set[str]:
    """Check that writing `new` into `out` loses nothing; returns the owned files that `new` leaves stale."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{flag}: {out} exists and is not a folder")
    present = files_in(out)
    foreign = sorted(present - owned)
    if foreign and not overwrite:
        raise FileExistsError(
            f"{flag}: {out} holds files this command did not write ({_names(foreign)}); choose an empty or new "
            "folder, or pass --overwrite to write beside them (they are left untouched)")
    clash = sorted(set(foreign) & new)
    if clash:
        raise FileExistsError(f"{flag}: {out} holds {_names(clash)}, not written by this command; even with "
                              "--overwrite such files are never replaced: move them away or choose another folder")
    return (owned & present) - new


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n[:80]) for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


@contextmanager
def work_area(out: Path, flag: str = "--out") -> Iterator[Path]:
    """`out/.rglcd-work`, locked against a concurrent writer and cleared of a killed run's leftovers (its
    journal is kept until the run installs); removed at the end, with `out` if it was created and stayed empty."""
    created = not out.exists()
    work = out / WORK
    work.mkdir(parents=True, exist_ok=True)
    lock = open(work / _LOCK, "a")
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise FileExistsError(f"{flag}: another process is writing {out}; wait for it to finish") from None
        _clear(work, keep=(_LOCK, _JOURNAL))
        yield work
    finally:
        lock.close()
        if (work / _JOURNAL).exists():  # an install failed half-way: the journal keeps its files ours
            _clear(work, keep=(_JOURNAL,))
        else:
            shutil.rmtree(work, ignore_errors=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def _clear(work: Path, keep: tuple[str, ...]) -> None:
    for entry in work.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def install(staged: Path, out: Path, new: list[str], last: str, stale: set[str], journal_names: set[str]) -> None:
    """Move the files `new` from `staged` into `out`, `last` (the manifest) last, then delete `stale`.

    The old `last` is removed first, so a reader never sees an old manifest over new files; a journal
    in the work area names every file in play until the install is complete."""
    (out / WORK / _JOURNAL).write_text(json.dumps(sorted(journal_names)))
    (out / last).unlink(missing_ok=True)
    for name in [n for n in new if n != last] + [last]:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged / name, out / name)
    remove(out, stale - set(new))
    (out / WORK / _JOURNAL).unlink()


def remove(out: Path, names: set[str]) -> None:
    """Delete these files of `out` (ones the project wrote) and the folders they leave empty."""
    for name in sorted(names):
        path = out / name
        path.unlink(missing_ok=True)
        parent = path.parent
        while parent != out and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


__all__ = ["WORK", "claim", "files_in", "install", "journal", "remove", "work_area"]
