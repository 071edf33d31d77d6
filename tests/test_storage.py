"""rglcd.storage against a real S3 endpoint (moto server on loopback) and a local directory remote."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rglcd.cli import main
from rglcd.storage import (Pointer, PointerError, StorageError, make_remote, pull, push, read_pointer, verify,
                           write_pointer)


def tree_digest(root: Path) -> dict[str, str]:
    """relative path -> sha256 of the bytes, for every file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def remote_keys(remote) -> list[str]:
    listing = remote.server.client().list_objects_v2(Bucket=remote.bucket, Prefix="rglcd/")
    return sorted(o["Key"] for o in listing.get("Contents", []))


@pytest.fixture
def model_dir(tiny_teacher_dir, tmp_path) -> Path:
    """A real diffusers model directory (the tiny teacher) plus an empty file and a duplicate file."""
    path = tmp_path / "student"
    shutil.copytree(tiny_teacher_dir("epsilon"), path)
    (path / "notes").mkdir()
    (path / "notes" / "empty.txt").write_bytes(b"")
    shutil.copy(path / "model_index.json", path / "notes" / "model_index_copy.json")
    return path


def test_pointer_round_trips_and_is_dvc_shaped(tmp_path):
    pointer = Pointer(md5="0123456789abcdef0123456789abcdef.dir", size=10, nfiles=2, path="student",
                      remote="s3://bucket/prefix", endpoint_url="http://minio:9000", region="us-east-1")
    assert pointer.url == "s3://bucket/prefix/files/md5/01/23456789abcdef0123456789abcdef.dir"
    for name in ("p.json", "student.dvc"):
        assert read_pointer(write_pointer(pointer, tmp_path / name)) == pointer
    assert json.loads((tmp_path / "p.json").read_text())["outs"] == [
        {"md5": pointer.md5, "size": 10, "nfiles": 2, "hash": "md5", "path": "student"}]
    metadata = json.loads(json.dumps({"dvc": pointer.to_dvc()}))      # as the components' artifacts carry it
    assert Pointer.from_dvc(metadata["dvc"]) == pointer


@pytest.mark.parametrize("data, field", [
    ({"outs": [{"md5": "abc", "size": 1, "nfiles": 1}], "meta": {"rglcd": {"remote": "r"}}}, "outs[0].md5"),
    ({"outs": [{"md5": "0" * 32 + ".dir", "size": -1, "nfiles": 1}], "meta": {"rglcd": {"remote": "r"}}}, "outs[0].size"),
    ({"outs": [{"md5": "0" * 32 + ".dir", "size": 1, "nfiles": 1}], "meta": {"rglcd": {}}}, "meta.rglcd.remote"),
    ({"outs": []}, "exactly one entry"),
])
def test_bad_pointer_names_the_field(data, field):
    with pytest.raises(PointerError, match=field.replace("[", r"\[").replace("]", r"\]")):
        Pointer.from_dvc(data)


def test_bad_remotes_are_refused_at_the_edge(tmp_path):
    with pytest.raises(StorageError, match="scheme 'gs'"):
        make_remote("gs://bucket/x")
    with pytest.raises(StorageError, match="bucket 'ab'"):
        make_remote("s3://ab/x")
    with pytest.raises(StorageError, match="must not embed credentials") as err:
        make_remote("s3://bucket/x", endpoint_url="http://me:hunter2@minio:9000")
    assert "hunter2" not in str(err.value)
    with pytest.raises(StorageError, match=r"'s3://\*\*\*@bucket/x' embeds credentials") as err:
        make_remote("s3://AKIAXYZ:hunter2@bucket/x", field="pointer meta.rglcd.remote")   # e.g. from a pointer file
    assert "hunter2" not in str(err.value) and "AKIAXYZ" not in str(err.value)
    with pytest.raises(StorageError, match="only applies to s3://"):
        make_remote(str(tmp_path), endpoint_url="http://minio:9000")
    assert make_remote(str(tmp_path / "a" / ".." / "b")).url == str(tmp_path / "b")


def test_push_pull_round_trip_and_dedupe_on_s3(s3_remote, tiny_cfg, model_dir, tmp_path):
    cfg = tiny_cfg(*s3_remote.overrides)
    first = push(cfg, model_dir)
    files = tree_digest(model_dir)
    unique = len(set(files.values()))
    assert (first.pointer.nfiles, first.pointer.size) == (len(files), sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file()))
    assert first.objects_uploaded == unique and first.objects_present == 0
    keys = remote_keys(s3_remote)
    assert len(keys) == unique + 1 and all(k.startswith("rglcd/files/md5/") for k in keys)
    assert first.pointer.url.endswith(keys[[k.endswith(".dir") for k in keys].index(True)].removeprefix("rglcd/"))

    again = push(cfg, model_dir)                      # same content: nothing new goes up
    assert again.pointer == first.pointer
    assert (again.objects_uploaded, again.bytes_uploaded, again.objects_present) == (0, 0, unique)
    assert remote_keys(s3_remote) == keys

    dest = tmp_path / "pulled"
    result = pull(first.pointer, dest, cache_dir=tmp_path / "cache")
    assert tree_digest(dest) == files and result.objects_fetched == unique + 1
    (dest / "model_index.json").write_text("{}")      # pulled files are ordinary writable copies
    assert tree_digest(model_dir) == files


def test_one_changed_file_uploads_one_object(s3_remote, tiny_cfg, model_dir):
    cfg = tiny_cfg(*s3_remote.overrides)
    before = push(cfg, model_dir)
    (model_dir / "scheduler" / "scheduler_config.json").write_text('{"changed": true}')
    after = push(cfg, model_dir)
    assert after.pointer.md5 != before.pointer.md5
    assert after.objects_uploaded == 1 and after.bytes_uploaded == len('{"changed": true}')


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """The files whose contents DVC hashes (dvc_data's file_md5, the only place file bytes are hashed;
    the `.dir` listing it digests in memory is left out)."""
    import dvc_data.hashfile.hash as dvc_hash

    paths: list[str] = []
    real = dvc_hash.file_md5

    def counting(path, *args, **kwargs):
        if not str(path).startswith("memory://"):
            paths.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(dvc_hash, "file_md5", counting)
    return paths


@pytest.mark.parametrize("where", ["local", "s3"])
def test_re_push_hashes_only_what_changed(where, request, tiny_cfg, model_dir, hashed):
    cfg = tiny_cfg(*request.getfixturevalue("s3_remote").overrides) if where == "s3" else tiny_cfg()
    files = sorted(p for p in model_dir.rglob("*") if p.is_file())
    first = push(cfg, model_dir)
    assert sorted(hashed) == sorted(str(p) for p in files)        # every file hashed once
    assert (Path(cfg.storage.cache_dir) / "state").is_dir()       # DVC's state database, kept
    hashed.clear()
    again = push(cfg, model_dir)
    assert hashed == [] and again.pointer == first.pointer        # unchanged: no file contents read
    changed = model_dir / "scheduler" / "scheduler_config.json"
    changed.write_text('{"changed": true}')
    after = push(cfg, model_dir)
    assert hashed == [str(changed)] and after.objects_uploaded == 1
    assert after.pointer.md5 != first.pointer.md5
    hashed.clear()
    pull(after.pointer, model_dir.parent / "pulled", cache_dir=model_dir.parent / "pull-cache")
    assert tree_digest(model_dir.parent / "pulled") == tree_digest(model_dir)


def test_an_unreadable_hash_cache_is_moved_aside_and_rebuilt(tiny_cfg, model_dir, hashed, caplog):
    cfg = tiny_cfg()
    first = push(cfg, model_dir).pointer
    state = Path(cfg.storage.cache_dir) / "state"
    for db in [p for p in state.rglob("*") if p.is_file()]:
        db.write_bytes(b"not a database" * 100)
    hashed.clear()
    assert push(cfg, model_dir).pointer == first                  # every file hashed again, same tree
    assert len(hashed) == len([p for p in model_dir.rglob("*") if p.is_file()])
    assert [p.name.split("-")[0] for p in state.parent.glob("state.*")] == ["state.unreadable"]
    assert "unreadable" in caplog.text
    hashed.clear()
    push(cfg, model_dir)
    assert hashed == []                                           # the new cache works


def test_a_stale_hash_cache_entry_is_not_trusted(tiny_cfg, model_dir, hashed):
    """The cache is keyed on inode + mtime + size: a same-size rewrite with a new mtime is hashed again."""
    cfg = tiny_cfg()
    target = model_dir / "scheduler" / "scheduler_config.json"
    push(cfg, model_dir)
    old = target.read_bytes()
    hashed.clear()
    target.write_bytes(bytes(reversed(old)))                       # same size, other bytes
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    pointer = push(cfg, model_dir).pointer
    assert hashed == [str(target)]
    assert pointer.md5 == push(tiny_cfg("storage.cache_dir=" + str(model_dir.parent / "other-cache")),
                               model_dir).pointer.md5              # the same tree as hashing from scratch


def test_pull_on_a_fresh_machine_from_the_pointer_alone(s3_remote, tiny_cfg, model_dir, tmp_path, monkeypatch):
    write_pointer(push(tiny_cfg(*s3_remote.overrides), model_dir).pointer, tmp_path / "student.json")
    fresh = tmp_path / "fresh-machine"
    fresh.mkdir()
    monkeypatch.chdir(fresh)                          # no config, no cache, only the pointer file
    result = pull(tmp_path / "student.json", "student")
    assert tree_digest(fresh / "student") == tree_digest(model_dir)
    assert sorted(p.name for p in fresh.iterdir()) == ["student"]   # the temporary cache is gone
    assert result.path == fresh / "student"


def test_local_directory_remote_is_the_embedded_default(tiny_cfg, model_dir, tmp_path):
    cfg = tiny_cfg()
    pushed = push(cfg, model_dir)
    assert pushed.pointer.remote == str(tmp_path / "remote")
    objects = [p for p in (tmp_path / "remote" / "files" / "md5").rglob("*") if p.is_file()]
    assert len(objects) == len(set(tree_digest(model_dir).values())) + 1
    pull(pushed.pointer, tmp_path / "out", cache_dir=cfg.storage.cache_dir)
    assert tree_digest(tmp_path / "out") == tree_digest(model_dir)
    second = pull(pushed.pointer, tmp_path / "out2", cache_dir=cfg.storage.cache_dir)
    assert second.objects_fetched == 0                # all in the local cache already


def test_verify_finds_a_deleted_object_and_push_repairs_it(s3_remote, tiny_cfg, model_dir):
    cfg = tiny_cfg(*s3_remote.overrides)
    pointer = push(cfg, model_dir).pointer
    victim = next(k for k in remote_keys(s3_remote) if not k.endswith(".dir"))
    s3_remote.server.client().delete_object(Bucket=s3_remote.bucket, Key=victim)
    with pytest.raises(StorageError, match=r"1 of \d+ objects .* missing from remote s3://"):
        verify(pointer)
    repaired = push(cfg, model_dir)                   # the .dir exists, yet the missing file is found and sent
    assert repaired.objects_uploaded == 1
    assert verify(pointer) == len(set(tree_digest(model_dir).values())) + 1


def test_missing_bucket_names_bucket_and_remote(s3_remote, tiny_cfg, model_dir, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    url = "s3://rglcd-no-such-bucket/x"
    cfg = tiny_cfg(*s3_remote.overrides, f"storage.remote={url}")
    with pytest.raises(StorageError, match="bucket 'rglcd-no-such-bucket' does not exist at remote s3://rglcd-no-such-bucket/x"):
        push(cfg, model_dir)


def test_push_and_pull_refuse_bad_paths(tiny_cfg, model_dir, tmp_path):
    cfg = tiny_cfg()
    with pytest.raises(StorageError, match="is not a directory"):
        push(cfg, model_dir / "model_index.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StorageError, match="holds no files"):
        push(cfg, tmp_path / "empty")
    pointer = push(cfg, model_dir).pointer
    with pytest.raises(StorageError, match="not an empty directory"):
        pull(pointer, model_dir)
    with pytest.raises(StorageError, match=r"object f{32}\.dir \(student\) in remote .* is missing"):
        pull(Pointer(**{**pointer.__dict__, "md5": "f" * 32 + ".dir"}), tmp_path / "x")


def test_pointer_pulls_with_plain_dvc_in_a_git_repo(s3_remote, tiny_cfg, model_dir, tmp_path):
    """Committing the pointer as NAME.dvc to a DVC-tracked git repo with the same remote: `dvc pull` works."""
    pointer = push(tiny_cfg(*s3_remote.overrides), model_dir).pointer
    repo = tmp_path / "repo"
    repo.mkdir()
    dvc = [sys.executable, "-m", "dvc"]
    for cmd in (["git", "init", "-q"], dvc + ["init", "-q"]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    with open(repo / ".dvc" / "config", "a") as config:     # what `dvc remote add -d` + `modify` write
        config.write(f"[core]\n    remote = store\n['remote \"store\"']\n    url = {pointer.remote}\n"
                     f"    endpointurl = {pointer.endpoint_url}\n    region = {pointer.region}\n")
    write_pointer(pointer, repo / "student.dvc")
    out = subprocess.run(dvc + ["pull", "-q"], cwd=repo, capture_output=True, text=True,
                         env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert out.returncode == 0, out.stderr
    assert tree_digest(repo / "student") == tree_digest(model_dir)


def test_cli_push_then_pull(s3_remote, tiny_cfg, model_dir, tmp_path, capsys):
    sets = sum((["--set", o] for o in s3_remote.overrides), [])
    assert main(["push", str(model_dir), "--out", str(tmp_path / "p.json"), *sets]) == 0
    assert "verified" in capsys.readouterr().out
    assert main(["pull", str(tmp_path / "p.json"), str(tmp_path / "dest")]) == 0
    assert tree_digest(tmp_path / "dest") == tree_digest(model_dir)
    assert "pulled" in capsys.readouterr().out
    assert main(["push", str(model_dir), *sets]) == 0      # no --out: the pointer on stdout
    captured = capsys.readouterr()
    assert Pointer.from_dvc(json.loads(captured.out)) == read_pointer(tmp_path / "p.json")
    assert "uploaded 0 objects" in captured.err
    assert main(["pull", str(tmp_path / "p.json"), str(tmp_path / "dest")]) == 1
    assert "not an empty directory" in capsys.readouterr().err
    other_way = s3_remote.server.endpoint_url.replace("127.0.0.1", "localhost")   # same server, another address
    assert main(["pull", str(tmp_path / "p.json"), str(tmp_path / "dest2"), "--endpoint-url", other_way]) == 0
    assert tree_digest(tmp_path / "dest2") == tree_digest(model_dir)


@pytest.mark.slow
def test_large_file_goes_up_multipart(s3_remote, tiny_cfg, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    with open(big / "weights.bin", "wb") as f:        # s3fs switches to multipart at 2 x 50 MiB parts
        for i in range(101):
            f.write(hashlib.sha512(str(i).encode()).digest() * (2**20 // 64))
    pointer = push(tiny_cfg(*s3_remote.overrides), big).pointer
    key = next(k for k in remote_keys(s3_remote) if not k.endswith(".dir"))
    etag = s3_remote.server.client().head_object(Bucket=s3_remote.bucket, Key=key)["ETag"]
    assert etag.strip('"').endswith("-3")             # 3 parts: 50 + 50 + 1 MiB
    pull(pointer, tmp_path / "back")
    assert tree_digest(tmp_path / "back") == tree_digest(big)


# ---------------------------------------------------------------- hostile and broken remotes

def _crafted_remote(root: Path, entries: list[tuple[str, bytes]]) -> Pointer:
    """A local remote holding file objects and a `.dir` listing them under the given (hostile) paths."""
    listing = []
    for relpath, data in entries:
        md5 = hashlib.md5(data).hexdigest()
        obj = root / "files" / "md5" / md5[:2] / md5[2:]
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(data)
        listing.append({"md5": md5, "relpath": relpath})
    raw = json.dumps(listing, sort_keys=True).encode()
    md5 = hashlib.md5(raw).hexdigest()
    obj = root / "files" / "md5" / md5[:2] / (md5[2:] + ".dir")
    obj.parent.mkdir(parents=True, exist_ok=True)
    obj.write_bytes(raw)
    return Pointer(md5=md5 + ".dir", size=sum(len(d) for _, d in entries), nfiles=len(entries), path="art",
                   remote=str(root))


@pytest.mark.parametrize("relpath", ["../marker", "/ABS/marker", "ok/../../marker", "a//marker", "./marker",
                                     "a\\..\\..\\marker", "", "ok/\x00marker"])
def test_pull_refuses_listing_paths_outside_the_destination(tmp_path, relpath):
    relpath = relpath.replace("/ABS", str(tmp_path))
    pointer = _crafted_remote(tmp_path / "remote", [("good.txt", b"fine"), (relpath, b"escaped")])
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(StorageError, match=r"object [0-9a-f]{32}\.dir \(art\) in remote .*remote lists the path "
                                           r".*outside the destination.*nothing was written"):
        pull(pointer, work / "dest")
    assert not (tmp_path / "marker").exists() and not (work / "marker").exists()
    assert list(work.iterdir()) == []                                   # no DEST, no staging or cache left


def test_pull_refuses_colliding_entries_and_bad_md5s(tmp_path):
    pointer = _crafted_remote(tmp_path / "r1", [("a", b"file"), ("a/b", b"inside a file")])
    with pytest.raises(StorageError, match=r"entry 'a/b' collides with another entry"):
        pull(pointer, tmp_path / "d1")
    raw = json.dumps([{"md5": "../../../../marker", "relpath": "x"}]).encode()
    md5 = hashlib.md5(raw).hexdigest()
    (tmp_path / "r2" / "files" / "md5" / md5[:2]).mkdir(parents=True)
    (tmp_path / "r2" / "files" / "md5" / md5[:2] / (md5[2:] + ".dir")).write_bytes(raw)
    bad = Pointer(md5=md5 + ".dir", size=0, nfiles=1, path="art", remote=str(tmp_path / "r2"))
    with pytest.raises(StorageError, match=r"entry 'x' has md5 '../../../../marker'; allowed: 32 hex digits"):
        pull(bad, tmp_path / "d2")
    assert not (tmp_path / "d1").exists() and not (tmp_path / "d2").exists()


def test_pull_refuses_a_cache_object_that_is_a_symlink(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"outside data")
    pointer = _crafted_remote(tmp_path / "remote", [("copy.txt", b"outside data")])
    md5 = hashlib.md5(b"outside data").hexdigest()
    cached = tmp_path / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    cached.parent.mkdir(parents=True)
    cached.symlink_to(secret)                                   # a shared cache someone tampered with
    with pytest.raises(StorageError, match=rf"object {md5} \(copy.txt\) is missing or corrupt"):
        pull(pointer, tmp_path / "dest", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "dest").exists()


def test_missing_or_corrupt_objects_are_named_with_the_remote(tmp_path):
    pointer = _crafted_remote(tmp_path / "remote", [("a.txt", b"alpha"), ("sub/b.txt", b"beta")])
    obj = tmp_path / "remote" / "files" / "md5" / hashlib.md5(b"beta").hexdigest()[:2] / hashlib.md5(b"beta").hexdigest()[2:]
    obj.write_bytes(b"BETA, tampered")
    pattern = (rf"pull of {pointer.md5} \(art\) in remote {tmp_path / 'remote'} failed: object "
               rf"{hashlib.md5(b'beta').hexdigest()} \(sub/b.txt\) is missing or corrupt in the remote")
    with pytest.raises(StorageError, match=pattern):
        pull(pointer, tmp_path / "d1")
    obj.unlink(missing_ok=True)
    with pytest.raises(StorageError, match=pattern):
        pull(pointer, tmp_path / "d2")
    listing = tmp_path / "remote" / "files" / "md5" / pointer.md5[:2] / pointer.md5[2:]
    listing.write_bytes(listing.read_bytes().replace(b"a.txt", b"A.txt"))
    with pytest.raises(StorageError, match=rf"object {pointer.md5} \(art\) in remote .* is corrupt \(its md5 differs\)"):
        pull(pointer, tmp_path / "d3")
    assert not any((tmp_path / d).exists() for d in ("d1", "d2", "d3"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]        # no staging left behind
