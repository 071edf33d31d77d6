"""Where artifacts go: a DVC remote (s3://bucket/prefix on any S3 endpoint, or a local directory).

The remote's object database is opened with DVC's own machinery (`dvc.fs.get_cloud_fs`, the same
config keys as `dvc remote modify`: endpointurl, region), so objects land exactly where `dvc push`
puts them (`<remote>/files/md5/xx/...`) and a pointer committed to a DVC git repo pulls with `dvc pull`.
Credentials are never passed here: S3 clients take them from the standard AWS chain (env vars such as a
Kubernetes Secret mounted as env, AWS_PROFILE, instance roles). Every error names the remote and is
scrubbed of secret values.
"""
from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from rglcd.urls import redact_urls

_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ACCESS_KEY_ID")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_DVC_LOGGERS = ("dvc_data", "dvc_objects")


class StorageError(RuntimeError):
    """A push/pull/verify that failed; the message names the remote and what to do, never a secret."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


def redact(text: str) -> str:
    """Replace the values of AWS secret env vars, and the credentials of any URL, found in `text` with '***'."""
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return redact_urls(text)


def safe_url(url: str) -> str:
    """`url` with any user:password@ part replaced by ***@ (for messages and records)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


@dataclass(frozen=True)
class RemoteSpec:
    """A DVC remote: `url` is s3://bucket/prefix or an absolute local directory."""

    url: str
    endpoint_url: str | None = None
    region: str | None = None

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")

    def describe(self) -> str:
        """The remote for messages, never with credentials."""
        url = safe_url(self.url)
        return f"{url} (endpoint {safe_url(self.endpoint_url)})" if self.endpoint_url else url


def make_remote(url: str, endpoint_url: str | None = None, region: str | None = None,
                field: str = "storage.remote") -> RemoteSpec:
    """Validate a remote at the edge; local paths become absolute. `field` names the setting in errors."""
    if not url:
        raise StorageError(f"{field}: empty; allowed: s3://bucket/prefix or a local directory")
    if "://" in url and "@" in urlsplit(url).netloc:
        raise StorageError(f"{field}: {safe_url(url)!r} embeds credentials (user:password@); give them as "
                           "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY env or a profile")
    scheme = urlsplit(url).scheme
    if scheme == "s3":
        bucket = urlsplit(url).netloc
        if not _BUCKET.match(bucket):
            raise StorageError(f"{field}: bucket {bucket!r} in {url!r} is not a valid S3 bucket name; "
                               "allowed: 3-63 lowercase letters, digits, '.' and '-'")
        url = url.rstrip("/")
    elif scheme in ("", "file"):
        url = str(Path(os.path.expanduser(url.removeprefix("file://"))).resolve())
    else:
        raise StorageError(f"{field}: {url!r} uses scheme {scheme!r}; allowed: s3://bucket/prefix or a local directory")
    if endpoint_url is not None:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StorageError(f"storage.endpoint_url: {endpoint_url!r} is not allowed; allowed: http(s)://host[:port]")
        if parts.username or parts.password:
            raise StorageError("storage.endpoint_url: must not embed credentials (user:password@); "
                               "give them as AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY env or a profile")
        if not url.startswith("s3://"):
            raise StorageError(f"storage.endpoint_url: set for the local remote {url!r}; it only applies to s3:// remotes")
    return RemoteSpec(url, endpoint_url, region)


def open_remote(spec: RemoteSpec, create: bool = False, state: Any = None):
    """The remote's object DB (`dvc_data` HashFileDB at <remote>/files/md5), on a fresh S3 client.
    `state`: a dvc_data State whose cached md5s `build()` uses for the files it stages for this remote."""
    from dvc_data.hashfile.db import get_odb

    if spec.is_s3:
        import s3fs
        from dvc.fs import get_cloud_fs

        s3fs.S3FileSystem.clear_instance_cache()  # no stale credentials or listings from an earlier call
        conf = {"url": spec.url, **({"endpointurl": spec.endpoint_url} if spec.endpoint_url else {}),
                **({"region": spec.region} if spec.region else {})}
        cls, fs_conf, root = get_cloud_fs(None, **conf)
        fs = cls(**fs_conf)
    else:
        from dvc_objects.fs.local import LocalFileSystem

        fs, root = LocalFileSystem(), spec.url
        if not create and not os.path.isdir(root):
            raise StorageError(f"local remote {root!r} does not exist")
    return get_odb(fs, fs.join(root, "files", "md5"), hash_name="md5", **({"state": state} if state is not None else {}))


def open_cache(cache_dir: str | Path):
    """The local DVC cache (same layout as `.dvc/cache`), checked out by copy so outputs stay writable."""
    from dvc_data.hashfile.db import get_odb
    from dvc_objects.fs.local import LocalFileSystem

    root = Path(os.path.expanduser(str(cache_dir))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    fs = LocalFileSystem()
    return get_odb(fs, fs.join(str(root), "files", "md5"), hash_name="md5", type=["copy"])


def _error_codes(exc: BaseException) -> set[str]:
    codes, seen = set(), set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            codes.add(str(response.get("Error", {}).get("Code", "")))
        codes.add(type(exc).__name__)
        exc = exc.__cause__ or exc.__context__
    return codes


def explain(exc: BaseException, spec: RemoteSpec) -> str:
    """One line saying what went wrong with `spec` and what to do."""
    codes, where = _error_codes(exc), spec.describe()
    bucket = urlsplit(spec.url).netloc
    if codes & {"NoCredentialsError", "PartialCredentialsError"}:
        return f"no S3 credentials for remote {where}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or mount the S3 Secret as env"
    if isinstance(exc, PermissionError) or codes & {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken"}:
        reason = next((c for c in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken") if c in codes), "access denied")
        return (f"access denied by remote {where} ({reason}): check the credentials in AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE / the mounted Secret) and their permissions")
    if "NoSuchBucket" in codes:
        return f"bucket {bucket!r} does not exist at remote {where}: create it or fix storage.remote"
    if codes & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ConnectionRefusedError",
                "ConnectionError", "ServerDisconnectedError", "ReadTimeoutError", "ClientOSError"}:
        return f"cannot reach remote {where}: {type(exc).__name__}: {exc}; retry when the endpoint is up"
    return f"remote {where}: {type(exc).__name__}: {exc}"


class _Collect(logging.Handler):
    """Keeps the exceptions DVC logs for objects it failed to transfer (it does not raise them)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])


@contextmanager
def remote_errors(spec: RemoteSpec, action: str) -> Iterator[list[BaseException]]:
    """Turn any failure talking to `spec` into a StorageError; yields the list of per-object errors DVC logged."""
    handler = _Collect()
    loggers = [logging.getLogger(name) for name in _DVC_LOGGERS]
    saved = [lg.propagate for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.propagate = False           # DVC's per-object tracebacks become one summarised error
    try:
        yield handler.errors
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - every backend error becomes one clear message
        raise StorageError(f"{action} failed: {explain(exc, spec)}") from None
    finally:
        for lg, propagate in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.propagate = propagate
