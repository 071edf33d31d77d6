"""A Git repository as the project's data and model registry: one `.dvc` file per version, committed and tagged.

With `storage.git_registry` set (a bare repository path or a Git URL), every registered model version and
its dataset get their pointer committed to that repository, beside a `.dvc/config` that names the DVC
remote, and a tag (docs/operations.md "A Git registry"):

    models/<name>.dvc   tag  model-<name>@v<N>         (N: the MLflow model version)
    data/<name>.dvc     tag  data-<name>@<id[:16]>     (id: the dataset's data id, prep's content hash)

so plain DVC reaches every version without rglcd:

    dvc get  /srv/registry.git models/rglcd-student --rev model-rglcd-student@v3
    dvc import /srv/registry.git data/rglcd-student --rev data-rglcd-student@3f2a9c1e0b7d55aa
    dvc ls   /srv/registry.git data --rev data-rglcd-student@3f2a9c1e0b7d55aa
    rglcd prep --source dvc:///srv/registry.git@data-rglcd-student@3f2a9c1e0b7d55aa/data/rglcd-student --out OUT

Tag names hold no '/', so they fit in a `dvc://REPO@REV/PATH` URL as they are.

How a record is written, with dulwich (pure Python; what scmrepo uses under DVC): clone the registry into
a temporary folder, write the files, commit, tag, push the branch, then the tag. No git hook runs: the
clone is fresh (no hooks folder is created), commits are made with `no_verify`, and dulwich's push to
a local repository writes objects and compare-and-swaps the ref without running the target's hooks.
Concurrency: a push whose branch moved meanwhile is rejected (the ref update is a compare-and-swap under
the ref's lock file, over the network as in a local repository), and the record is made again on a fresh
clone, up to `ATTEMPTS` times; a tag that already names the same pointer is an earlier record of the same version
(idempotent); one that names another pointer is an error. A local registry must be bare: pushing to
the checked-out branch of a working copy would leave its files behind the branch.
"""
from __future__ import annotations

import os
import random
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from dulwich.file import FileLocked

from rglcd.storage.pointer import Pointer, PointerError
from rglcd.storage.remote import StorageError
from rglcd.urls import redact_urls

ATTEMPTS = 8
IDENTITY = b"rglcd <rglcd@localhost>"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class GitRegistryError(StorageError):
    """A registry record that could not be written; names the repository (without credentials) and why."""


@dataclass(frozen=True)
class GitRecord:
    repo: str          # storage.git_registry
    commit: str        # the commit holding the .dvc file
    tag: str           # its tag
    path: str          # the .dvc file in the repository ("models/rglcd-student.dvc")

    @property
    def out_path(self) -> str:
        """The tracked path `dvc get`/`dvc import`/`dvc://` name ("models/rglcd-student")."""
        return self.path.removesuffix(".dvc")

    def tags(self, prefix: str) -> dict[str, str]:
        """MLflow tags: `<prefix>.git.{registry,commit,tag,path}`."""
        return {f"{prefix}.git.registry": self.repo, f"{prefix}.git.commit": self.commit,
                f"{prefix}.git.tag": self.tag, f"{prefix}.git.path": self.out_path}


def safe_name(name: str) -> str:
    """A registered name as one tag- and path-safe component ("team/student v2" -> "team-student-v2")."""
    out = _SAFE.sub("-", name).strip("-.")
    if not out:
        raise GitRegistryError(f"name {name[:80]!r} has no letters or digits to name a registry entry")
    return out


def model_entry(model_name: str, version: int) -> tuple[str, str]:
    """(.dvc path, tag) of a model version."""
    name = safe_name(model_name)
    return f"models/{name}.dvc", f"model-{name}@v{int(version)}"


def data_entry(name: str, data_id: str) -> tuple[str, str]:
    """(.dvc path, tag) of a dataset version (`data_id`: the data id, prep's content hash)."""
    ident = safe_name(data_id)[:16]
    return f"data/{safe_name(name)}.dvc", f"data-{safe_name(name)}@{ident}"


def dvc_file(pointer: Pointer, path: str, message: str) -> str:
    """The `.dvc` file: the pointer with `outs[0].path` = the file's own name, and a description."""
    data = pointer.to_dvc()
    data["outs"][0]["path"] = Path(path).name.removesuffix(".dvc")
    return yaml.safe_dump({"desc": message, **data}, sort_keys=False)


def dvc_config(pointer: Pointer) -> str:
    """`.dvc/config` naming the pointer's remote as the default, as `dvc remote add -d` writes it."""
    lines = ["[core]", "    remote = rglcd", "['remote \"rglcd\"']", f"    url = {pointer.remote}"]
    if pointer.endpoint_url:
        lines.append(f"    endpointurl = {pointer.endpoint_url}")
    if pointer.region:
        lines.append(f"    region = {pointer.region}")
    return "\n".join(lines) + "\n"


def _files(pointer: Pointer, path: str, message: str) -> dict[str, str]:
    folder, name = (path.rsplit("/", 1) + [""])[:2] if "/" in path else ("", path)
    return {".dvc/config": dvc_config(pointer), ".dvc/.gitignore": "/config.local\n/tmp\n/cache\n",
            ".dvcignore": "", path: dvc_file(pointer, path, message),
            f"{folder}/.gitignore" if folder else ".gitignore": f"/{name.removesuffix('.dvc')}\n"}


def record(repo: str, branch: str, pointer: Pointer, path: str, tag: str, message: str) -> GitRecord:
    """Commit `pointer` as `path` on `branch` of `repo`, tag the commit `tag`, push both; see the module doc."""
    url = _check_repo(repo)
    where = redact_urls(repo)
    for attempt in range(ATTEMPTS):
        with tempfile.TemporaryDirectory(prefix="rglcd-gitreg-") as tmp:
            try:
                done = _attempt(url, branch, pointer, path, tag, message, Path(tmp))
            except GitRegistryError:
                raise
            except FileLocked:                     # another record holds the ref's lock file right now
                done = None
            except Exception as err:   # dulwich/scmrepo raise many types for unreachable or broken repositories
                raise GitRegistryError(f"git registry {where}: recording {tag} failed ({type(err).__name__}: "
                                       f"{redact_urls(str(err))[:200]})") from None
        if done is not None:
            return GitRecord(repo, done, tag, path)
        # the branch moved (another record won): again on top of it, after a jittered backoff so that records
        # that collided do not retry in lockstep and collide again
        time.sleep(min(0.05 * 2 ** attempt, 1.0) * random.uniform(0.5, 1.5))
    raise GitRegistryError(f"git registry {where}: branch {branch} kept moving; {tag} not recorded after "
                           f"{ATTEMPTS} attempts")


def _check_repo(repo: str) -> str:
    from dulwich.errors import NotGitRepository
    from dulwich.repo import Repo

    if "://" in repo or re.match(r"^[\w.-]+@[\w.-]+:", repo):
        return repo
    path = Path(repo).expanduser()
    try:
        with Repo(str(path)) as local:
            if not local.bare:
                raise GitRegistryError(f"storage.git_registry: {repo!r} is a working copy; allowed: a bare repository "
                                       "(git init --bare) or a Git URL")
    except NotGitRepository:
        raise GitRegistryError(f"storage.git_registry: {repo!r} is not a Git repository; create it with "
                               "`git init --bare`") from None
    return str(path.resolve())


def _attempt(url: str, branch: str, pointer: Pointer, path: str, tag: str, message: str, tmp: Path) -> str | None:
    """One clone-commit-push; the commit's sha, or None when the branch moved before the push."""
    from dulwich import porcelain

    from dulwich.repo import Repo
    from scmrepo.git.backend.dulwich import DulwichBackend

    root = tmp / "clone"
    DulwichBackend.clone(url, str(root))            # scmrepo: dulwich with git's credential helpers and SSH
    with Repo(str(root)) as repo:                   # the default branch is checked out, if there is one
        ref = f"refs/heads/{branch}".encode()
        existing = _tagged_commit(repo, tag)
        if existing is not None:
            return _same_pointer(repo, existing, path, pointer, tag, url)
        start = repo.refs.as_dict().get(f"refs/remotes/origin/{branch}".encode()) or _head(repo)
        repo.refs.set_symbolic_ref(b"HEAD", ref)
        if start is not None:                       # build on the branch (a new branch: on the default one)
            repo.refs[ref] = start
            porcelain.reset(repo, "hard", start)
        files = _files(pointer, path, message)
        for name, text in files.items():
            _write(root, name, text)
        porcelain.add(repo, [str(root / name) for name in files])
        sha = porcelain.commit(repo, message=message.encode(), author=IDENTITY, committer=IDENTITY, no_verify=True)
        porcelain.tag_create(repo, tag.encode(), author=IDENTITY, message=message.encode(), annotated=True,
                             objectish=sha)
        if not _push(repo, url, ref):
            return None
        _push(repo, url, f"refs/tags/{tag}".encode(), what=f"tag {tag}")
        return sha.decode()


def _head(repo: Any) -> bytes | None:
    try:
        return repo.refs[b"HEAD"]
    except KeyError:                                # an empty registry: no commit yet
        return None


def _write(root: Path, name: str, text: str) -> None:
    """Write `root/name`, refusing a path through a symlink the registry's tree checked out (it could lead
    anywhere); a symlink at the file itself is replaced by the file."""
    file = root / name
    for parent in list(file.relative_to(root).parents)[:-1]:
        if (root / parent).is_symlink():
            raise GitRegistryError(f"git registry: {parent} is a symlink in the registry's tree; refused")
    file.parent.mkdir(parents=True, exist_ok=True)
    if file.is_symlink():
        file.unlink()
    file.write_text(text)


def _push(repo: Any, url: str, ref: bytes, what: str | None = None) -> bool:
    """Push `ref` to the same name; False when the remote branch moved (diverged or changed mid-push)."""
    from scmrepo.exceptions import SCMError
    from scmrepo.git.backend.base import SyncStatus
    from scmrepo.git.backend.dulwich import DulwichBackend

    backend = DulwichBackend(repo.path)
    name = ref.decode()
    try:
        status = backend.push_refspecs(url, [f"{name}:{name}"])
    except SCMError as err:
        if what is None:
            return False                         # the compare-and-swap of the branch failed: moved meanwhile
        raise GitRegistryError(f"git registry {redact_urls(url)}: pushing {what} failed ({err}); another record "
                               "created it with other content?") from None
    finally:
        backend.close()
    return status.get(name) != SyncStatus.DIVERGED


def _tagged_commit(repo: Any, tag: str) -> bytes | None:
    ref = f"refs/tags/{tag}".encode()
    if ref not in repo.refs:
        return None
    obj = repo[repo.refs[ref]]
    while obj.type_name == b"tag":
        obj = repo[obj.object[1]]
    return obj.id


def _same_pointer(repo: Any, commit: bytes, path: str, pointer: Pointer, tag: str, url: str) -> str:
    """An existing tag: the sha of its commit when it records `pointer`'s md5 at `path`; an error otherwise."""
    from dulwich.object_store import tree_lookup_path

    try:
        _, blob = tree_lookup_path(repo.__getitem__, repo[commit].tree, path.encode())
        data = yaml.safe_load(repo[blob].data.decode())
        md5 = Pointer.from_dvc(data, f"{tag}:{path}").md5
    except (KeyError, PointerError, yaml.YAMLError, UnicodeDecodeError):
        md5 = None
    if md5 != pointer.md5:
        raise GitRegistryError(f"git registry {redact_urls(url)}: tag {tag} already exists and records "
                               f"{md5 or 'no valid pointer'} at {path}, not {pointer.md5}; not overwritten")
    return commit.decode()


def registry_url(path_or_url: str) -> str:
    """What `dvc get/import/ls` take as the repository: the absolute path of a local one, else the URL."""
    if "://" in path_or_url or re.match(r"^[\w.-]+@[\w.-]+:", path_or_url):
        return path_or_url
    return os.path.abspath(os.path.expanduser(path_or_url))


def record_model(cfg: Any, pointer: Pointer, version: int) -> GitRecord | None:
    """Record model version `version` of `cfg.registry.model_name` (None when `storage.git_registry` is off)."""
    if not cfg.storage.git_registry:
        return None
    path, tag = model_entry(cfg.registry.model_name, version)
    return record(cfg.storage.git_registry, cfg.storage.git_branch, pointer, path, tag,
                  f"{cfg.registry.model_name} version {version}: weights {pointer.md5}")


def record_dataset(cfg: Any, pointer: Pointer, data_id: str) -> GitRecord | None:
    """Record the dataset `data_id` (stored at `pointer`) under the model's name (None when off)."""
    if not cfg.storage.git_registry:
        return None
    path, tag = data_entry(cfg.registry.model_name, data_id)
    return record(cfg.storage.git_registry, cfg.storage.git_branch, pointer, path, tag,
                  f"data {data_id} of {cfg.registry.model_name}: stored as {pointer.md5}")


__all__ = ["GitRegistryError", "GitRecord", "record", "record_model", "record_dataset", "model_entry", "data_entry",
           "safe_name", "dvc_file", "dvc_config", "registry_url"]
