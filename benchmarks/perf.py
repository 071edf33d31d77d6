"""Every performance figure in one run: sampling latency ratios, then training-step ratios.

    python benchmarks/perf.py                                # tiny preset on CPU
    python benchmarks/perf.py --device cuda --json perf.json # SD 2.1-base shapes, random weights, on a GPU

Runs `benchmarks/latency.py` (student LCM 1/2/4/8 steps vs teacher 50-step DDIM + CFG; text encode and
VAE decode included) and `benchmarks/train_step.py` (LCD only / + precomputed latents / + direct reward /
+ LRM) at the same model size, then prints both tables again as one summary, so a single run on a lent
GPU gathers every number. All ratios are against a baseline measured in the same process.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import latency  # noqa: E402  (benchmarks/latency.py)
import train_step  # noqa: E402  (benchmarks/train_step.py)

from rglcd.devices import DEVICE_HELP, resolve_device  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--size", choices=["tiny", "sd21-base"], help="default: tiny on CPU, sd21-base on CUDA")
    parser.add_argument("--batch", type=int, default=4, help="training batch (latency runs at batch 1)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per variant")
    parser.add_argument("--repeats", type=int, default=3, help="timed sampling calls per model")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", metavar="FILE", help="also write every figure here")
    args = parser.parse_args(argv)
    device = str(resolve_device(args.device))
    size = args.size or ("sd21-base" if device.startswith("cuda") else "tiny")
    threads = ["--threads", str(args.threads)] if args.threads else []
    started = time.perf_counter()
    lat = latency.main(["--device", device, "--size", size, "--repeats", str(args.repeats), *threads])
    train = train_step.main(["--device", device, "--size", size, "--batch", str(args.batch),
                             "--steps", str(args.steps), "--warmup", "2", *threads])
    summary = summarise(lat, train)
    print(f"\n# summary: {size} on {lat['device_name']} ({time.perf_counter() - started:.0f} s)")
    for key, value in summary.items():
        print(f"{key:<40}{value:>8.2f}")
    result = {"size": size, "latency": lat, "train_step": train, "summary": summary,
              "wall_s": time.perf_counter() - started, "torch": torch.__version__}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


def summarise(lat: dict, train: list[dict]) -> dict[str, float]:
    """Speed-up of each student step count over the teacher; time and memory of each step variant / LCD."""
    out = {f"sampling speed-up, {s} step(s)": v for s, v in lat["speedup"].items()}
    base = next(r for r in train if r["variant"] == "lcd")
    for r in train:
        out[f"train step time, {r['variant']} / lcd"] = r["step_s"] / base["step_s"]
        if base["peak_bytes"] > 0:
            out[f"train step memory, {r['variant']} / lcd"] = r["peak_bytes"] / base["peak_bytes"]
    return out


if __name__ == "__main__":
    main()
