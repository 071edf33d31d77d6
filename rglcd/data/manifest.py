"""`manifest.json`: what `rglcd prep` wrote, and the only place that says whether shards hold latents.

Fields: format, source, num_records, shards [{name, count, sha256}], seen, dropped {reason: count},
content_hash (sha256 over the shards' hashes: the data version), latents {precomputed, resolution,
vae, shape, dtype, crop}, filters {min_image_size, max_caption_tokens, tokenizer}.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from rglcd.data.io import read_bytes

MANIFEST = "manifest.json"
FORMAT = "rglcd-shards/1"
DROP_REASONS = ("corrupt_image", "too_small", "missing_image", "empty_caption", "caption_too_long",
                "duplicate", "truncated")


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
        text = read_bytes(url).decode()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):  # fsspec maps S3/HTTP 404 to these too
        return None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{url}: not valid JSON ({err})") from None
    check_manifest(manifest, url)
    return manifest


def data_version(root: str) -> str:
    """The data version of a prep output (dir or URL): its manifest's content hash, what `prep` records."""
    manifest = read_manifest(root)
    if manifest is None:
        raise FileNotFoundError(f"{root}: no {MANIFEST}; the data must be an `rglcd prep` output")
    return manifest["content_hash"]


def check_manifest(manifest: dict[str, Any], url: str) -> None:
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{url}: format {manifest.get('format')!r} is not allowed; allowed: {FORMAT!r}")
    for key in ("shards", "num_records", "latents"):
        if key not in manifest:
            raise ValueError(f"{url}: missing field {key!r}")
    counted = sum(int(s["count"]) for s in manifest["shards"])
    if counted != manifest["num_records"]:
        raise ValueError(f"{url}: shard counts add up to {counted}, num_records says {manifest['num_records']}")
