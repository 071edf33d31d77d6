"""`rglcd.fsutil.build_once`: the one build-into-a-cache helper (atomic publish, cleanup, concurrent builders)."""
import errno
import fcntl
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rglcd.fsutil import build_once

REPO = Path(__file__).resolve().parents[1]


def _entries(root: Path) -> set[str]:
    """What the cache root holds besides the lock files (which stay by design)."""
    return {p.name for p in root.iterdir() if not p.name.endswith(".lock")}


def test_builds_once_and_reuses(tmp_path):
    calls = []

    def build(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / "data.txt").write_text("built")

    first = build_once(tmp_path / "cache", "entry-v1", build)
    again = build_once(tmp_path / "cache", "entry-v1", build)
    assert first == again == tmp_path / "cache" / "entry-v1"
    assert (first / "data.txt").read_text() == "built" and len(calls) == 1
    assert calls[0].parent == first.parent and calls[0].name.startswith(".entry-v1.build-")  # built beside it
    assert _entries(tmp_path / "cache") == {"entry-v1"}


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failing_build_leaves_nothing_behind(tmp_path, error):
    def build(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"x" * 10)
        raise error

    with pytest.raises(type(error)):
        build_once(tmp_path, "entry", build)
    assert _entries(tmp_path) == set()
    # and the next call builds it properly
    assert (build_once(tmp_path, "entry", lambda tmp: (tmp / "ok").touch()) / "ok").is_file()


def test_stale_temporaries_of_dead_builders_are_removed(tmp_path):
    stale = tmp_path / ".entry.build-otherhost-4242-deadbeef"        # a killed builder's leftover
    (stale / "sub").mkdir(parents=True)
    other_key = tmp_path / ".other.build-otherhost-4242-deadbeef"   # another key's build is not touched
    other_key.mkdir()
    build_once(tmp_path, "entry", lambda tmp: (tmp / "ok").touch())
    assert _entries(tmp_path) == {"entry", other_key.name}


def test_without_locks_only_dead_local_builders_count_as_stale(tmp_path, monkeypatch):
    """Where the filesystem refuses flock, a temporary folder is stale only if its pid on this host is gone."""
    def no_locks(*args):
        raise OSError(errno.ENOLCK, "no locks")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    names = {"dead": f".entry.build-{host}-{dead}-aaaa", "alive": f".entry.build-{host}-{os.getpid()}-bbbb",
             "remote": f".entry.build-elsewhere-{dead}-cccc"}
    for name in names.values():
        (tmp_path / name).mkdir()
    build_once(tmp_path, "entry", lambda tmp: (tmp / "ok").touch())
    assert _entries(tmp_path) == {"entry", names["alive"], names["remote"]}


def test_losing_the_rename_race_uses_the_winners_entry(tmp_path, monkeypatch):
    """No locks, and another process publishes while this one builds: its entry is kept, ours removed."""
    monkeypatch.setattr(fcntl, "flock", lambda *a: (_ for _ in ()).throw(OSError(errno.EOPNOTSUPP, "no")))

    def build(tmp: Path) -> None:
        (tmp / "who").write_text("loser")
        (tmp_path / "entry").mkdir()
        (tmp_path / "entry" / "who").write_text("winner")

    path = build_once(tmp_path, "entry", build)
    assert (path / "who").read_text() == "winner" and _entries(tmp_path) == {"entry"}


def test_an_incomplete_entry_is_rebuilt(tmp_path):
    (tmp_path / "entry").mkdir()
    (tmp_path / "entry" / "partial").touch()         # e.g. written in place by an older version
    path = build_once(tmp_path, "entry", lambda tmp: (tmp / "done").touch(), ready=lambda p: (p / "done").is_file())
    assert sorted(p.name for p in path.iterdir()) == ["done"] and _entries(tmp_path) == {"entry"}
    with pytest.raises(RuntimeError, match="incomplete after its build"):
        build_once(tmp_path, "other", lambda tmp: None, ready=lambda p: (p / "done").is_file())


@pytest.mark.parametrize("key", ["", ".hidden", "a/b", "..", "."])
def test_keys_are_one_plain_path_component(tmp_path, key):
    with pytest.raises(ValueError, match="cache key"):
        build_once(tmp_path, key, lambda tmp: None)


def test_two_processes_building_the_same_key_produce_one_entry(tmp_path):
    """Two real processes start together; one builds, the other waits on the lock and returns the same entry."""
    script = textwrap.dedent("""
        import json, os, sys, time
        from pathlib import Path
        from rglcd.fsutil import build_once

        root, go = Path(sys.argv[1]), Path(sys.argv[2])
        while not go.exists():
            time.sleep(0.01)

        def build(tmp):
            with open(root.parent / "builds.log", "a") as log:
                log.write(f"{os.getpid()}\\n")
            for i in range(20):                  # slow enough that the other process arrives mid-build
                (tmp / f"part-{i}").write_text(str(os.getpid()))
                time.sleep(0.02)

        path = build_once(root, "shared", build)
        print(json.dumps({"path": str(path), "files": sorted(p.read_text() for p in path.iterdir())}))
    """)
    root, go = tmp_path / "cache", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(root), str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    builders = (tmp_path / "builds.log").read_text().split()
    assert len(builders) == 1                                      # built once
    assert results[0] == results[1]                                # both got the same, complete entry
    assert results[0]["path"] == str(root / "shared") and results[0]["files"] == [builders[0]] * 20
    assert _entries(root) == {"shared"}


def _half_then_fail(*args, **kwargs):
    """A build step that writes part of its output into the folder it was given, then fails."""
    folder = next(Path(a) for a in (*args, *kwargs.values()) if isinstance(a, (str, Path)) and ".build-" in str(a))
    folder = folder if folder.is_dir() else folder.parent
    (folder / "half-written").write_bytes(b"x")
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("user", ["tiny-teacher", "fid-reference", "fid-stats", "tiny-openclip", "tiny-pickscore",
                                  "s3-copy", "toy-world"])
def test_every_cache_user_leaves_nothing_behind_when_its_build_fails(tmp_path, monkeypatch, user):
    """Each place that builds into the cache goes through build_once: its build step failing half-way leaves
    no file and no temporary folder, and the next call builds the entry."""
    import torch

    import rglcd.evaluate.fid as fid
    import rglcd.evaluate.reference as reference
    import rglcd.models.sources as sources
    import rglcd.models.tiny as tiny
    import rglcd.rewards.openclip as openclip
    import rglcd.rewards.pickscore as pickscore
    import rglcd.toy.world as world
    from rglcd.config import load_config
    from rglcd.toy.config import WorldConfig

    cache = tmp_path / "cache"
    images = reference.write_builtin_photos(2, tmp_path / "images")
    pool = lambda x: torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)  # noqa: E731  (a cheap extractor)
    calls = {
        "tiny-teacher": (tiny, "save_tiny_teacher", lambda: sources.resolve_tiny("tiny:epsilon", str(cache))),
        "fid-reference": (reference, "write_builtin_photos",
                          lambda: reference.resolve_reference("builtin:photos:2", cache)),
        "fid-stats": (fid, "_stats_entry", lambda: fid.reference_stats(images, "clean", pool,
                                                                       fid.InceptionSource("t", "none", "0" * 64),
                                                                       cache, torch.device("cpu"), 2)),
        "tiny-openclip": (openclip, "_save_state_dict", lambda: openclip.tiny_checkpoint(openclip.HPS, str(cache))),
        "tiny-pickscore": (pickscore, "write_clip_tokenizer", lambda: pickscore.tiny_pickscore_dir(str(cache))),
        "s3-copy": (sources, "_download_prefix", lambda: sources.resolve_s3("s3://bucket/models/teacher", str(cache))),
        "toy-world": (world, "build_world", lambda: world.load_or_build_world(WorldConfig(), cache, "cpu",
                                                                              load_config("tiny-random"))),
    }
    module, name, call = calls[user]
    monkeypatch.setattr(module, name, _half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        call()
    leftovers = [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert leftovers == [] and not any(".build-" in p.name for p in cache.rglob("*"))
    monkeypatch.undo()
    if user not in ("s3-copy", "toy-world"):     # (S3: test_rewards reads s3:// through moto; toy: test_toy)
        result = call()
        assert (result.count == 2 and not result.cached) if user == "fid-stats" else Path(result).exists()
