"""Bytes each (rank, loader worker) reads per epoch, and loader throughput: whole shards (old) vs ranged reads.

    .venv/bin/python benchmarks/data_read.py [--records 512] [--json out.json]

Prepares a small data set (`--records` noise images of `--image-size` px with captions, through the real
`rglcd prep` with the tiny-random preset's tokenizer, `--shard-size` records a shard), then reads one epoch of the
training stream as every (rank, worker) of P processes x W loader workers does, for P in 1, 2, 4 and W in
1, 2. Ranks and workers are simulated in this process (`TrainStream.batches(worker, workers)` with the
StreamSpec's rank/world_size: the exact records a real run's (rank, worker) reads); each reads its
micro-batches of one epoch, read-ahead off so nothing past the epoch is counted. Bytes are counted in the
reads themselves (rglcd.data.sources.read_ranges and the whole-file streams of open_binary; the manifest
through rglcd.data.manifest.read_bytes, once per process).

  old  the same shards with a manifest from before offsets: every shard read whole (the fallback, and
       what every (rank, worker) read before offsets existed)
  new  the prep manifest with per-record byte offsets: one ranged read per record used

Fractions are of the data set's shard bytes; the goal for `new` is 1 / (P x W) per (rank, worker), plus the
manifest once per process. Throughput: micro-batches per second that (rank 0, worker 0) builds (pixel
path: read, decode, crop, collate) and its CPU time per batch, medians of --repeats interleaved rounds,
old vs new with read-ahead 0 and --read-ahead: on local disk for 1 x 1, 2 x 2 and 4 x 2 (two epochs; a
single reader streams whole shards either way), and from a local S3 server (moto_server in its own
process, as benchmarks/storage.py starts it; 2 x 2, one epoch). moto is a Python server on this
machine's shared CPUs: a request costs it milliseconds of CPU, so its figures count requests more than
bytes; on S3 the ranged GETs of a chunk run concurrently.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

import rglcd.data.manifest as manifest_mod
import rglcd.data.sources as sources
from rglcd.config import load_config
from rglcd.data import StreamSpec, TrainStream, open_source, prep


class Meter:
    """Counts the bytes read through rglcd.data's readers, under the current `key`."""

    def __init__(self):
        self.bytes, self.key = Counter(), None
        self._real = (sources.read_ranges, sources.open_binary, manifest_mod.read_bytes)
        real_ranges, real_open, real_bytes = self._real

        def read_ranges(urls, starts, ends):
            datas = real_ranges(urls, starts, ends)
            self.bytes[self.key] += sum(map(len, datas))
            return datas

        def read_bytes(url, max_bytes=None):
            data = real_bytes(url, max_bytes)
            self.bytes[self.key] += len(data)
            return data

        sources.read_ranges, manifest_mod.read_bytes = read_ranges, read_bytes
        sources.open_binary = lambda url: _Counted(real_open(url), self)

    def close(self) -> None:
        sources.read_ranges, sources.open_binary, manifest_mod.read_bytes = self._real


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


def make_data(root: Path, records: int, size: int, shard_size: int, cache_dir: str) -> tuple[Path, Path, dict]:
    """(new, old, manifest): the prep output with offsets, and a copy whose manifest has none."""
    folder = root / "images"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(records):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")
        (folder / f"{i:06d}.txt").write_text(f"noise picture number {i}")
    cfg = load_config("tiny-random", overrides=[f"model.cache_dir={cache_dir}", f"data.shard_size={shard_size}",
                                         f"data.min_image_size={min(size, 32)}"])
    manifest = prep(cfg, str(folder), root / "new")
    shutil.copytree(root / "new", root / "old")
    old = json.loads((root / "old" / "manifest.json").read_text())
    for shard in old["shards"]:
        del shard["offsets"]
    (root / "old" / "manifest.json").write_text(json.dumps(old, indent=2))
    return root / "new", root / "old", manifest


def _spec(batch: int, rank: int = 0, world: int = 1, read_ahead: int = 0) -> StreamSpec:
    return StreamSpec(batch_size=batch, resolution=32, seed=0, rank=rank, world_size=world, read_ahead=read_ahead)


def bytes_per_reader(meter: Meter, data: Path, way: str, processes: int, workers: int, batch: int,
                     records: int, dataset: int) -> dict:
    """One epoch as each (rank, worker) of `processes` x `workers` reads it."""
    per_epoch = records // (batch * processes)            # global micro-batches in an epoch
    rows, manifest_bytes = [], []
    for rank in range(processes):
        meter.key = (way, processes, workers, rank, "manifest")
        source = open_source(str(data))                   # once per process; its workers inherit it
        manifest_bytes.append(meter.bytes[meter.key])
        for worker in range(workers):
            meter.key = (way, processes, workers, rank, worker)
            batches = TrainStream(source, _spec(batch, rank, processes)).batches(worker, workers)
            taken = len(range(worker, per_epoch, workers))
            for _ in range(taken):
                next(batches)
            batches.close()
            rows.append({"rank": rank, "worker": worker, "batches": taken, "bytes": meter.bytes[meter.key],
                         "fraction": meter.bytes[meter.key] / dataset})
    fractions = [r["fraction"] for r in rows]
    per_process = [(sum(r["bytes"] for r in rows if r["rank"] == rank) + manifest_bytes[rank]) / dataset
                   for rank in range(processes)]
    return {"way": way, "processes": processes, "workers": workers, "goal": 1 / (processes * workers),
            "max_fraction": max(fractions), "mean_fraction": statistics.mean(fractions),
            "total_fraction": sum(fractions), "per_process_fraction_with_manifest": max(per_process),
            "manifest_fraction": manifest_bytes[0] / dataset, "per_rank_worker": rows}


def time_batches(data: str, batch: int, n: int, read_ahead: int, processes: int, workers: int) -> tuple[float, float]:
    """(wall, CPU) seconds (rank 0, worker 0) of `processes` x `workers` takes to build `n` micro-batches.
    CPU: this process's, its read-ahead thread included."""
    batches = TrainStream(open_source(data), _spec(batch, 0, processes, read_ahead)).batches(0, workers)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        next(batches)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    batches.close()
    return wall, cpu


def speeds(old: str, new: str, args, layout: tuple[int, int] = (1, 1), epochs: int = 2) -> dict[str, dict]:
    """Batches/s and CPU ms per batch of (rank 0, worker 0) over `epochs` epochs: old, new without read-ahead,
    new with --read-ahead; the variants interleaved in each of --repeats rounds (machine load hits all
    alike), medians."""
    runs = {"old, read_ahead 0": (old, 0), "new, read_ahead 0": (new, 0),
            f"new, read_ahead {args.read_ahead}": (new, args.read_ahead)}
    n = epochs * args.records // (args.batch * layout[0] * layout[1])
    times: dict[str, list] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, (data, ra) in runs.items():
            times[name].append(time_batches(data, args.batch, n, ra, *layout))
    return {name: {"batches_per_s": n / statistics.median(w for w, _ in t),
                   "cpu_ms_per_batch": 1e3 * statistics.median(c for _, c in t) / n} for name, t in times.items()}


def s3_speeds(root: Path, args) -> dict[str, float]:
    """`speeds` with the shards on a local S3 server (moto_server, its own process), 2 x 2, one epoch."""
    import os
    import signal

    import boto3
    from storage import start_moto

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    proc, endpoint = start_moto(root / "moto.log")
    try:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket="bench")
        for way in ("old", "new"):
            for file in (root / way).iterdir():
                client.upload_file(str(file), "bench", f"{way}/{file.name}")
        return speeds("s3://bench/old", "s3://bench/new", args, (2, 2), epochs=1)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)


def run(args) -> dict:
    root = Path(tempfile.mkdtemp(prefix="rglcd-read-"))
    try:
        cache = args.cache_dir or str(root / "model-cache")
        new, old, manifest = make_data(root, args.records, args.image_size, args.shard_size, cache)
        dataset = sum((new / s["name"]).stat().st_size for s in manifest["shards"])
        meter = Meter()
        try:
            rows = [bytes_per_reader(meter, data, way, p, w, args.batch, args.records, dataset)
                    for way, data in (("old", old), ("new", new)) for p in (1, 2, 4) for w in (1, 2)]
        finally:
            meter.close()
        speed = {f"local, {p} x {w}": speeds(str(old), str(new), args, (p, w)) for p, w in ((1, 1), (2, 2), (4, 2))}
        if args.s3:
            speed["s3 (moto), 2 x 2"] = s3_speeds(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"dataset": {"records": args.records, "image_size": args.image_size, "shards": len(manifest["shards"]),
                        "shard_bytes": dataset, "manifest_bytes": (len(json.dumps(manifest, indent=2)) + 1),
                        "batch": args.batch},
            "machine": platform.platform(), "bytes_read": rows, "batches_per_s": speed,
            "summary": summarise(rows, speed, args.read_ahead)}


def summarise(rows: list[dict], speed: dict, read_ahead: int) -> dict:
    out = {}
    for row in rows:
        out[f"{row['way']}: max bytes read per (rank, worker) / dataset, {row['processes']} proc x "
            f"{row['workers']} workers (goal {row['goal']:.3f})"] = round(row["max_fraction"], 4)
    for where, runs in speed.items():
        rate = {name: r["batches_per_s"] for name, r in runs.items()}
        ahead = rate[f"new, read_ahead {read_ahead}"]
        out[f"{where}: new read-ahead {read_ahead} / new without, batches per second"] = round(
            ahead / rate["new, read_ahead 0"], 3)
        cpu = {name: r["cpu_ms_per_batch"] for name, r in runs.items()}
        out[f"{where}: new read-ahead {read_ahead} / old, batches per second"] = round(
            ahead / rate["old, read_ahead 0"], 3)
        out[f"{where}: new read-ahead {read_ahead} / old, CPU per batch"] = round(
            cpu[f"new, read_ahead {read_ahead}"] / cpu["old, read_ahead 0"], 3)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=512, help="records in the data set (a multiple of 8 x batch)")
    parser.add_argument("--image-size", type=int, default=64, help="side of the square noise PNGs in px")
    parser.add_argument("--shard-size", type=int, default=64, help="records per shard")
    parser.add_argument("--batch", type=int, default=4, help="micro-batch per process")
    parser.add_argument("--read-ahead", type=int, default=16, help="read-ahead chunk timed against none")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--s3", action=argparse.BooleanOptionalAction, default=True,
                        help="also time reads from a local S3 server (moto_server)")
    parser.add_argument("--cache-dir", default=None, help="model cache for the tiny tokenizer (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.records % (8 * args.batch):
        parser.error(f"--records {args.records} must be a multiple of 8 x --batch ({8 * args.batch}): whole "
                     "micro-batches for every process count")
    result = run(args)
    d = result["dataset"]
    print(f"# data read: {d['records']} records of {d['image_size']} px in {d['shards']} shards, "
          f"{d['shard_bytes']} shard bytes, manifest {d['manifest_bytes']} bytes, batch {d['batch']}")
    print(f"{'way':4} {'P':>2} {'W':>2} {'goal':>7} {'max/rw':>8} {'mean/rw':>8} {'total':>7} {'proc+man':>8}")
    for r in result["bytes_read"]:
        print(f"{r['way']:4} {r['processes']:>2} {r['workers']:>2} {r['goal']:7.4f} {r['max_fraction']:8.4f} "
              f"{r['mean_fraction']:8.4f} {r['total_fraction']:7.3f} {r['per_process_fraction_with_manifest']:8.4f}")
    for where, runs in result["batches_per_s"].items():
        print(f"(rank 0, worker 0), {where} (proc x workers), batches/s | CPU ms/batch: "
              + ", ".join(f"{name} {r['batches_per_s']:.1f} | {r['cpu_ms_per_batch']:.2f}" for name, r in runs.items()))
    for name, value in result["summary"].items():
        print(f"# {name}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
