"""`manifest.json`: what `rglcd prep` wrote, and the only place that says whether shards hold latents.

Fields: format, source, num_records, shards [{name, count, sha256, offsets}], seen, dropped {reason: count},
rejects [{key, reason}] (the first MAX_REJECTS dropped records: which file or row, and why),
content_hash (sha256 over the shards' hashes: the data version), latents {precomputed, resolution,
vae, shape, dtype, crop}, filters {min_image_size, max_caption_tokens, max_image_pixels, tokenizer, dedup}.
A shard's `offsets` (count + 1 byte offsets, rglcd.data.tarindex) let training read each record by a ranged
read; manifests written before them have none, and their shards are read whole (rglcd.data.sources).
"""
from __future__ import annotations

import hashlib
import re
from typing import Any

from rglcd.data.io import TooLarge, read_bytes
from rglcd.data.tarindex import check_offsets
from rglcd.safeio import decode_text, parse_json, short

MANIFEST = "manifest.json"
FORMAT = "rglcd-shards/1"
DROP_REASONS = ("corrupt_image", "too_small", "too_large", "missing_image", "outside_source", "empty_caption",
                "bad_caption_encoding", "caption_too_long", "duplicate", "corrupt_latents", "truncated")
MAX_MANIFEST_BYTES = 64 << 20
_SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\.tar")  # a plain file name inside the data folder
MAX_REJECTS = 1000  # per-record reasons listed in the manifest ("rejects"); the counts cover all


def content_hash(shards: list[dict[str, Any]]) -> str:
    """sha256 of the ordered shard names and their sha256s: equal data sets get equal hashes."""
    digest = hashlib.sha256()
    for shard in shards:
        digest.update(f"{shard['name']}:{shard['sha256']}\n".encode())
    return digest.hexdigest()


def manifest_url(root: str) -> str:
    return f"{root.rstrip('/')}/{MANIFEST}"


def read_manifest(root: str) -> dict[str, Any] | None:
    """The manifest of a prep output dir/URL, or None when there is none. A bad one is a clear error."""
    url = manifest_url(root)
    try:
        data = read_bytes(url, MAX_MANIFEST_BYTES)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):  # fsspec maps S3/HTTP 404 to these too
        return None
    except TooLarge as err:
        raise ValueError(f"{url}: {err}") from None
    manifest = parse_json(decode_text(data, "manifest", url), "manifest", url)
    check_manifest(manifest, url)
    return manifest


def data_version(root: str) -> str:
    """The data version of a prep output (dir or URL): its manifest's content hash, what `prep` records."""
    manifest = read_manifest(root)
    if manifest is None:
        raise FileNotFoundError(f"{root}: no {MANIFEST}; the data must be an `rglcd prep` output")
    return manifest["content_hash"]


def check_manifest(manifest: Any, url: str) -> None:
    """Shape and types of a manifest read from a (possibly shared, untrusted) data folder."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{url}: format {short(found, 60)} is not allowed; allowed: {FORMAT!r}")
    for key, kind in (("shards", list), ("num_records", int), ("latents", dict)):
        if not isinstance(manifest.get(key), kind):
            raise ValueError(f"{url}: field {key!r} is missing or not a {kind.__name__}")
    for i, shard in enumerate(manifest["shards"]):
        if not (isinstance(shard, dict) and isinstance(shard.get("name"), str) and _SHARD_NAME.fullmatch(shard["name"])
                and isinstance(shard.get("count"), int) and shard["count"] >= 0):
            raise ValueError(f"{url}: shards[{i}] {short(shard, 80)} is not allowed; allowed: "
                             "{name: <file name>.tar, count: integer >= 0, sha256}")
        problem = check_offsets(shard["offsets"], shard["count"]) if "offsets" in shard else None
        if problem is not None:
            raise ValueError(f"{url}: shards[{i}] ({short(shard['name'], 40)}) offsets: {problem}; the offsets must "
                             "be the ones `rglcd prep` wrote (re-run prep, or delete the field to read whole shards)")
    counted = sum(s["count"] for s in manifest["shards"])
    if counted != manifest["num_records"]:
        raise ValueError(f"{url}: shard counts add up to {counted}, num_records says {manifest['num_records']}")
