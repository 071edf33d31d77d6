"""DVC as users know it: `dvc://REPO@REV/PATH` sources, a Git repository as data and model registry
(checked with the plain `dvc` CLI, no rglcd imported), and one data id (docs/operations.md 2.5-2.7)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

from rglcd.config.fields import to_dict
from rglcd.data.dvcsource import DvcSourceError, dvc_source_version, parse_dvc_url, resolve
from rglcd.data.sources import FolderSource, open_source
from rglcd.storage import Pointer, push
from rglcd.train.checkpoint import INFO
from rglcd.storage.gitreg import GitRegistryError, data_entry, model_entry, record

DVC = str(Path(sys.executable).with_name("dvc"))          # the venv's plain DVC CLI
METRICS = {"hps_4step": 0.25, "fid": 30.0}


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def plain_dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The `dvc` CLI in a fresh process with no rglcd on its path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([DVC, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def write_images(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (48, 40), ((37 * i + seed) % 256, (91 * i) % 256, seed % 256)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"photo {i} seed {seed}")


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def data_registry(tmp_path, monkeypatch):
    """A team's DVC data registry: tag v1 (4 images), then v2 (one changed, two added), pushed to a bare repo."""
    from dvc.repo import Repo

    work, bare, remote = tmp_path / "work", tmp_path / "registry.git", tmp_path / "dvc-remote"
    work.mkdir()
    monkeypatch.chdir(work)                                   # DVC's API adds paths relative to the CWD
    git("init", "-q", "-b", "main", cwd=work)
    with Repo.init(str(work)) as repo:
        with repo.config.edit() as conf:
            conf["core"]["remote"] = "store"
            conf["remote"]["store"] = {"url": str(remote)}
        write_images(work / "images", 4, seed=10)
        v1 = folder_bytes(work / "images")
        repo.add("images")
        git("add", "-A", cwd=work)
        git("commit", "-qm", "v1", cwd=work)
        git("tag", "v1", cwd=work)
        repo.push()
        write_images(work / "images", 6, seed=200)          # changes img0..img3, adds img4, img5
        repo.add("images")
        git("commit", "-qam", "v2", cwd=work)
        repo.push()
    git("clone", "-q", "--bare", str(work), str(bare), cwd=tmp_path)
    monkeypatch.chdir(tmp_path)
    return {"bare": bare, "work": work, "v1": v1, "v2": folder_bytes(work / "images")}


# ---------------------------------------------------------------- parsing at the edge

def test_dvc_urls_parse_into_repo_rev_and_path():
    ref = parse_dvc_url("dvc:///srv/reg.git@data-x@0123abcd/data/x")
    assert (ref.repo, ref.rev, ref.path) == ("/srv/reg.git", "data-x@0123abcd", "data/x")
    ref = parse_dvc_url("dvc://https://git.example.com/org/reg@release%2F2024/images/")
    assert (ref.repo, ref.rev, ref.path) == ("https://git.example.com/org/reg", "release/2024", "images")
    ref = parse_dvc_url("dvc://https://git.example.com/org/reg.git/a/b")
    assert (ref.repo, ref.rev, ref.path, ref.git_url()) == ("https://git.example.com/org/reg.git", None, "a/b",
                                                             "https://git.example.com/org/reg.git")
    assert parse_dvc_url("dvc:///srv/reg@v1/x").git_url() == "file:///srv/reg"


@pytest.mark.parametrize("url, why", [
    ("dvc:///srv/reg/images", "cannot tell where the repository ends"),
    ("dvc:///srv/reg.git@v1", "no PATH"),
    ("dvc:///srv/reg.git@/x", "empty revision"),
    ("dvc:///srv/reg.git@v1/../etc", "without '..'"),
    ("dvc://relative/reg.git/x", "neither an absolute path nor a Git URL"),
    ("dvc://https://user:token@git.example.com/reg@v1/x", "embeds credentials"),
])
def test_bad_dvc_urls_are_refused_naming_the_url(url, why):
    with pytest.raises(DvcSourceError, match=why) as err:
        parse_dvc_url(url)
    assert "token" not in str(err.value) and "dvc://REPO[@REV]/PATH" in str(err.value)


def test_a_dvc_url_with_credentials_fails_at_config_load(tiny_cfg):
    from rglcd.config import ConfigError

    with pytest.raises(ConfigError, match="data.train"):
        tiny_cfg("data.train=dvc://https://u:secret@git.example.com/reg@v1/images")


@pytest.mark.parametrize("branch", ["../main", "a..b", "", "with space"])
def test_a_bad_registry_branch_fails_at_config_load(tiny_cfg, branch):
    from rglcd.config import ConfigError

    with pytest.raises(ConfigError, match="storage.git_branch"):
        tiny_cfg(f"storage.git_branch={branch}")


# ---------------------------------------------------------------- reading a revision

def test_the_source_at_a_tag_reads_exactly_that_revisions_files(data_registry, tmp_path):
    url = f"dvc://{data_registry['bare']}@v1/images"
    source = open_source(url, cache_dir=str(tmp_path / "cache"))
    assert isinstance(source, FolderSource) and source.unit_counts() == [4]
    records = list(source.read_unit(0))
    assert {Path(r.image).name: Path(r.image).read_bytes() for r in records} == \
        {k: v for k, v in data_registry["v1"].items() if k.endswith(".png")}
    assert [r.caption for r in records] == [f"photo {i} seed 10" for i in range(4)]
    head = open_source(f"dvc://{data_registry['bare']}@main/images", cache_dir=str(tmp_path / "cache"))
    assert head.unit_counts() == [6]                          # the default branch has v2
    assert (Path(list(head.read_unit(0))[0].image).read_bytes() == data_registry["v2"]["img0.png"]
            != data_registry["v1"]["img0.png"])


def test_the_version_is_the_paths_dvc_md5_known_without_downloading(data_registry, tmp_path):
    bare, work = data_registry["bare"], data_registry["work"]
    v1 = resolve(f"dvc://{bare}@v1/images", str(tmp_path / "c"))
    v2 = resolve(f"dvc://{bare}@main/images", str(tmp_path / "c"))
    dvc_file = {"v1": git("show", "v1:images.dvc", cwd=work), "v2": git("show", "main:images.dvc", cwd=work)}
    assert v1.version == f"dvc:{v1.content_id}" and v1.content_id in dvc_file["v1"]
    assert v2.content_id in dvc_file["v2"] and v1.version != v2.version
    assert (v1.commit, v2.commit) == (git("rev-parse", "v1^{commit}", cwd=work), git("rev-parse", "main", cwd=work))
    assert not (tmp_path / "c" / "files").exists() or not any(   # only .dir listings came into the cache
        not p.name.endswith(".dir") for p in (tmp_path / "c").rglob("*") if p.is_file())
    # a commit that does not touch the path keeps the version; the path's own git-tracked files have one too
    (work / "README.md").write_text("about the registry")
    git("add", "README.md", cwd=work)
    git("commit", "-qm", "docs", cwd=work)
    git("push", "-q", str(bare), "main", cwd=work)
    assert dvc_source_version(f"dvc://{bare}@main/images") == v2.version
    assert dvc_source_version(f"dvc://{bare}@main/README.md").startswith("dvc:tree-")


@pytest.mark.parametrize("tail, what", [("@v9/images", "cannot read revision 'v9'"),
                                        ("@v1/pictures", "pictures is not in the repository at v1")])
def test_a_missing_revision_or_path_names_the_url(data_registry, tail, what):
    url = f"dvc://{data_registry['bare']}{tail}"
    with pytest.raises(DvcSourceError, match=what) as err:
        resolve(url)
    assert url in str(err.value)


def test_a_missing_repository_names_the_url(tmp_path):
    with pytest.raises(DvcSourceError, match="does not exist"):
        resolve(f"dvc://{tmp_path}/none.git/images")


def test_a_corrupt_remote_object_is_refused_after_download(data_registry, tmp_path):
    remote = tmp_path / "dvc-remote"
    for obj in (remote / "files" / "md5").rglob("*"):
        if obj.is_file() and not obj.name.endswith(".dir"):
            obj.chmod(0o644)
            obj.write_bytes(obj.read_bytes() + b"tampered")
    with pytest.raises(DvcSourceError, match="hashes to|corrupt"):
        open_source(f"dvc://{data_registry['bare']}@v1/images", cache_dir=str(tmp_path / "cache"))
    assert not list((tmp_path / "cache" / "dvc-sources").glob("[!.]*"))     # nothing half-made left as an entry


def test_the_repositorys_cache_settings_are_not_followed(data_registry, tmp_path):
    work, evil = data_registry["work"], tmp_path / "evil"
    with (work / ".dvc" / "config").open("a") as conf:
        conf.write(f"[cache]\n    dir = {evil / 'cache'}\n    type = symlink\n")
    git("commit", "-qam", "a cache elsewhere", cwd=work)
    git("push", "-q", str(data_registry["bare"]), "main", cwd=work)
    source = open_source(f"dvc://{data_registry['bare']}@main/images", cache_dir=str(tmp_path / "cache"))
    assert source.unit_counts() == [6] and not evil.exists()
    assert not any(Path(f).is_symlink() for f in source.files)
    assert (tmp_path / "cache" / "dvc-site").is_dir()                    # DVC's index is in our folder too


def test_prep_of_a_tagged_revision_equals_prep_of_that_revisions_files(data_registry, tiny_cfg, tmp_path):
    from rglcd.data.prep import prep

    cfg = tiny_cfg()
    local = tmp_path / "v1-copy"
    local.mkdir()
    for name, data in data_registry["v1"].items():
        (local / name).write_bytes(data)
    from_dvc = prep(cfg, f"dvc://{data_registry['bare']}@v1/images", tmp_path / "prep-dvc")
    from_copy = prep(cfg, str(local), tmp_path / "prep-copy")
    assert from_dvc["num_records"] == 4 and from_dvc["content_hash"] == from_copy["content_hash"]


def test_training_on_a_dvc_source_at_a_tag(data_registry, tiny_cfg, tmp_path):
    from rglcd.train import train

    cfg = tiny_cfg("reward.name=none", "reward.guidance=direct", "train.batch_size=2", "train.max_steps=2",
                   "train.checkpoint_every=2", "train.validation_every=1000", "data.shuffle_buffer=4")
    url = f"dvc://{data_registry['bare']}@v1/images"
    result = train(cfg, url)
    assert result.steps == 2 and result.model_dir is not None
    recorded = json.loads((result.checkpoint / INFO).read_text())["data"]
    assert (recorded["spec"], recorded["num_records"]) == (url, 4)
    entry = Path(cfg.storage.cache_dir) / "dvc-sources" / resolve(url).content_id / "images"
    assert folder_bytes(entry) == data_registry["v1"]                        # what it trained on: v1's files


# ---------------------------------------------------------------- the Git registry

def bare_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git("init", "-q", "--bare", "-b", "main", cwd=path)
    return path


def test_a_registered_version_is_fetched_with_plain_dvc_get(tiny_cfg, mlflow_db, tiny_teacher_dir, tmp_path):
    from rglcd.registry import list_versions, register

    reg = bare_repo(tmp_path / "registry.git")
    cfg = tiny_cfg(f"storage.git_registry={reg}")
    model = tmp_path / "student"
    shutil.copytree(tiny_teacher_dir("epsilon"), model)
    data = tmp_path / "dataset"
    write_images(data, 2, seed=5)
    pointer, data_pointer = push(cfg, model).pointer, push(cfg, data).pointer
    info = register(cfg, pointer, METRICS, to_dict(cfg), "c0ffee" * 8, data_pointer=data_pointer)
    path, tag = model_entry("rglcd-student", info.version)
    assert (info.git_tag, info.git_commit) == (tag, git("rev-parse", f"{tag}^{{commit}}", cwd=reg))
    got = plain_dvc("get", str(reg), "models/rglcd-student", "--rev", tag, "-o", str(tmp_path / "got"), cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert folder_bytes_tree(tmp_path / "got") == folder_bytes_tree(model)
    data_path, data_tag = data_entry("rglcd-student", "c0ffee" * 8)
    listed = plain_dvc("ls", str(reg), "data", "--rev", data_tag, cwd=tmp_path)
    assert listed.returncode == 0 and "rglcd-student" in listed.stdout.split()
    got = plain_dvc("get", str(reg), "data/rglcd-student", "--rev", data_tag, "-o", str(tmp_path / "d"), cwd=tmp_path)
    assert got.returncode == 0 and folder_bytes(tmp_path / "d") == folder_bytes(data)
    tags = list_versions(cfg)[0]
    assert tags.git_tag == tag
    from mlflow import MlflowClient
    mv = MlflowClient(cfg.registry.tracking_uri, cfg.registry.tracking_uri).get_model_version("rglcd-student", "1")
    assert mv.tags["data.git.tag"] == data_tag and mv.tags["data_version"] == "c0ffee" * 8
    assert mv.tags["data.dvc.md5"] == data_pointer.md5 and mv.tags["model.git.path"] == path.removesuffix(".dvc")
    again = register(cfg, pointer, METRICS, to_dict(cfg), "c0ffee" * 8, data_pointer=data_pointer)
    assert (again.version, again.created, again.git_commit) == (1, False, info.git_commit)
    assert git("tag", cwd=reg).split() == sorted([tag, data_tag])


def folder_bytes_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def pushed(tiny_cfg, tmp_path):
    """Three small pushed folders and a config with a local remote."""
    cfg = tiny_cfg()
    pointers = []
    for i in range(3):
        write_images(tmp_path / f"art{i}", 1, seed=i)
        pointers.append(push(cfg, tmp_path / f"art{i}").pointer)
    return cfg, pointers


def test_concurrent_records_all_land_on_the_branch(pushed, tmp_path):
    cfg, pointers = pushed
    reg = bare_repo(tmp_path / "registry.git")
    results, errors = {}, []

    def one(i: int) -> None:
        try:
            path, tag = model_entry("m", i + 1)
            results[i] = record(str(reg), "main", pointers[i], path, tag, f"m v{i + 1}")
        except Exception as err:  # collected: an exception in a thread would otherwise be lost
            errors.append(err)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    log = git("log", "--format=%H", "main", cwd=reg).split()
    assert len(log) == 3 and {r.commit for r in results.values()} == set(log)      # none lost, none overwritten
    for i, rec in results.items():
        text = git("show", f"{rec.tag}:models/m.dvc", cwd=reg)
        assert pointers[i].md5 in text and git("rev-parse", f"{rec.tag}^{{commit}}", cwd=reg) == rec.commit
        got = plain_dvc("get", str(reg), "models/m", "--rev", rec.tag, "-o", str(tmp_path / f"got{i}"), cwd=tmp_path)
        assert got.returncode == 0 and folder_bytes(tmp_path / f"got{i}") == folder_bytes(tmp_path / f"art{i}")


def test_a_tag_naming_other_content_is_not_overwritten(pushed, tmp_path):
    _, pointers = pushed
    reg = bare_repo(tmp_path / "registry.git")
    path, tag = model_entry("m", 1)
    first = record(str(reg), "main", pointers[0], path, tag, "v1")
    assert record(str(reg), "main", pointers[0], path, tag, "v1 again") == first          # idempotent
    with pytest.raises(GitRegistryError, match=f"tag {tag} already exists and records {pointers[0].md5}"):
        record(str(reg), "main", pointers[1], path, tag, "v1 other")
    assert git("log", "--format=%H", "main", cwd=reg).split() == [first.commit]


def test_a_working_copy_or_a_non_repository_is_refused(pushed, tmp_path):
    _, pointers = pushed
    work = tmp_path / "work"
    work.mkdir()
    git("init", "-q", cwd=work)
    with pytest.raises(GitRegistryError, match="working copy"):
        record(str(work), "main", pointers[0], *model_entry("m", 1), "v1")
    with pytest.raises(GitRegistryError, match="not a Git repository"):
        record(str(tmp_path), "main", pointers[0], *model_entry("m", 1), "v1")


def test_a_symlinked_folder_in_the_registry_is_not_followed(pushed, tmp_path):
    _, pointers = pushed
    reg, work, outside = bare_repo(tmp_path / "registry.git"), tmp_path / "evil", tmp_path / "outside"
    outside.mkdir()
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    (work / "models").symlink_to(outside)
    git("add", "-A", cwd=work)
    git("commit", "-qm", "symlink", cwd=work)
    git("push", "-q", str(reg), "main", cwd=work)
    with pytest.raises(GitRegistryError, match="symlink"):
        record(str(reg), "main", pointers[0], *model_entry("m", 1), "v1")
    assert list(outside.iterdir()) == []


def test_no_hook_of_the_registry_runs(pushed, tmp_path):
    _, pointers = pushed
    reg = bare_repo(tmp_path / "registry.git")
    marker = tmp_path / "hook-ran"
    for hook in ("pre-receive", "update", "post-receive", "reference-transaction", "post-update"):
        script = reg / "hooks" / hook
        script.write_text(f"#!/bin/sh\ntouch {marker}\n")
        script.chmod(0o755)
    record(str(reg), "main", pointers[0], *model_entry("m", 1), "v1")
    assert not marker.exists()


# ---------------------------------------------------------------- one data id

def test_a_dataset_pointer_registers_under_its_content_hash(tiny_cfg, mlflow_db, tiny_teacher_dir, tmp_path):
    from rglcd.data.manifest import read_manifest
    from rglcd.data.prep import prep
    from rglcd.registry import register

    cfg = tiny_cfg()
    write_images(tmp_path / "raw", 3, seed=7)
    manifest = prep(cfg, str(tmp_path / "raw"), tmp_path / "dataset")
    data_pointer = push(cfg, tmp_path / "dataset").pointer
    model = tmp_path / "student"
    shutil.copytree(tiny_teacher_dir("epsilon"), model)
    info = register(cfg, push(cfg, model).pointer, METRICS, to_dict(cfg), data_pointer)
    assert info.data_version == manifest["content_hash"] == read_manifest(str(tmp_path / "dataset"))["content_hash"]
    assert info.data_version != data_pointer.md5
    from mlflow import MlflowClient
    tags = MlflowClient(cfg.registry.tracking_uri, cfg.registry.tracking_uri).get_model_version("rglcd-student", "1").tags
    assert Pointer.from_dvc(json.loads(tags["data.dvc.pointer"])) == data_pointer
