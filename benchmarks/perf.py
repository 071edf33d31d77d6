"""Every performance figure in one run: sampling latency ratios, then training-step ratios.

    python benchmarks/perf.py                                # tiny-random preset on CPU
    python benchmarks/perf.py --device cuda --json perf.json # SD 2.1-base shapes, random weights, on a GPU

Runs `benchmarks/latency.py` (student LCM 1/2/4/8 steps vs teacher 50-step DDIM + CFG; text encode and
VAE decode included; both compiled alike with `--compile`) and `benchmarks/train_step.py` (LCD only /
+ precomputed latents / + direct reward / + LRM, fine-tuned every step and every K steps) at the same
model size, with FLOPs per training step, achieved TFLOP/s and the fraction of the device's dense peak
for the run's dtype (MFU). Prints both tables again as one summary, so a single run on a lent GPU gathers
every number. All ratios are against a baseline measured in the same process. With `--json FILE` the
parts write FILE.latency.json and FILE.train.json as they finish, so a time limit keeps what was measured.
"""
from __future__ import annotations

import argparse
import gc
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
    parser.add_argument("--batch", type=int, default=None,
                        help="training batch per GPU (default: tiny 4, sd21-base the preset's; latency runs at batch 1)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per variant")
    parser.add_argument("--repeats", type=int, default=3, help="timed sampling calls per model")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--compile", default=None, help="sampling compile mode (default auto) and, unless 'none', "
                        "train.compile for the training steps (default: on for CUDA, off on CPU)")
    parser.add_argument("--variants", default=None, help="train_step.py variants (default: its own list)")
    parser.add_argument("--lrm-every", type=int, default=1, help="lrm.finetune_every of the lcd+lrm variant")
    parser.add_argument("--gradient-checkpointing", default="auto", choices=["on", "off", "auto"])
    parser.add_argument("--check-precision", action="store_true", help="latency.py --check-precision")
    parser.add_argument("--json", metavar="FILE", help="also write every figure here")
    args = parser.parse_args(argv)
    device = str(resolve_device(args.device))
    size = args.size or ("sd21-base" if device.startswith("cuda") else "tiny")
    threads = ["--threads", str(args.threads)] if args.threads else []
    mode = args.compile or "auto"
    train_compile = mode != "none" and (args.compile is not None or device.startswith("cuda"))
    part = (lambda name: ["--json", f"{args.json}.{name}.json"]) if args.json else (lambda name: [])
    started = time.perf_counter()
    lat = latency.main(["--device", device, "--size", size, "--repeats", str(args.repeats), "--compile", mode,
                        *(["--check-precision"] if args.check_precision else []), *threads, *part("latency")])
    release_compiled()
    train = train_step.main(["--device", device, "--size", size, *(["--batch", str(args.batch)] if args.batch else []),
                             "--steps", str(args.steps), "--warmup", "2", "--lrm-every", str(args.lrm_every),
                             "--gradient-checkpointing", args.gradient_checkpointing,
                             "--compile" if train_compile else "--no-compile",
                             "--reuse-student" if device.startswith("cuda") else "--no-reuse-student",
                             *(["--variants", args.variants] if args.variants else []), *threads, *part("train")])
    summary = summarise(lat, train)
    print(f"\n# summary: {size} on {lat['device_name']} ({time.perf_counter() - started:.0f} s)")
    for key, value in summary.items():
        print(f"{key:<44}{value:>8.2f}")
    result = {"size": size, "latency": lat, "train_step": train, "summary": summary,
              "wall_s": time.perf_counter() - started, "torch": torch.__version__}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


def release_compiled() -> None:
    """Drop the sampling models' compiled code and CUDA-graph memory before the training measurements."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def summarise(lat: dict, train: list[dict]) -> dict[str, float]:
    """Speed-up of each student step count over the teacher; time and memory of each step variant / LCD."""
    out = {f"sampling speed-up, {s} step(s)": v for s, v in lat["speedup"].items()}
    ok = [r for r in train if "error" not in r]
    base = next((r for r in ok if r["variant"] == "lcd"), None)
    for r in ok if base else []:
        out[f"train step time, {r['variant']} / lcd"] = r["step_s"] / base["step_s"]
        if base["peak_bytes"] > 0:
            out[f"train step memory, {r['variant']} / lcd"] = r["peak_bytes"] / base["peak_bytes"]
    for r in ok:
        if r.get("tflops_per_s"):
            out[f"train step TFLOP/s, {r['variant']}"] = r["tflops_per_s"]
        if r.get("mfu"):
            out[f"train step MFU, {r['variant']}"] = r["mfu"]
    return out


if __name__ == "__main__":
    main()
