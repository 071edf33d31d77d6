"""One data id (docs/operations.md "One data id"): a dataset is named by prep's content hash, everywhere.

A prepared dataset has two hashes: the manifest's `content_hash` (sha256 over its shards' names and
sha256s, computed by `rglcd prep`) and the DVC md5 of the pushed directory. The content hash is THE data
id: it is what prep, training (resume checks it), the LRM artifact, KFP's `data_version` outputs and the
registry's `data_version` tag carry, and it does not depend on how or where the folder was stored. The
DVC md5 is only the storage address: recorded beside it (`data.dvc.md5`, `data.dvc.pointer`), used to pull.
Given a dataset pointer alone, the id is read from the manifest in the remote (one small object).
"""
from __future__ import annotations

from typing import Any

from rglcd.data.manifest import MANIFEST, MAX_MANIFEST_BYTES, check_manifest
from rglcd.safeio import decode_text, parse_json
from rglcd.storage import Pointer
from rglcd.storage.listing import read_member


def data_id_of(pointer: Pointer) -> str:
    """The data id of a pushed prep output: its manifest's content hash, read from the remote."""
    where = f"{MANIFEST} of {pointer.md5} in {pointer.remote}"
    raw = read_member(pointer, MANIFEST, MAX_MANIFEST_BYTES)
    manifest = parse_json(decode_text(raw, "manifest", where), "manifest", where)
    check_manifest(manifest, where)
    return manifest["content_hash"]


def data_fields(data_version: Any, data_pointer: Pointer | None = None) -> tuple[str | None, Pointer | None]:
    """(data id, storage address) from what a caller has: an id string, or the dataset's pointer, or both."""
    if isinstance(data_version, Pointer):
        return data_id_of(data_version), data_version
    return (str(data_version) if data_version else None), data_pointer


__all__ = ["data_id_of", "data_fields"]
