"""`rglcd serve` on a loopback port with the tiny student, driven by a real HTTP client (requests):
v1/v2 responses, batching of concurrent requests, 400s, a client that disconnects, SIGTERM."""
from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from servers import free_port

from rglcd.generation import BadRequest, Limits, parse_request

JSON = {"Content-Type": "application/json"}
SERVER_SETS = ["serve.max_wait_ms=400", "serve.max_batch_size=8", "serve.max_images=8", "serve.max_size=64"]


def start_server(student: Path, model_cache: str, log: Path, *sets: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [a for s in [f"model.cache_dir={model_cache}", *SERVER_SETS, *sets] for a in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "rglcd", "serve", "--model", str(student), "--port", str(port),
                             *args], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if requests.get(f"{url}/v2/health/ready", timeout=2).json().get("ready"):
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"server not ready in 120 s: {log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server(tiny_student_dir, model_cache, tmp_path_factory):
    proc, url = start_server(tiny_student_dir, model_cache, tmp_path_factory.mktemp("serve") / "server.log")
    yield url
    proc.kill()
    proc.wait()


def png(b64: str) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(base64.b64decode(b64))))


def v1(url: str, *instances, timeout: float = 120) -> requests.Response:
    return requests.post(f"{url}/v1/models/rglcd-student:predict", json={"instances": list(instances)}, timeout=timeout)


def metric(url: str, name: str) -> float:
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


# ---------------------------------------------------------------- requests (no server)

def test_request_fields_and_limits():
    limits = Limits(max_steps=8, max_size=64, max_images=4, default_steps=4, default_guidance=7.5)
    (one,) = parse_request({"prompt": "a cat"}, limits, 32)
    assert (one.steps, one.guidance, one.seed, one.height, one.width) == (4, 7.5, 0, 32, 32)
    assert [r.seed for r in parse_request({"prompt": "a", "seed": 5, "num_images": 3}, limits, 32)] == [5, 6, 7]
    bad = [({"prompt": "  "}, "prompt"), ({"prompt": "a", "steps": 0}, "steps: 0 is out of range; allowed: 1..8"),
           ({"prompt": "a", "steps": 2.5}, "steps: 2.5 is not an integer"),
           ({"prompt": "a", "seed": float("inf")}, "seed: inf is not an integer"),
           ({"prompt": "a", "guidance": float("nan")}, "guidance: nan is not a finite number"),
           ({"prompt": "a", "steps": "4"}, "steps: '4' is not an integer"),
           ({"prompt": "a", "width": 36}, "width: 36 is not a multiple of 8"),
           ({"prompt": "a", "height": 72}, "height: 72 is out of range; allowed: 8..64"),
           ({"prompt": "a", "num_images": 5}, "num_images: 5 is out of range; allowed: 1..4"),
           ({"prompt": "a", "guidance": 0.5}, "guidance: 0.5 is below 1"),
           ({"prompt": "a", "sampler": "ddim"}, "unknown field")]
    for fields, message in bad:
        with pytest.raises(BadRequest, match=message):
            parse_request(fields, limits, 32)


# ---------------------------------------------------------------- the server

def test_v1_returns_the_same_pixels_as_rglcd_sample(server, tiny_student_dir, model_cache, tmp_path):
    from rglcd.cli import main

    res = v1(server, {"prompt": "a red fox", "seed": 11, "steps": 2, "guidance": 6.0, "num_images": 2}, "a blue car")
    assert res.status_code == 200, res.text
    first, second = res.json()["predictions"]
    assert (first["prompt"], first["seeds"], len(first["images"])) == ("a red fox", [11, 12], 2)
    assert (second["prompt"], second["seeds"], len(second["images"])) == ("a blue car", [0], 1)
    main(["sample", "--model", str(tiny_student_dir), "--prompt", "a red fox", "--seed", "12", "--steps", "2",
          "--guidance", "6.0", "--out", str(tmp_path), "--set", f"model.cache_dir={model_cache}"])
    expected = np.array(Image.open(tmp_path / "steps-2" / "000.png"))
    got = png(first["images"][1])
    assert got.shape == (32, 32, 3)
    assert np.abs(got.astype(int) - expected).max() <= 1          # batched with others: float order may differ


def test_v2_open_inference_protocol(server):
    body = {"id": "req-1", "inputs": [
        {"name": "prompt", "datatype": "BYTES", "shape": [2], "data": ["a cat", "a dog"]},
        {"name": "steps", "datatype": "INT32", "shape": [1], "data": [1]},
        {"name": "seed", "datatype": "INT64", "shape": [2], "data": [3, 9]},
        {"name": "height", "datatype": "INT32", "shape": [1], "data": [48]}]}
    res = requests.post(f"{server}/v2/models/rglcd-student/infer", json=body, timeout=120)
    assert res.status_code == 200, res.text
    out = {o["name"]: o for o in res.json()["outputs"]}
    assert res.json()["id"] == "req-1"
    assert out["seed"]["data"] == [3, 9] and out["prompt_index"]["data"] == [0, 1]
    assert out["image"]["shape"] == [2] and png(out["image"]["data"][0]).shape == (48, 32, 3)
    meta = requests.get(f"{server}/v2/models/rglcd-student", timeout=10).json()
    assert meta["name"] == "rglcd-student" and [t["name"] for t in meta["outputs"]] == ["image", "seed", "prompt_index"]
    assert {t["name"]: t["datatype"] for t in meta["inputs"]}["prompt"] == "BYTES"
    assert requests.get(f"{server}/v2/health/live", timeout=10).json() == {"live": True}


def test_concurrent_requests_are_batched(server):
    before = metric(server, "rglcd_batch_size_count"), metric(server, "rglcd_images_generated_total")
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda i: v1(server, {"prompt": f"prompt {i}", "seed": i, "steps": 2}), range(6)))
    assert [r.status_code for r in results] == [200] * 6
    assert [r.json()["predictions"][0]["seeds"] for r in results] == [[i] for i in range(6)]
    batches = metric(server, "rglcd_batch_size_count") - before[0]
    images = metric(server, "rglcd_images_generated_total") - before[1]
    assert images == 6 and batches < 6                       # some batch held more than one request's image
    assert metric(server, 'rglcd_request_latency_seconds_count{protocol="v1",status="ok"}') >= 6


@pytest.mark.parametrize("instance, message", [
    ({"prompt": ""}, "prompt: '' is not allowed"),
    ({"prompt": "a", "steps": 9}, "steps: 9 is out of range; allowed: 1..8"),
    ({"prompt": "a", "steps": 0}, "steps: 0 is out of range"),
    ({"prompt": "a", "height": 30}, "height: 30 is not a multiple of 8"),
    ({"prompt": "a", "width": 128}, "width: 128 is out of range; allowed: 8..64"),
    ({"prompt": "a", "num_images": 9}, "num_images: 9 is out of range; allowed: 1..8"),
])
def test_bad_requests_get_400_with_a_message(server, instance, message):
    res = v1(server, instance)
    assert res.status_code == 400 and message in res.json()["error"], res.text


def test_too_many_images_in_one_call_and_malformed_bodies_get_400(server):
    res = v1(server, *[{"prompt": "a", "num_images": 3}] * 3)
    assert res.status_code == 400 and "9 images requested in one call; allowed: at most 8" in res.json()["error"]
    res = requests.post(f"{server}/v1/models/rglcd-student:predict", json={"instances": []}, timeout=10)
    assert res.status_code == 400 and "instances" in res.json()["error"]
    res = requests.post(f"{server}/v2/models/rglcd-student/infer", timeout=10, json={"inputs": [
        {"name": "steps", "datatype": "INT32", "shape": [1], "data": [2]}]})
    assert res.status_code == 400 and '"prompt"' in res.json()["error"]


def test_survives_a_client_that_disconnects_mid_request(server):
    host, port = server.removeprefix("http://").split(":")
    body = json.dumps({"instances": [{"prompt": "gone", "steps": 8, "num_images": 8}]}).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/models/rglcd-student:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        time.sleep(0.2)                                        # the request is queued or generating
    res = v1(server, {"prompt": "still here", "steps": 1})
    assert res.status_code == 200 and res.json()["predictions"][0]["images"]
    assert requests.get(f"{server}/v2/health/ready", timeout=10).json()["ready"] is True


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests_then_exits_cleanly(tiny_student_dir, model_cache, tmp_path):
    proc, url = start_server(tiny_student_dir, model_cache, tmp_path / "server.log", "serve.max_wait_ms=1500")
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(v1, url, {"prompt": "in flight", "steps": 8, "num_images": 4})
        time.sleep(0.5)                                         # accepted, waiting in the batcher
        proc.send_signal(signal.SIGTERM)
        res = pending.result()
    assert res.status_code == 200 and len(res.json()["predictions"][0]["images"]) == 4
    assert proc.wait(timeout=60) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/v2/health/live", timeout=5)


def test_evaluation_reports_the_serving_cost_next_to_the_teacher(tiny_student_dir, tiny_cfg):
    from rglcd.evaluate.serving import serving_cost, serving_summary
    from rglcd.sample import load_sampling_model

    cfg = tiny_cfg("serve.max_batch_size=4", "eval.latency_repeats=1", "eval.teacher_steps=50")
    student = load_sampling_model(str(tiny_student_dir), cfg.model.cache_dir)
    teacher = load_sampling_model("tiny:epsilon", cfg.model.cache_dir)
    cost = serving_cost(student, teacher, cfg)
    assert set(cost["batches"]) == {"1", "4"} and cost["student_steps"] == 4 and cost["teacher_steps"] == 50
    for batch, row in cost["batches"].items():
        assert row["student_images_per_s"] == pytest.approx(int(batch) / row["student_latency_s"])
        assert row["speedup"] == pytest.approx(row["student_images_per_s"] / row["teacher_images_per_s"])
        assert row["speedup"] > 1                     # 4 LCM steps beat 50 DDIM steps with CFG
    flat = serving_summary(cost)
    assert set(flat) == {f"{k}_b{b}{s}" for b in (1, 4) for k, s in (("served_latency", "_s"),
                         ("served_images_per_s", ""), ("teacher_images_per_s", ""), ("served_speedup", ""))}


def test_serve_refuses_what_it_cannot_serve(tiny_teacher_dir, tiny_cfg, capsys):
    from rglcd.cli import main

    cache = tiny_cfg().model.cache_dir
    assert main(["serve", "--model", str(tiny_teacher_dir("epsilon")), "--set", f"model.cache_dir={cache}"]) == 1
    assert "not a teacher" in capsys.readouterr().err
    assert main(["serve", "--model", "models:/rglcd-student", "--set", "serve.warmup=false"]) == 1
    assert "models:/NAME@ALIAS or models:/NAME/VERSION" in capsys.readouterr().err


def test_batcher_groups_up_to_max_batch_and_isolates_failures():
    import asyncio

    from rglcd.serve.batcher import Batcher

    sizes = []

    def run(items):
        if "boom" in items:
            raise RuntimeError("generation failed")
        return [f"img-{i}" for i in items]

    async def main():
        batcher = Batcher(run, max_batch=3, max_wait_s=0.2, on_batch=lambda size, seconds: sizes.append(size))
        results = await asyncio.gather(*[batcher.submit([i, i + 10]) for i in range(3)])   # 6 images
        with pytest.raises(RuntimeError, match="generation failed"):
            await batcher.submit(["boom"])
        late = await batcher.submit([99])                      # the worker survived the failure
        batcher.close()
        return results, late

    results, late = asyncio.run(main())
    assert results == [[f"img-{i}", f"img-{i + 10}"] for i in range(3)] and late == ["img-99"]
    assert sizes[:2] == [3, 3] and sizes[2:] == [1]           # 6 images in two full batches; failures not counted
