"""Push/pull throughput of rglcd.storage for a ~100 MB model directory against a local S3 server.

    .venv/bin/python benchmarks/storage.py [--mib 100] [--repeats 3] [--json out.json]

What it measures, on this machine (loopback, no real network): a moto S3 server in its own process
(`moto_server`, started and stopped here), a directory shaped like a diffusers model (one large UNet
file of --mib MiB, multipart from 100 MiB, plus VAE, text encoder and JSON configs, random bytes).
Timed: cold push (every object uploaded, verification included), repeat push (dedupe: nothing
uploaded), cold pull (empty cache), warm pull (cache already holds every object), and the same cold
push/pull against a local directory remote for reference. MB/s = directory bytes / 1e6 / seconds,
median of --repeats. Numbers depend on CPU load; they are not a network benchmark.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from rglcd.config import load_config
from rglcd.storage import pull, push

LAYOUT = {"model_index.json": 1e-3, "scheduler/scheduler_config.json": 1e-3, "unet/config.json": 1e-3,
          "vae/diffusion_pytorch_model.safetensors": 8, "vae/config.json": 1e-3,
          "text_encoder/model.safetensors": 4, "text_encoder/config.json": 1e-3}


def make_model_dir(root: Path, unet_mib: int) -> int:
    """Write the layout with random bytes; returns total bytes."""
    files = {**LAYOUT, "unet/diffusion_pytorch_model.safetensors": unet_mib}
    for rel, mib in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(max(1, int(mib * 2**20))))
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def start_moto(log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    moto = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"moto_server did not start on {url}; see {log}")


def storage_cfg(remote: str, endpoint: str | None):
    s3 = [f"storage.endpoint_url={endpoint}", "storage.region=us-east-1"] if endpoint else []
    return load_config(overrides=[f"storage.remote={remote}", *s3])


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def one_round(model: Path, work: Path, remote: str, endpoint: str | None) -> dict[str, float]:
    cfg = storage_cfg(remote, endpoint)
    t_push, first = timed(push, cfg, model)
    t_again, again = timed(push, cfg, model)
    assert again.objects_uploaded == 0, "repeat push uploaded objects"
    tag = uuid.uuid4().hex[:6]
    t_pull, _ = timed(pull, first.pointer, work / f"pull-{tag}", cache_dir=work / f"cache-{tag}")
    t_warm, warm = timed(pull, first.pointer, work / f"warm-{tag}", cache_dir=work / f"cache-{tag}")
    assert warm.objects_fetched == 0
    return {"push_cold_s": t_push, "push_repeat_s": t_again, "pull_cold_s": t_pull, "pull_warm_s": t_warm,
            "objects": first.objects_uploaded + 1}


def multipart_parts(endpoint: str, bucket: str) -> int:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    biggest = max(s3.list_objects_v2(Bucket=bucket)["Contents"], key=lambda o: o["Size"])
    etag = s3.head_object(Bucket=bucket, Key=biggest["Key"])["ETag"].strip('"')
    return int(etag.split("-")[1]) if "-" in etag else 1


def run(args: argparse.Namespace, work: Path) -> dict:
    import boto3

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    size = make_model_dir(work / "model", args.mib)
    proc, endpoint = start_moto(work / "moto.log")
    rounds: dict[str, list[dict]] = {"s3": [], "local": []}
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        for i in range(args.repeats):
            bucket = f"bench-{i}-{uuid.uuid4().hex[:8]}"
            s3.create_bucket(Bucket=bucket)
            rounds["s3"].append(one_round(work / "model", work, f"s3://{bucket}/rglcd", endpoint))
            rounds["local"].append(one_round(work / "model", work, str(work / f"local-remote-{i}"), None))
        parts = multipart_parts(endpoint, bucket)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    return summarise(rounds, size, parts, args)


def summarise(rounds: dict, size: int, parts: int, args: argparse.Namespace) -> dict:
    out = {"measured": "rglcd.storage push/pull of a diffusers-shaped model dir over loopback",
           "bytes": size, "files": len(LAYOUT) + 1, "unet_mib": args.mib, "repeats": args.repeats,
           "unet_multipart_parts": parts, "cpus": os.cpu_count(), "python": platform.python_version(),
           "load_avg_1m": os.getloadavg()[0]}
    for remote, rows in rounds.items():
        for key in ("push_cold_s", "push_repeat_s", "pull_cold_s", "pull_warm_s"):
            seconds = statistics.median(r[key] for r in rows)
            out[f"{remote}.{key}"] = round(seconds, 3)
            out[f"{remote}.{key.removesuffix('_s')}_MBps"] = round(size / 1e6 / seconds, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=100, help="size of the UNet file in MiB (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; medians are reported (default: %(default)s)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rglcd-bench-storage-"))
    try:
        result = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for key, value in result.items():
        print(f"{key:<28} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
