"""`dvc://REPO[@REV]/PATH`: a path of a DVC (or plain Git) repository at a revision, as a data source.

A team's DVC data registry is an input like any other (docs/operations.md "DVC sources"):

    dvc:///srv/registry.git@v3/data/photos                       # local repository, tag v3
    dvc://https://github.com/org/registry@9f2c1e0/data/photos    # Git URL, a commit
    dvc://https://git.example.com/org/registry.git/data/photos   # no @REV: the default branch

REPO is an absolute local path or an http(s)/ssh/file Git URL (no credentials: they are refused at the
edge and at config load); it holds no '@'. REV, any tag, branch or commit, runs from the first '@' to
the next '/' and is percent-decoded (`%2F` for a '/' in a tag name). Without REV, REPO must end in
`.git` so its end is known. PATH is relative to the repository root; '..' is refused.

Reading goes through `dvc.api.DVCFileSystem` (upstream dvc/fs/dvc.py, dvc/api/data.py,
dvc/repo/open_repo.py): the repository is always cloned into a temporary folder (a local path too, as
`file://`), so the user's working tree, its uncommitted files and its `.git/config` are never read
or written, and REV (default: the default branch) fixes the content. DVC reads `.dvc` files and the
committed `.dvc/config` to find objects in the repository's remote; nothing in the repository runs:
no `dvc.yaml` stage is executed by a read, the clone is made by dulwich (no git hooks) and our cache
settings (`cache.dir`, `cache.type=copy`, `core.site_cache_dir`) override the repository's, so DVC
writes only in the cache folder given (and its temporary clone).

Two operations, neither writing outside the cache folder given:
- `dvc_source_version(url)`: the content id of PATH at REV (its DVC md5, or a hash of its listing)
  without downloading the data: the "data version" of a `dvc://` source (a new commit that does not
  touch PATH keeps the version);
- `materialize(url, cache_dir)`: PATH at REV downloaded once into `<cache_dir>/dvc-sources/<id>`
  (rglcd.fsutil.build_once), its DVC md5 re-checked, and handed to `rglcd.data.sources.open_source`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator
from urllib.parse import unquote

from rglcd.fsutil import build_once
from rglcd.urls import has_credentials, redact_urls

SCHEME = "dvc://"
_REPO_URL = re.compile(r"^(https?|ssh|file)://[^/@\s]+(/[^@\s]*)?$")
_MD5 = re.compile(r"^[0-9a-f]{32}(\.dir)?$")
SOURCES_DIR = "dvc-sources"


class DvcSourceError(ValueError):
    """A `dvc://` URL that is malformed, or whose repository, revision or path cannot be read."""


@dataclass(frozen=True)
class DvcUrl:
    url: str                # as written
    repo: str               # an absolute local path or a Git URL
    rev: str | None         # None: the default branch
    path: str               # relative to the repository root, POSIX

    def git_url(self) -> str:
        """What DVC clones: a Git URL (a local path as file://, so it is cloned, never opened in place)."""
        return Path(self.repo).as_uri() if self.repo.startswith("/") else self.repo


@dataclass(frozen=True)
class Resolved:
    ref: DvcUrl
    commit: str             # the commit REV resolved to
    content_id: str         # DVC md5 of PATH ("<hex>" or "<hex>.dir"), or "tree-<sha256>" of its listing
    is_dir: bool

    @property
    def version(self) -> str:
        return f"dvc:{self.content_id}"


def is_dvc_url(spec: str) -> bool:
    return spec.startswith(SCHEME)


def parse_dvc_url(url: str) -> DvcUrl:
    """`dvc://REPO[@REV]/PATH` -> its parts; a DvcSourceError naming the URL and the grammar otherwise."""
    def bad(why: str) -> DvcSourceError:
        return DvcSourceError(f"data source {redact_urls(url)[:200]!r}: {why}; allowed: dvc://REPO[@REV]/PATH with "
                              "REPO an absolute path or http(s)/ssh/file Git URL (REV: tag, branch or commit, "
                              "%2F for '/'; without @REV, REPO ends in .git)")
    if not url.startswith(SCHEME):
        raise bad("not a dvc:// URL")
    if has_credentials(url):
        raise bad("embeds credentials; give them through the environment or git's credential helper")
    rest = url[len(SCHEME):]
    if "@" in rest:
        repo, _, tail = rest.partition("@")
        rev, slash, path = tail.partition("/")
        rev = unquote(rev)
        if not rev or not slash:
            raise bad("an empty revision or no PATH after it")
    else:
        match = re.match(r"^(.*?\.git)/(.*)$", rest)
        if not match:
            raise bad("cannot tell where the repository ends")
        repo, rev, path = match.group(1), None, match.group(2)
    return DvcUrl(url, _check_repo(repo, bad), rev, _check_path(path, bad))


def _check_repo(repo: str, bad) -> str:
    if repo.startswith("/"):
        return os.path.normpath(repo)
    if not _REPO_URL.match(repo):
        raise bad(f"REPO {repo[:120]!r} is neither an absolute path nor a Git URL")
    return repo


def _check_path(path: str, bad) -> str:
    parts = PurePosixPath(path).parts
    if not path or path.startswith("/") or any(p in ("..", ".") for p in path.split("/") if p) or not parts:
        raise bad(f"PATH {path[:120]!r} must be a relative path inside the repository, without '..'")
    return "/".join(parts)


@contextmanager
def open_fs(ref: DvcUrl, cache_dir: str | None = None) -> Iterator[Any]:
    """The DVCFileSystem of `ref` at its revision, closed after use; errors name the URL and what is missing."""
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException
    from dvc.repo.open_repo import clean_repos

    if ref.repo.startswith("/") and not os.path.exists(ref.repo):
        raise DvcSourceError(f"data source {ref.url!r}: repository {ref.repo} does not exist")
    with tempfile.TemporaryDirectory(prefix="rglcd-dvc-") as tmp:
        root = os.path.abspath(os.path.expanduser(cache_dir or tmp))
        config = {"cache": {"dir": root, "type": "copy"},                  # ours, whatever the repository says
                  "core": {"site_cache_dir": os.path.join(root, "dvc-site")}}   # DVC's index and state
        fs = None
        try:
            fs = DVCFileSystem(ref.git_url(), rev=ref.rev, config=config)
            fs.repo  # clones and resolves REV now, so a bad repository or revision fails here
            yield fs
        except DvcException as err:
            repo = f"repository {redact_urls(ref.repo)} or its remote"
            what = f"revision {ref.rev!r}" if "revision" in str(err) else repo
            raise DvcSourceError(f"data source {ref.url!r}: cannot read {what} "
                                 f"({type(err).__name__}: {redact_urls(str(err))[:200]})") from None
        finally:
            if fs is not None:
                fs.close()
            clean_repos()       # DVC's temporary clones (what `dvc` itself removes when a command ends)


def _content_id(fs: Any, path: str, info: dict[str, Any]) -> str:
    """PATH's DVC md5 when it is (inside) one DVC output; else a sha256 of its listing (per file: path,
    DVC md5 or git blob sha, size): metadata only, the data is not downloaded."""
    md5 = info.get("md5")
    if isinstance(md5, str) and _MD5.match(md5):
        return md5
    if info["type"] != "directory":
        return "tree-" + hashlib.sha256(json.dumps(_file_id(info)).encode()).hexdigest()
    listing = sorted((name.removeprefix("/"), _file_id(entry)) for name, entry in
                     fs.find(path, detail=True, dvc_only=False).items())
    return "tree-" + hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def _file_id(info: dict[str, Any]) -> list[Any]:
    sha = (info.get("fs_info") or {}).get("sha") if "md5" not in info else None
    return [info.get("md5") or sha, info.get("size")]


def _resolve(fs: Any, ref: DvcUrl) -> Resolved:
    try:
        info = fs.info(ref.path)
    except FileNotFoundError:
        raise DvcSourceError(f"data source {ref.url!r}: {ref.path} is not in the repository at "
                             f"{ref.rev or 'its default branch'}") from None
    return Resolved(ref, fs.repo.get_rev(), _content_id(fs, ref.path, info), info["type"] == "directory")


def resolve(url: str | DvcUrl, cache_dir: str | None = None) -> Resolved:
    """The commit and content id of a `dvc://` URL, without downloading its data."""
    ref = url if isinstance(url, DvcUrl) else parse_dvc_url(url)
    with open_fs(ref, cache_dir) as fs:
        return _resolve(fs, ref)


def dvc_source_version(url: str, cache_dir: str | None = None) -> str:
    """The data version of a `dvc://` source: "dvc:<md5>" or "dvc:tree-<sha256>" (no data download)."""
    return resolve(url, cache_dir).version


def materialize(url: str, cache_dir: str) -> Path:
    """PATH at REV as a local file or folder under `<cache_dir>/dvc-sources/`, downloaded once per content id.

    DVC objects go through `cache_dir` (the shared DVC cache, so a second revision fetches only what
    changed); a DVC output is re-hashed after download and must match its md5 (the remote is untrusted)."""
    ref = parse_dvc_url(url)
    with open_fs(ref, cache_dir) as fs:
        resolved = _resolve(fs, ref)
        name = PurePosixPath(ref.path).name
        entry = build_once(Path(cache_dir).expanduser() / SOURCES_DIR, resolved.content_id,
                           lambda tmp: _download(fs, resolved, tmp / name))
    return entry / name


def _download(fs: Any, resolved: Resolved, dest: Path) -> None:
    fs.get(resolved.ref.path, str(dest), recursive=resolved.is_dir)
    links = [p for p in ([dest, *dest.rglob("*")] if resolved.is_dir else [dest]) if p.is_symlink()]
    if links:
        raise DvcSourceError(f"data source {resolved.ref.url!r}: {links[0].name} is a symlink; refused")
    if not resolved.content_id.startswith("tree-"):
        got = _local_md5(dest, resolved.is_dir)
        if got != resolved.content_id:
            raise DvcSourceError(f"data source {resolved.ref.url!r}: downloaded content hashes to {got}, the "
                                 f"repository says {resolved.content_id} (corrupt remote?)")


def _local_md5(path: Path, is_dir: bool) -> str:
    """DVC's md5 of a local file or folder (the `.dir` tree hash for a folder), as `dvc add` computes it."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory(prefix="rglcd-hash-") as tmp:
        _, _, obj = build(HashFileDB(fs, tmp), str(path), fs, "md5")
    return obj.hash_info.value


__all__ = ["DvcSourceError", "DvcUrl", "Resolved", "is_dvc_url", "parse_dvc_url", "resolve", "dvc_source_version",
           "materialize", "SCHEME"]
