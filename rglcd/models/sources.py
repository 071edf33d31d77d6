"""Resolve a model reference to a local directory: tiny:<type>, a local path, s3://bucket/prefix or a hub id.

Hub ids are the real presets' default. Without network they fail fast with a message saying how to
point at a local copy, instead of hanging in retries (232 s seen; docs/architecture.md 7.5).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

from rglcd.fsutil import build_once, cache_root
from rglcd.plugins import source_handler

HUB_HOST = "huggingface.co"


class ModelSourceError(RuntimeError):
    """A model reference that cannot be resolved; the message says what to do."""


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_tiny(ref: str, cache_dir: str) -> Path:
    """'tiny:epsilon' -> a cached tiny teacher dir, built once (`rglcd.fsutil.build_once`)."""
    from rglcd.models.tiny import PREDICTION_TYPES, save_tiny_teacher

    prediction_type = ref.split(":", 1)[1] or "epsilon"
    if prediction_type not in PREDICTION_TYPES:
        raise ModelSourceError(f"model.teacher: {ref!r} is not allowed; allowed: tiny:epsilon, tiny:v_prediction")
    return build_once(cache_dir, f"tiny-{prediction_type}-v1", lambda tmp: save_tiny_teacher(tmp, prediction_type),
                      ready=lambda path: (path / "model_index.json").is_file())


def _download_prefix(client, uri: str, bucket: str, prefix: str, dest: Path) -> None:
    """Every object under s3://bucket/prefix/ into `dest` (keys relative to the prefix), then `.complete`."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
        keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
        if not keys:
            raise ModelSourceError(f"{uri}: no objects under this prefix")
        for key in keys:
            target = dest / key[len(prefix) + 1:]
            if not target.resolve().is_relative_to(dest.resolve()):
                raise ModelSourceError(f"{uri}: object key {key!r} points outside the prefix; refused")
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(target))
    except (BotoCoreError, ClientError) as err:
        raise ModelSourceError(f"{uri}: cannot download ({type(err).__name__}: {err})") from None
    (dest / ".complete").touch()


def resolve_s3(uri: str, cache_dir: str) -> Path:
    """Download every object under s3://bucket/prefix into the cache (once) and return the dir."""
    import boto3

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    if not bucket or not prefix or any(part in ("", ".", "..") or part.startswith(".") for part in prefix.split("/")):
        raise ModelSourceError(f"{uri}: not allowed; allowed: s3://bucket/prefix, whose path parts are not empty "
                               "and do not start with '.'")
    parent, _, name = prefix.rpartition("/")
    root = cache_root(cache_dir) / "s3" / bucket / parent
    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
    return build_once(root, name, lambda tmp: _download_prefix(client, uri, bucket, prefix, tmp),
                      ready=lambda path: (path / ".complete").is_file())


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
    """Any model reference -> local directory. A registered scheme ("toy:teacher", `rglcd.plugins`) first."""
    handler = source_handler("model", ref)
    if handler is not None:
        try:
            return Path(handler(ref, cache_dir))
        except ValueError as err:
            raise ModelSourceError(str(err)) from None
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


def checkpoint_dir(ref: str | Path, cache_dir: str) -> Path:
    """A checkpoint reference that must not fall back to the hub (an LRM, an optimizer state): s3:// URIs and
    registered schemes ("toy:lrm") are resolved through `resolve`; anything else is a local path."""
    ref = str(ref)
    if ref.startswith("s3://") or source_handler("model", ref) is not None:
        return resolve(ref, cache_dir)
    return Path(ref).expanduser()
