"""Resolve a model reference to a local directory: tiny:<type>, a local path, s3://bucket/prefix or a hub id.

Hub ids are the real presets' default. Without network they fail fast with a message saying how to
point at a local copy, instead of hanging in retries (232 s seen; docs/architecture.md 7.5).
"""
from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

HUB_HOST = "huggingface.co"


class ModelSourceError(RuntimeError):
    """A model reference that cannot be resolved; the message says what to do."""


def cache_root(cache_dir: str) -> Path:
    path = Path(os.path.expanduser(cache_dir))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_tiny(ref: str, cache_dir: str) -> Path:
    """'tiny:epsilon' -> a cached tiny teacher dir, built atomically on first use."""
    from rglcd.models.tiny import PREDICTION_TYPES, save_tiny_teacher

    prediction_type = ref.split(":", 1)[1] or "epsilon"
    if prediction_type not in PREDICTION_TYPES:
        raise ModelSourceError(f"model.teacher: {ref!r} is not allowed; allowed: tiny:epsilon, tiny:v_prediction")
    final = cache_root(cache_dir) / f"tiny-{prediction_type}-v1"
    if not (final / "model_index.json").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=final.parent))
        save_tiny_teacher(tmp, prediction_type)
        try:
            tmp.rename(final)
        except OSError:  # another process won the race; its copy is identical
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_s3(uri: str, cache_dir: str) -> Path:
    """Download every object under s3://bucket/prefix into the cache (once) and return the dir."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    dest = cache_root(cache_dir) / "s3" / bucket / prefix.strip("/")
    if (dest / ".complete").is_file():
        return dest
    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.strip("/") + "/")
        keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
        if not keys:
            raise ModelSourceError(f"{uri}: no objects under this prefix")
        for key in keys:
            target = dest / key[len(prefix.strip("/")) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(target))
    except (BotoCoreError, ClientError) as err:
        raise ModelSourceError(f"{uri}: cannot download ({type(err).__name__}: {err})") from None
    (dest / ".complete").touch()
    return dest


def resolve_hub(repo_id: str, revision: str | None, allow_patterns: list[str] | None = None) -> Path:
    """Download (or reuse the HF cache of) a hub repository; fails fast and clearly when offline."""
    from huggingface_hub import snapshot_download

    online = _hub_reachable()
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns,
                                      local_files_only=not online))
    except Exception as err:  # huggingface_hub raises several types for "not there"
        raise ModelSourceError(
            f"cannot load {repo_id!r} from the Hugging Face hub ({'no network' if not online else type(err).__name__}). "
            f"Download it where there is network (`huggingface-cli download {repo_id} --local-dir DIR`), "
            "copy DIR here and set the reference to that path (e.g. --set model.teacher=DIR), or use an s3:// URI.") from None


def resolve(ref: str, cache_dir: str, revision: str | None = None,
            allow_patterns: list[str] | None = None) -> Path:
    """Any model reference -> local directory."""
    if ref.startswith("tiny:"):
        return resolve_tiny(ref, cache_dir)
    if ref.startswith("s3://"):
        return resolve_s3(ref, cache_dir)
    path = Path(os.path.expanduser(ref))
    if path.exists():
        return path
    if ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        raise ModelSourceError(f"{ref!r}: no such local path (and not a hub id of the form owner/name)")
    return resolve_hub(ref, revision, allow_patterns)
