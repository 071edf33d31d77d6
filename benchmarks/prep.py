"""Parallel prep and re-pushes, in one run: throughput and equality of `prep --workers`, the fan-out's merged
output, and what a DVC re-push costs with the hash cache.

    .venv/bin/python benchmarks/prep.py [--images 2000] [--mib 300] [--json out.json]

Prep: `builtin:photos:N` on the tiny-random preset, prepped with 1 and 2 worker processes (images only, then with
latents), each timed once: wall seconds, images per second, the 2-worker speed-up, and CPU seconds of all
processes (what the second process and the merge cost); the outputs are compared byte for byte.
Fan-out: the same source prepped as 3 partitions (rglcd.data.prep.prep_partition, as the DAG's pods run it) and merged (prep_merge): equal to the one-process output or not. Numbers include process start-up
(spawned workers import torch and load the tokenizer) and depend on the machine's load.

Re-push: a directory of --mib MiB (30 files of random bytes) pushed to a local directory remote: the first
push, an unchanged re-push without the hash cache (every file re-hashed, what rglcd did before), an
unchanged re-push with it, and a re-push after one file changed; seconds, ratios to the first push, and
the files and bytes DVC hashed (counted in dvc_data's file_md5).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rglcd.config import load_config  # noqa: E402
from rglcd.data.prep import prep, prep_merge, prep_partition  # noqa: E402
from rglcd.storage import push, transfer  # noqa: E402

REPUSH_FILES = 30


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _timed(fn, *args, **kwargs) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished child processes."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed_cpu(fn, *args, **kwargs) -> tuple[float, float, Any]:
    cpu = _cpu_seconds()
    seconds, out = _timed(fn, *args, **kwargs)
    return seconds, _cpu_seconds() - cpu, out


def bench_prep(work: Path, images: int, cache: str, latents: bool) -> dict[str, Any]:
    cfg = load_config("tiny-random", overrides=[f"model.cache_dir={cache}", f"data.precompute_latents={str(latents).lower()}",
                                         "data.shard_size=100"])
    source, tag = f"builtin:photos:{images}", "latents" if latents else "images"
    t1, cpu1, manifest = _timed_cpu(prep, cfg, source, work / f"{tag}-1")
    t2, cpu2, _ = _timed_cpu(prep, cfg, source, work / f"{tag}-2", workers=2)
    return {f"{tag}.records": manifest["num_records"], f"{tag}.workers1_s": round(t1, 2),
            f"{tag}.workers2_s": round(t2, 2), f"{tag}.workers1_cpu_s": round(cpu1, 2),
            f"{tag}.workers2_cpu_s": round(cpu2, 2), f"{tag}.workers1_images_per_s": round(images / t1, 1),
            f"{tag}.workers2_images_per_s": round(images / t2, 1), f"{tag}.speedup_2_workers": round(t1 / t2, 2),
            f"{tag}.outputs_identical": _files(work / f"{tag}-1") == _files(work / f"{tag}-2")}


def bench_fan_out(work: Path, images: int, cache: str, parts: int = 3) -> dict[str, Any]:
    cfg = load_config("tiny-random", overrides=[f"model.cache_dir={cache}", "data.shard_size=100"])
    source = f"builtin:photos:{images}"
    folders = [work / f"part-{i}" for i in range(parts)]
    t_parts = sum(_timed(prep_partition, cfg, source, f, i, parts)[0] for i, f in enumerate(folders))
    t_merge, merged = _timed(prep_merge, cfg, folders, work / "merged")
    return {"fan_out.partitions": parts, "fan_out.partitions_total_s": round(t_parts, 2),
            "fan_out.merge_s": round(t_merge, 2), "fan_out.content_hash": merged["content_hash"],
            "fan_out.equal_to_one_process": _files(work / "merged") == _files(work / "images-1")}


@contextmanager
def counting_hashes() -> Iterator[list[int]]:
    """Sizes of the files DVC hashes while inside (dvc_data's file_md5; the in-memory .dir listing left out)."""
    import dvc_data.hashfile.hash as dvc_hash

    sizes: list[int] = []
    real = dvc_hash.file_md5

    def counting(path, *args, **kwargs):
        if not str(path).startswith("memory://"):
            sizes.append(os.path.getsize(path))
        return real(path, *args, **kwargs)

    dvc_hash.file_md5 = counting
    try:
        yield sizes
    finally:
        dvc_hash.file_md5 = real


@contextmanager
def no_hash_cache() -> Iterator[None]:
    """Push as rglcd did before the hash cache: DVC's no-op state (every file hashed each time)."""
    from dvc_data.hashfile.state import StateNoop

    real = transfer.hash_state
    transfer.hash_state = lambda cfg: StateNoop()
    try:
        yield
    finally:
        transfer.hash_state = real


def bench_repush(work: Path, mib: int) -> dict[str, Any]:
    data = work / "dir"
    data.mkdir()
    for i in range(REPUSH_FILES):
        (data / f"file-{i:02d}.bin").write_bytes(os.urandom(mib * 2**20 // REPUSH_FILES))
    cfg = load_config(overrides=[f"storage.remote={work / 'remote'}", f"storage.cache_dir={work / 'cache'}"])
    rows: dict[str, tuple[float, list[int]]] = {}
    for name in ("first", "unchanged_no_cache", "unchanged", "one_file_changed"):
        if name == "one_file_changed":
            (data / "file-07.bin").write_bytes(os.urandom(mib * 2**20 // REPUSH_FILES))
        with counting_hashes() as sizes, (no_hash_cache() if name == "unchanged_no_cache" else _nothing()):
            seconds, _ = _timed(push, cfg, data)
        rows[name] = seconds, sizes
    first = rows["first"][0]
    out: dict[str, Any] = {"repush.mib": mib, "repush.files": REPUSH_FILES}
    for name, (seconds, sizes) in rows.items():
        out[f"repush.{name}_s"] = round(seconds, 3)
        out[f"repush.{name}_over_first"] = round(seconds / first, 4)
        out[f"repush.{name}_files_hashed"] = len(sizes)
        out[f"repush.{name}_bytes_hashed"] = sum(sizes)
    return out


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="builtin photos prepped (default: %(default)s)")
    parser.add_argument("--mib", type=int, default=300, help="size of the re-pushed directory (default: %(default)s)")
    parser.add_argument("--model-cache", default="~/.cache/rglcd", help="where the tiny teacher is built")
    parser.add_argument("--skip-latents", action="store_true", help="skip the prep run with latents")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rglcd-bench-prep-"))
    result: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                              "load_avg_1m_before": round(os.getloadavg()[0], 2), "images": args.images}
    try:
        result.update(bench_prep(work, args.images, args.model_cache, latents=False))
        if not args.skip_latents:
            result.update(bench_prep(work, args.images, args.model_cache, latents=True))
        result.update(bench_fan_out(work, args.images, args.model_cache))
        result.update(bench_repush(work, args.mib))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    for key, value in result.items():
        print(f"{key:<40} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
