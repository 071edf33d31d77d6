"""Where a table row's image reference may point (docs/threat-model.md 3.6: tables are untrusted).

A table (csv/parquet/jsonl) names each image by a path or URL. By default a reference resolves only
inside the table's own folder (local tables; symlinks are followed before the check) or its own URL
prefix (s3:// or http(s):// tables). Absolute paths elsewhere, `../` escapes, other hosts and other
schemes are refused with the drop reason `outside_source`, so a hostile table cannot make prep read
local files (/etc/passwd, ~/.aws/credentials) or fetch internal addresses (cloud metadata endpoints).
`data.remote_images` allow-lists further URL prefixes (http(s)://host/path or s3://bucket/prefix).
"""
from __future__ import annotations

import posixpath
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from rglcd.urls import has_credentials

OUTSIDE = "outside_source"
_SCHEMES = ("s3", "http", "https")


def _normalized(url: str) -> str | None:
    """`url` with its path normalised ('..' resolved, percent-escapes decoded once); None if unusable."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return None
    if parts.scheme.lower() not in _SCHEMES or not parts.hostname or has_credentials(url):
        return None
    scheme = parts.scheme.lower()
    raw = parts.path if scheme == "s3" else unquote(parts.path)  # S3 keys are literal; HTTP servers decode
    path = "/" + posixpath.normpath("/" + raw).lstrip("/")       # normpath keeps a leading '//'
    return urlunsplit((scheme, parts.netloc.lower(), path if scheme == "s3" else quote(path), parts.query, ""))


def _under(url: str, prefix: str) -> bool:
    u, p = urlsplit(url), urlsplit(prefix)
    if (u.scheme, u.netloc) != (p.scheme, p.netloc):
        return False
    decode = (lambda x: x) if u.scheme == "s3" else unquote
    root, path = decode(p.path).rstrip("/"), decode(u.path)
    return not root or path == root or path.startswith(root + "/")


def resolve_remote(ref: str, base: str | None, allowed: tuple[str, ...]) -> str | None:
    """A URL reference (or a path relative to the remote table `base`), if it stays inside `base` or an
    allowed prefix; None otherwise."""
    absolute = "://" in ref
    if not absolute and (base is None or ref.startswith("/")):
        return None
    url = _normalized(ref if absolute else f"{base}/{ref}")
    if url is None:
        return None
    prefixes = ([base] if base else []) + list(allowed)
    return url if any(_under(url, n) for p in prefixes if (n := _normalized(p)) is not None) else None


def resolve_local(ref: str, base: Path) -> str | None:
    """A path reference of a local table, if it resolves (symlinks followed) inside the table's folder `base`."""
    if "\0" in ref:
        return None
    path = Path(ref)
    target = (path if path.is_absolute() else base / path).resolve()
    return str(target) if target.is_relative_to(base.resolve()) else None


def resolve_ref(ref: str, base: str, remote_base: bool, allowed: tuple[str, ...] = ()) -> str | None:
    """Where to read the image `ref` of a table whose folder/prefix is `base`; None: outside the source
    (or not resolvable at all: a reference that is not UTF-8 text, or holds a NUL)."""
    try:
        ref.encode("utf-8")
    except UnicodeEncodeError:  # bytes that were not UTF-8 in a CSV (read with surrogateescape)
        return None
    if "://" in ref:
        return resolve_remote(ref, base if remote_base else None, allowed)
    return resolve_remote(ref, base, allowed) if remote_base else resolve_local(ref, Path(base))


__all__ = ["OUTSIDE", "resolve_ref"]
