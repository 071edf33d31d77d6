"""Bounded load test of `rglcd serve` on loopback: N concurrent clients for a fixed time, per batch size.

    python benchmarks/serve_load.py                                   # tiny student on CPU, batch 1 4 8, 10 s each
    python benchmarks/serve_load.py --model models:/rglcd-student@production --device cuda --duration 30

For each batch size B a fresh server runs with serve.max_batch_size=B, and B clients (a real HTTP client
each, keep-alive) send one-image v1 requests back to back for --duration seconds. Reported per B: requests,
errors (any non-200 or transport error), p50/p95/max latency, images/s, and the mean batch size the
server's /metrics recorded. The server is stopped with SIGTERM and must exit 0. Prints a table; --json
writes the numbers. Not a test: numbers depend on the machine (docs/serving.md "Load test").
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_student(folder: Path, cache: str) -> Path:
    """A tiny random-init exported LCM student (what the tests serve)."""
    from rglcd.export import export_student
    from rglcd.models import load_teacher, make_student

    teacher = load_teacher("tiny:epsilon", cache)
    return export_student(make_student(teacher.unet, 256).eval(), teacher, folder / "student",
                          teacher_ref="tiny:epsilon")


def start(model: str, batch: int, args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    sets = [f"serve.max_batch_size={batch}", f"serve.max_wait_ms={args.max_wait_ms}", f"serve.device={args.device}",
            f"model.cache_dir={args.cache}", *args.set]
    cmd = [sys.executable, "-m", "rglcd", "serve", "--model", model, "--port", str(port),
           *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(f"{url}/v2/health/ready", timeout=2).ok:
                return proc, url
        except requests.RequestException:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server did not become ready; log: {log}")


def client(url: str, body: dict, until: float, out: list, errors: list) -> None:
    session = requests.Session()
    while time.monotonic() < until:
        started = time.perf_counter()
        try:
            res = session.post(f"{url}/v1/models/rglcd-student:predict", json=body, timeout=300)
            ok = res.status_code == 200
        except requests.RequestException:
            ok = False
        (out if ok else errors).append(time.perf_counter() - started)


def mean_batch(url: str) -> float:
    values = {}
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(("rglcd_batch_size_sum", "rglcd_batch_size_count")):
            name, value = line.split()
            values[name] = float(value)
    return values["rglcd_batch_size_sum"] / max(values["rglcd_batch_size_count"], 1)


def run_one(model: str, batch: int, args: argparse.Namespace, log: Path) -> dict:
    proc, url = start(model, batch, args, log)
    body = {"instances": [{"prompt": "a photograph of an astronaut riding a horse", "steps": args.steps}]}
    latencies, errors = [], []
    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(url, body, started + args.duration, latencies, errors))
               for _ in range(batch)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    batches = mean_batch(url)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    lat = sorted(latencies)
    pct = statistics.quantiles(lat, n=20) if len(lat) > 1 else lat * 19
    return {"batch": batch, "clients": batch, "requests": len(lat) + len(errors), "errors": len(errors),
            "p50_s": statistics.median(lat) if lat else None, "p95_s": pct[18] if lat else None,
            "max_s": lat[-1] if lat else None, "images_per_s": len(lat) / elapsed, "mean_batch": batches,
            "exit_code": code}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="models:/... or an exported dir (default: a tiny random student)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per batch size")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--max-wait-ms", type=float, default=20.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "rglcd-bench-cache"))
    parser.add_argument("--set", action="append", default=[], help="extra config override for the server")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(tiny_student(Path(tmp), args.cache))
        rows = [run_one(model, b, args, Path(tmp) / f"server-{b}.log") for b in args.batches]
    print(f"{'batch':>5} {'reqs':>6} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} {'img/s':>8} {'mean batch':>10} {'exit':>4}")
    for r in rows:
        print(f"{r['batch']:>5} {r['requests']:>6} {r['errors']:>6} {1000 * (r['p50_s'] or 0):>8.1f} "
              f"{1000 * (r['p95_s'] or 0):>8.1f} {r['images_per_s']:>8.2f} {r['mean_batch']:>10.2f} {r['exit_code']:>4}")
    result = {"model": args.model or "tiny random student", "device": args.device, "steps": args.steps,
              "duration_s": args.duration, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
