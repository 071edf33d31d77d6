"""Reading: each record's bytes read by one (rank, loader worker) per epoch, by ranged reads from the
byte offsets prep keeps in the manifest; the whole-shard fallback; checked offsets; S3 ranged reads."""
from __future__ import annotations

import itertools
import json
import shutil
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

import rglcd.data.sources as sources
from rglcd.config import load_config
from rglcd.data import StreamSpec, TrainStream, open_source, prep
from rglcd.data.sources import Record
from rglcd.data.stream import GlobalOrder, global_records, read_ahead
from rglcd.data.tarindex import record_offsets


@pytest.fixture(scope="module")
def data(model_cache, tmp_path_factory):
    """builtin:photos:20 prepped into 3 shards (8, 8, 4) with offsets, and the same shards with a manifest
    from before offsets (`old`)."""
    root = tmp_path_factory.mktemp("read")
    cfg = load_config("tiny-random", overrides=[f"model.cache_dir={model_cache}", "data.shard_size=8"])
    manifest = prep(cfg, "builtin:photos:20", root / "new")
    shutil.copytree(root / "new", root / "old")
    old = json.loads((root / "old" / "manifest.json").read_text())
    for shard in old["shards"]:
        del shard["offsets"]
    (root / "old" / "manifest.json").write_text(json.dumps(old))
    return root, manifest


class Meter:
    """Bytes read through rglcd.data.sources (ranged reads and whole-file streams), per `key`."""

    def __init__(self, monkeypatch):
        self.bytes, self.reads, self.whole_files, self.key = Counter(), Counter(), Counter(), None
        real_ranges, real_open = sources.read_ranges, sources.open_binary

        def read_ranges(urls, starts, ends):
            datas = real_ranges(urls, starts, ends)
            self.bytes[self.key] += sum(map(len, datas))
            self.reads[self.key] += len(datas)
            return datas

        def open_binary(url):
            self.whole_files[self.key] += 1
            return _Counted(real_open(url), self)

        monkeypatch.setattr(sources, "read_ranges", read_ranges)
        monkeypatch.setattr(sources, "open_binary", open_binary)


class _Counted:
    def __init__(self, handle, meter: Meter):
        self.handle, self.meter = handle, meter

    def read(self, n: int = -1) -> bytes:
        data = self.handle.read(n)
        self.meter.bytes[self.meter.key] += len(data)
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


def _spec(**kw) -> StreamSpec:
    return StreamSpec(**{"batch_size": 2, "resolution": 32, "seed": 3, "shuffle_buffer": 6, "read_ahead": 0, **kw})


def _take(stream: TrainStream, worker: int, workers: int, n: int) -> list[dict]:
    batches = stream.batches(worker, workers)
    out = [next(batches) for _ in range(n)]
    batches.close()
    return out


# ---------------------------------------------------------------- the order, without reading

class _Counts:
    """A source of given unit sizes (some empty) whose records are their global index."""

    def __init__(self, counts: list[int]):
        self.counts, self.name, self.latents = counts, "counts", False

    def unit_counts(self) -> list[int]:
        return self.counts

    def read_unit(self, unit, skip=0, on_error=None):
        first = sum(self.counts[:unit])
        return (Record(first + j, None, None) for j in range(skip, self.counts[unit]))


@pytest.mark.parametrize("counts,buffer", [([3, 0, 5, 4], 5), ([7], 1), ([2, 9, 1, 0, 6], 1000)])
def test_global_order_locates_what_the_sequential_order_yields(counts, buffer):
    source, total = _Counts(counts), sum(counts)
    order = GlobalOrder(counts, seed=11, shuffle_buffer=buffer)
    first = [0, *itertools.accumulate(counts)]
    for position, record in zip(range(3 * total), (r for _, r in global_records(source, 11, buffer))):
        unit, j = order.locate(position)
        assert first[unit] + j == record.index and 0 <= j < counts[unit]
    start = 2 * total - 3                                           # a resume position mid-epoch
    tail = [r.index for _, r in zip(range(5), (r for _, r in global_records(source, 11, buffer, start)))]
    assert [first[u] + j for u, j in map(order.locate, range(start, start + 5))] == tail


# ---------------------------------------------------------------- offsets written by prep

def test_prep_writes_offsets_of_whole_records(data):
    root, manifest = data
    shard = manifest["shards"][0]
    assert shard["offsets"] == record_offsets(root / "new" / shard["name"]) and len(shard["offsets"]) == 9
    with tarfile.open(root / "new" / shard["name"]) as tar:                  # record 0 = its members, 1 = ...
        members = tar.getmembers()
    assert shard["offsets"][0] == 0 and shard["offsets"][1] == members[3].offset   # jpg/png, json, txt
    source = open_source(str(root / "new"))
    assert source.random_access and not open_source(str(root / "old")).random_access
    record = source.read_record(1, 2)                                 # shard 1, record 2: global index 10
    assert record.index == 10 and record.key == "000000010" and record.caption and isinstance(record.image, bytes)
    assert next(open_source(str(root / "old")).read_unit(1, skip=2)).image == record.image


# ---------------------------------------------------------------- each record read once per epoch

def test_each_rank_and_worker_reads_only_its_own_records_once_per_epoch(data, monkeypatch):
    root, manifest = data
    ranges = {(u, j): (s["offsets"][j + 1] - s["offsets"][j])
              for u, s in enumerate(manifest["shards"]) for j in range(s["count"])}
    index_of = {(u, j): 8 * u + j for u, j in ranges}
    meter = Meter(monkeypatch)
    source, seen = open_source(str(root / "new")), {}
    for rank in (0, 1):
        for worker in (0, 1):
            meter.key = (rank, worker)
            stream = TrainStream(source, _spec(rank=rank, world_size=2))
            # one epoch: 20 records = 5 global micro-batches of 2 x 2; worker 0 builds 0, 2, 4 and worker 1 1, 3
            seen[rank, worker] = [i for b in _take(stream, worker, 2, 3 - worker) for i in b["index"].tolist()]
    assert sorted(i for ids in seen.values() for i in ids) == list(range(20))          # each record once
    for key, ids in seen.items():
        place = {v: k for k, v in index_of.items()}
        assert meter.bytes[key] == sum(ranges[place[i]] for i in ids)                 # its records' bytes only
        assert meter.whole_files[key] == 0
    dataset = sum((root / "new" / s["name"]).stat().st_size for s in manifest["shards"])
    assert sum(meter.bytes.values()) == sum(ranges.values()) < dataset                # the tar padding unread


def test_without_offsets_every_worker_reads_all_shards_and_gets_the_same_batches(data, monkeypatch):
    root, manifest = data
    meter = Meter(monkeypatch)
    got = {}
    for name in ("new", "old"):
        source = open_source(str(root / name))
        for rank in (0, 1):
            for worker in (0, 1):
                meter.key = (name, rank, worker)
                stream = TrainStream(source, _spec(rank=rank, world_size=2, start_batch=1))
                got[name, rank, worker] = _take(stream, worker, 2, 4)
    dataset = sum((root / "old" / s["name"]).stat().st_size for s in manifest["shards"])
    for rank in (0, 1):
        for worker in (0, 1):
            for a, b in zip(got["new", rank, worker], got["old", rank, worker]):
                assert torch.equal(a["index"], b["index"]) and torch.equal(a["pixel_values"], b["pixel_values"])
            assert meter.bytes["old", rank, worker] >= dataset                    # every shard in full (or more)
            assert meter.bytes["new", rank, worker] < dataset / 2


def test_a_single_reader_streams_whole_shards_once_and_matches_the_ranged_reads(data, monkeypatch):
    root, manifest = data
    meter = Meter(monkeypatch)
    source = open_source(str(root / "new"))
    meter.key = "single"
    single = _take(TrainStream(source, _spec(batch_size=4)), 0, 1, 5)               # one epoch, 1 x 1
    meter.key = "split"
    workers = [_take(TrainStream(source, _spec(batch_size=4)), k, 2, 3 - k) for k in (0, 1)]
    split = [workers[g % 2][g // 2] for g in range(5)]                             # the loader's round robin
    for a, b in zip(single, split):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["pixel_values"], b["pixel_values"])
    dataset = sum((root / "new" / s["name"]).stat().st_size for s in manifest["shards"])
    assert meter.reads["single"] == 0 and meter.whole_files["single"] == 3 and meter.bytes["single"] <= dataset
    assert meter.whole_files["split"] == 0 and meter.reads["split"] == 20


def test_read_ahead_gives_the_same_batches_and_reads_at_most_its_depth_ahead(data, monkeypatch):
    root, _ = data
    meter = Meter(monkeypatch)
    source = open_source(str(root / "new"))
    meter.key = "plain"
    plain = _take(TrainStream(source, _spec(read_ahead=0, world_size=2)), 0, 1, 3)
    meter.key = "ahead"
    ahead = _take(TrainStream(source, _spec(read_ahead=4, world_size=2)), 0, 1, 3)
    for a, b in zip(plain, ahead):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["pixel_values"], b["pixel_values"])
    assert meter.reads["plain"] == 6 and 6 <= meter.reads["ahead"] <= 6 + 2 * 4   # 3 batches of 2, + 2 chunks


def test_read_ahead_runs_tasks_in_flight_and_keeps_their_order():
    def task(i):
        def run():
            time.sleep(0.05 * (i % 2))
            return i
        return run

    start = time.perf_counter()
    assert list(read_ahead((task(i) for i in range(8)), depth=4)) == list(range(8))
    assert time.perf_counter() - start < 0.05 * 4 + 0.15          # sequential would take 0.2 s for the odd ones
    with pytest.raises(ZeroDivisionError):
        list(read_ahead((lambda: 1 // 0 for _ in range(3)), depth=2))


# ---------------------------------------------------------------- offsets from an untrusted manifest

def _tampered(root, tmp_path, change) -> str:
    shutil.copytree(root / "new", tmp_path / "t")
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    change(manifest["shards"][1]["offsets"])
    (tmp_path / "t" / "manifest.json").write_text(json.dumps(manifest))
    return str(tmp_path / "t")


@pytest.mark.parametrize("change,message", [
    (lambda o: o.pop(), r"must be a list of 9 byte offsets"),
    (lambda o: o.__setitem__(3, o[2]), r"offsets\[3\] \d+ does not follow \d+ \(records would overlap\)"),
    (lambda o: o.__setitem__(2, o[2] + 1), r"offsets\[2\] '\d+' is not a byte offset"),
    (lambda o: o.__setitem__(4, -512), r"offsets\[4\] '-512' is not a byte offset"),
    (lambda o: o.__setitem__(1, "512"), r"offsets\[1\] '512' is not a byte offset"),
])
def test_malformed_offsets_are_refused_when_the_manifest_is_read(data, tmp_path, change, message):
    root, _ = data
    with pytest.raises(ValueError, match=r"manifest.json: shards\[1\] \(shard-000001.tar\) offsets: " + message):
        open_source(_tampered(root, tmp_path, change))


def test_offsets_that_do_not_match_the_shard_are_a_clear_error(data, tmp_path):
    root, _ = data
    beyond = open_source(_tampered(root, tmp_path / "a", lambda o: o.__setitem__(8, o[8] + (1 << 20))))
    with pytest.raises(ValueError, match=r"shard-000001.tar: the manifest's offsets end at byte \d+, the file holds"):
        beyond.read_record(1, 0)
    inside = open_source(_tampered(root, tmp_path / "b", lambda o: o.__setitem__(3, o[3] + 512)))
    with pytest.raises(ValueError, match=r"shard-000001.tar: bytes \d+-\d+ \(record [23]\) .*offsets do not match"):
        [inside.read_record(1, j) for j in range(8)]
    def merge_first_two(o):  # record 0's range covers records 0 and 1; the last range is the end-of-archive block
        o[:] = [o[0], *o[2:], o[8] + 512]

    merged = open_source(_tampered(root, tmp_path / "c", merge_first_two))
    with pytest.raises(ValueError, match=r"hold record\(s\) 000000008, 000000009, expected record 000000008 alone"):
        merged.read_record(1, 0)
    with pytest.raises(ValueError, match=r"hold record\(s\) none, expected record 000000015 alone"):
        merged.read_record(1, 7)
    with pytest.raises(ValueError, match=r"shard-000001.tar: bytes \d+-\d+ \(record [07]\) hold record\(s\) "):
        for rank in (0, 1):                                      # epoch 0 of both ranks: every record once
            next(iter(TrainStream(merged, StreamSpec(batch_size=10, resolution=32, rank=rank, world_size=2))))


# ---------------------------------------------------------------- S3: one ranged GET per record

def test_s3_records_are_ranged_reads_equal_to_local(data, s3_remote, monkeypatch):
    root, manifest = data
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_remote.server.endpoint_url)
    client = s3_remote.server.client()
    for name in ["manifest.json"] + [s["name"] for s in manifest["shards"]]:
        client.upload_file(str(root / "new" / name), s3_remote.bucket, f"data/{name}")
    meter = Meter(monkeypatch)
    remote, local = open_source(f"s3://{s3_remote.bucket}/data"), open_source(str(root / "new"))
    assert remote.random_access
    meter.key = "s3"
    a = _take(TrainStream(remote, _spec(rank=1, world_size=2, read_ahead=3)), 1, 2, 2)
    meter.key = "local"
    b = _take(TrainStream(local, _spec(rank=1, world_size=2, read_ahead=3)), 1, 2, 2)
    for x, y in zip(a, b):
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["pixel_values"], y["pixel_values"])
    assert meter.bytes["s3"] == meter.bytes["local"] > 0 and meter.whole_files["s3"] == 0
    dataset = sum((root / "new" / s["name"]).stat().st_size for s in manifest["shards"])
    assert meter.bytes["s3"] < dataset / 2
    # real loader worker processes (forked) reading from S3 build the same batches as one process locally
    from rglcd.data import make_loader

    spec = _spec(batch_size=4, read_ahead=4)
    in_workers = [b for _, b in zip(range(4), make_loader(remote, spec, num_workers=2))]
    in_process = _take(TrainStream(local, spec), 0, 1, 4)
    for x, y in zip(in_workers, in_process):
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["pixel_values"], y["pixel_values"])


def test_data_read_benchmark_counts_bytes_near_the_goal(model_cache, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import data_read

    out = tmp_path / "read.json"
    result = data_read.main(["--records", "64", "--image-size", "32", "--shard-size", "16", "--repeats", "1",
                             "--no-s3", "--cache-dir", model_cache, "--json", str(out)])
    assert json.loads(out.read_text())["summary"] == result["summary"]
    rows = {(r["way"], r["processes"], r["workers"]): r for r in result["bytes_read"]}
    assert len(rows) == 12
    for (way, p, w), row in rows.items():
        assert len(row["per_rank_worker"]) == p * w
        goal = 1 / (p * w) if way == "new" else 1.0                 # the old way: every reader reads it all
        assert goal * 0.95 <= row["max_fraction"] <= goal * 1.01 + 0.01
    assert rows["new", 4, 2]["total_fraction"] == pytest.approx(rows["new", 1, 2]["total_fraction"])  # each record once
    assert rows["old", 4, 2]["total_fraction"] == pytest.approx(8 * rows["old", 1, 1]["total_fraction"], rel=0.01)
