"""Parallel prep: partitions of a source, their merge, and `prep --workers N`: the same output as one process."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rglcd.config import load_config
from rglcd.data import merge as merge_mod
from rglcd.data import tally as tally_mod
from rglcd.data.manifest import MANIFEST
from rglcd.data.partition import partition_bounds, read_partition
from rglcd.data.prep import prep, prep_merge, prep_partition
from rglcd.data.sources import Record


def _cfg(model_cache, *overrides):
    return load_config("tiny-random", overrides=[f"model.cache_dir={model_cache}", "data.shard_size=3", *overrides])


def _png(seed: int, size: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _messy_folder(folder: Path) -> None:
    """16 files in sorted order: good images, duplicates of earlier ones far apart (other partitions),
    duplicates inside a partition, a corrupt file, a tiny image and an empty caption."""
    folder.mkdir()
    plan = {0: 0, 1: 1, 2: 2, 3: 0, 4: 3, 5: "corrupt", 6: 4, 7: 5, 8: 1, 9: "tiny", 10: 6, 11: 6,
            12: 7, 13: "empty", 14: 8, 15: 2}
    for i, what in plan.items():
        name = folder / f"im{i:02d}"
        data = {"corrupt": b"not an image", "tiny": _png(99, 8), "empty": _png(98)}.get(what) or _png(what)
        (name.with_suffix(".png")).write_bytes(data)
        (name.with_suffix(".txt")).write_text("" if what == "empty" else f"picture {i}")


def _output(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _partitioned(cfg, source: str, tmp_path: Path, parts: int) -> Path:
    folders = [tmp_path / f"p{parts}-{i}" for i in range(parts)]
    for i, folder in enumerate(folders):
        prep_partition(cfg, source, folder, i, parts)
    prep_merge(cfg, folders, tmp_path / f"merged-{parts}")
    return tmp_path / f"merged-{parts}"


@pytest.fixture(scope="module")
def messy(model_cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    _messy_folder(root / "src")
    cfg = _cfg(model_cache)
    single = prep(cfg, str(root / "src"), root / "single")
    return root, cfg, single


def test_partitions_are_disjoint_ordered_ranges():
    assert [partition_bounds(10, i, 4) for i in range(4)] == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert [partition_bounds(2, i, 4) for i in range(4)] == [(0, 0), (0, 1), (1, 1), (1, 2)]
    with pytest.raises(ValueError, match="partition 4 of 4"):
        partition_bounds(10, 4, 4)


class _Units:
    """A source whose counts may be stale (unit 1 holds more than counted, unit 3 fewer) or zero."""

    def __init__(self, counts, actual):
        self.counts, self.actual = counts, actual

    def num_units(self):
        return len(self.counts)

    def unit_counts(self):
        return self.counts

    def read_unit(self, unit, skip=0, on_error=None):
        for j in range(skip, self.actual[unit]):
            yield Record(j, f"u{unit}r{j}", None)
        if self.actual[unit] < self.counts[unit] and on_error is not None:
            on_error(f"unit {unit}", EOFError("cut"))


@pytest.mark.parametrize("parts", [1, 2, 5, 6, 9, 14])   # <= 5: whole units; more: record ranges
def test_every_record_and_error_is_read_by_exactly_one_partition(parts):
    source = _Units([3, 2, 0, 4, 1], [3, 4, 0, 2, 1])
    errors: list[str] = []
    got = [r.caption for p in range(parts) for r in read_partition(source, p, parts, lambda u, e: errors.append(u))]
    whole = [r.caption for u in range(5) for r in source.read_unit(u)]
    assert got == whole and errors == ["unit 3"]


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_merged_partitions_equal_the_one_process_output(messy, tmp_path, parts):
    root, cfg, single = messy
    merged = _partitioned(cfg, str(root / "src"), tmp_path, parts)
    assert _output(merged) == _output(root / "single")                  # same shards, byte for byte, same manifest
    manifest = json.loads((merged / MANIFEST).read_text())
    assert manifest["content_hash"] == single["content_hash"] and manifest["num_records"] == 9
    assert {k: v for k, v in manifest["dropped"].items() if v} == {"duplicate": 4, "corrupt_image": 1,
                                                                   "too_small": 1, "empty_caption": 1}


def test_rejects_keep_source_order_when_truncated(messy, tmp_path, monkeypatch):
    root, cfg, _ = messy
    monkeypatch.setattr(tally_mod, "MAX_REJECTS", 4)
    monkeypatch.setattr(merge_mod, "MAX_REJECTS", 4)
    single = prep(cfg, str(root / "src"), tmp_path / "single")
    assert [r["reason"] for r in single["rejects"]] == ["duplicate", "corrupt_image", "duplicate", "too_small"]
    assert _output(_partitioned(cfg, str(root / "src"), tmp_path, 4)) == _output(tmp_path / "single")


def test_workers_give_the_one_process_output(messy, tmp_path):
    root, cfg, _ = messy
    prep(cfg, str(root / "src"), tmp_path / "two", workers=2)
    assert _output(tmp_path / "two") == _output(root / "single")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two"]          # partitions staged inside, removed


def _write_tar(path: Path, samples) -> None:
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("parts", [2, 3])   # 2 shards: one each; 3: record ranges across the shards
def test_truncated_shards_with_latents_merge_to_the_one_process_output(model_cache, tmp_path, parts):
    samples = [(f"s{i:03d}", {"png": _png(i % 5), "txt": f"caption {i}".encode()}) for i in range(9)]
    (tmp_path / "src").mkdir()
    _write_tar(tmp_path / "src" / "a.tar", samples[:5])
    _write_tar(tmp_path / "src" / "b.tar", samples[5:])
    data = (tmp_path / "src" / "b.tar").read_bytes()
    (tmp_path / "src" / "b.tar").write_bytes(data[: len(data) * 2 // 3])    # cut inside b.tar
    cfg = _cfg(model_cache, "data.precompute_latents=true")
    single = prep(cfg, str(tmp_path / "src"), tmp_path / "single")
    assert single["dropped"]["truncated"] == 1 and single["latents"]["precomputed"]
    assert _output(_partitioned(cfg, str(tmp_path / "src"), tmp_path, parts)) == _output(tmp_path / "single")


def test_merge_refuses_partitions_out_of_order_or_altered(messy, tmp_path):
    root, cfg, _ = messy
    folders = [tmp_path / f"p{i}" for i in range(2)]
    for i, folder in enumerate(folders):
        prep_partition(cfg, str(root / "src"), folder, i, 2)
    with pytest.raises(ValueError, match="expected 0 of 2"):
        prep_merge(cfg, folders[::-1], tmp_path / "out")
    with pytest.raises(ValueError, match="not an empty folder"):
        prep_partition(cfg, str(root / "src"), folders[0], 0, 2)
    summary = json.loads((folders[1] / merge_mod.PARTIAL).read_text())
    summary["shards"][0]["name"] = "../escape.tar"
    (folders[1] / merge_mod.PARTIAL).write_text(json.dumps(summary))
    with pytest.raises(ValueError, match=r"shards\[0\].*not allowed"):
        prep_merge(cfg, folders, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_workers_flag_and_its_bad_values(messy, tmp_path, capsys, model_cache):
    from rglcd.cli import main

    root, _, single = messy
    sets = ["--set", f"model.cache_dir={model_cache}", "--set", "data.shard_size=3"]
    assert main(["prep", "--source", str(root / "src"), "--out", str(tmp_path / "out"), "--workers", "2", *sets]) == 0
    assert f"content hash {single['content_hash'][:16]}" in capsys.readouterr().out
    assert _output(tmp_path / "out") == _output(root / "single")
    assert main(["prep", "--source", str(root / "src"), "--out", str(tmp_path / "o2"), "--workers", "0", *sets]) == 2
    assert "--workers: 0; allowed" in capsys.readouterr().err
    assert main(["prep", "--source", str(root / "src"), "--out", str(tmp_path / "o3"), *sets,
                 "--set", "data.prep_workers=0"]) == 2
    assert "prep_workers" in capsys.readouterr().err
