"""The `.dir` object of a pulled version, checked before anything is fetched or written.

A remote is untrusted (docs/threat-model.md): its `.dir` object lists `{"relpath", "md5"}` entries
that DVC would write to DEST/relpath and read from `files/md5/<md5[:2]>/<md5[2:]>`. A crafted listing
could hold `../x`, `/etc/x`, `a/./b`, a file that is also a folder, or an md5 like `../../x`. So the
listing is read here first (from the local cache when it already has it, else from the remote), its
bytes must hash to the pointer's md5 (then DVC's own transfer, which re-hashes, sees the same bytes),
and every entry must be a plain relative POSIX path of normal names and a 32-hex md5.
"""
from __future__ import annotations

import hashlib
import json
import re

from rglcd.storage.pointer import Pointer
from rglcd.storage.remote import RemoteSpec, StorageError, make_remote, open_remote, remote_errors

MAX_LISTING_BYTES = 256 << 20       # a .dir of ~1.5 million entries
_MD5 = re.compile(r"^[0-9a-f]{32}$")


def where(pointer: Pointer, spec: RemoteSpec) -> str:
    """How an error names the pointer's object: its md5 and artifact name, and the remote."""
    return f"{pointer.md5} ({pointer.path}) in remote {spec.describe()}"


def read_listing(odb, pointer: Pointer, spec: RemoteSpec) -> bytes:
    """The `.dir` object's bytes from `odb` (a remote or the local cache), checked against the pointer."""
    path = odb.oid_to_path(pointer.md5)
    try:
        with odb.fs.open(path, "rb") as f:
            raw = f.read(MAX_LISTING_BYTES + 1)
    except FileNotFoundError:
        raise StorageError(f"pull: object {where(pointer, spec)} is missing (was it pushed there?)") from None
    if len(raw) > MAX_LISTING_BYTES:
        raise StorageError(f"pull: object {where(pointer, spec)} is over {MAX_LISTING_BYTES} bytes; not a listing")
    if hashlib.md5(raw).hexdigest() != pointer.md5.removesuffix(".dir"):
        raise StorageError(f"pull: object {where(pointer, spec)} is corrupt (its md5 differs); push the directory again")
    return raw


def check_listing(raw: bytes, pointer: Pointer, spec: RemoteSpec) -> list[tuple[str, str]]:
    """(relpath, md5) of every entry; refuses any path that would leave DEST or collide."""
    try:
        entries = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as err:
        raise StorageError(f"pull: object {where(pointer, spec)} is not a DVC .dir listing ({err})") from None
    if not isinstance(entries, list):
        raise StorageError(f"pull: object {where(pointer, spec)} is not a DVC .dir listing (not a list)")
    out, files, dirs = [], set(), set()
    for entry in entries:
        if not isinstance(entry, dict):
            raise StorageError(f"pull: object {where(pointer, spec)} holds an entry that is not a mapping")
        relpath, md5 = entry.get("relpath"), entry.get("md5")
        check_relpath(relpath, pointer, spec)
        if not isinstance(md5, str) or not _MD5.match(md5):
            raise StorageError(f"pull: object {where(pointer, spec)}: entry {relpath!r} has md5 {str(md5)[:80]!r}; "
                               "allowed: 32 hex digits")
        parts = relpath.split("/")
        prefixes = {"/".join(parts[:i]) for i in range(1, len(parts))}
        if relpath in files or relpath in dirs or prefixes & files:
            raise StorageError(f"pull: object {where(pointer, spec)}: entry {relpath!r} collides with another "
                               "entry (listed twice, or both a file and a folder)")
        files.add(relpath)
        dirs |= prefixes
        out.append((relpath, md5))
    return out


def check_relpath(relpath: object, pointer: Pointer, spec: RemoteSpec) -> None:
    """A relative POSIX path of normal names: no '', '.', '..', leading '/', backslash or NUL."""
    ok = (isinstance(relpath, str) and 0 < len(relpath) <= 4096 and not relpath.startswith("/")
          and "\\" not in relpath and "\x00" not in relpath
          and all(part not in ("", ".", "..") for part in relpath.split("/")))
    if not ok:
        shown = relpath[:200] if isinstance(relpath, str) else f"<{type(relpath).__name__}>"
        raise StorageError(f"pull: object {where(pointer, spec)} lists the path {shown!r}, which would be written "
                           "outside the destination or is not a plain relative path; nothing was written")


def read_member(pointer: Pointer, relpath: str, max_bytes: int, spec: RemoteSpec | None = None) -> bytes:
    """One small file of a pushed directory (e.g. a dataset's manifest.json), read from the remote alone:
    the listing and the file's object, each checked against its md5; nothing else is fetched."""
    spec = spec or make_remote(pointer.remote, pointer.endpoint_url, pointer.region, field="pointer meta.rglcd.remote")
    with remote_errors(spec, f"reading {relpath} of {pointer.md5}"):
        odb = open_remote(spec)
        md5 = dict(check_listing(read_listing(odb, pointer, spec), pointer, spec)).get(relpath)
        if md5 is None:
            raise StorageError(f"{where(pointer, spec)} has no file {relpath!r}")
        with odb.fs.open(odb.oid_to_path(md5), "rb") as f:
            raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes or hashlib.md5(raw).hexdigest() != md5:
        raise StorageError(f"{relpath} of {where(pointer, spec)} is over {max_bytes} bytes or corrupt (md5 differs)")
    return raw
