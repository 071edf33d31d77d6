"""Cost of one RG-LCD training step, per variant, as ratios to the plain LCD step measured in the same run.

    python benchmarks/train_step.py                                   # tiny-random preset, CPU
    python benchmarks/train_step.py --device cuda --size sd21-base    # SD 2.1-base shapes, random weights

Variants (each runs the real loop step, `rglcd.train.loop.train_step`: forward, backward, clip, AdamW,
EMA and, with an LRM, its fine-tuning step):
  lcd          plain LCD from pixels (VAE encode in the step)
  lcd+latents  plain LCD from precomputed VAE moments (the speed-up of `data.precompute_latents`)
  lcd+direct   LCD + HPS-shaped expert on the decoded prediction (VAE decode with gradients)
  lcd+lrm      LCD + LRM reward on latents + LRM fine-tuning against the expert (3 decodes, no grad)
  lcd+lrm/K    the same with the LRM fine-tuned every K steps (lrm.finetune_every; time K or more steps)
  lcd+direct/N the direct reward on the first N examples of the batch only (reward.batch_size)

`--size sd21-base` builds SD 2.1-base's UNet, VAE and text encoder from the config dicts below and an
open_clip ViT-H-14 (the HPSv2.1 architecture), all randomly initialised: no download. Printed: mean
step time over the timed steps and peak memory (CUDA: max allocated over the variant, models included;
CPU: peak RSS growth of a forked child that builds and runs the variant, sampled every 2 ms).

`--compile` compiles the student, target and teacher UNets (`train.compile`); `--gradient-checkpointing
auto` lets `rglcd.train.fast` decide from the measured free memory. After timing, one more step runs
eagerly under torch's FLOP counter (`torch.utils.flop_counter.FlopCounterMode`: matmuls, convolutions,
attention; a checkpointed forward is counted twice): FLOPs per step, achieved TFLOP/s = FLOPs / mean step
time, and the fraction of the device's dense peak for the run's dtype (`peak_tflops`).
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

SD21_BASE_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True, norm_num_groups=32,
    norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True, freq_shift=0, downsample_padding=1)
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    act_fn="silu", sample_size=512, scaling_factor=0.18215)
SD21_TEXT = dict(  # OpenCLIP ViT-H-14's text tower as SD 2.x ships it (23 of its 24 layers)
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=512,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    prediction_type="epsilon", clip_sample=False)
VARIANTS = ("lcd", "lcd+latents", "lcd+direct", "lcd+lrm")
# Dense (no sparsity) tensor-core peaks in TFLOP/s from NVIDIA's H100/H200 SXM datasheets (the H200 has the
# H100 SXM's compute); "no" is plain fp32 without tensor cores. Other devices: pass --peak-tflops.
PEAK_TFLOPS = {"H100": {"bf16": 989.4, "fp16": 989.4, "no": 66.9}, "H200": {"bf16": 989.4, "fp16": 989.4, "no": 66.9}}


def peak_tflops(device: torch.device, precision: str) -> float | None:
    """The device's dense peak for `precision` from PEAK_TFLOPS (None when the device is not listed)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peaks.get(precision) for key, peaks in PEAK_TFLOPS.items() if key in name), None)


# ---------------------------------------------------------------- models

def sd21_base_teacher(device: torch.device, dtype: torch.dtype):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from rglcd.models import Teacher, write_clip_tokenizer

    folder = Path(tempfile.mkdtemp(prefix="rglcd-bench-"))
    tokenizer = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(folder / "tokenizer")))
    with torch.device(device):  # random init on the device: fast on a GPU
        parts = [UNet2DConditionModel(**SD21_BASE_UNET), AutoencoderKL(**SD_VAE),
                 CLIPTextModel(CLIPTextConfig(**SD21_TEXT))]
    unet, vae, text = (m.to(device, dtype).requires_grad_(False).eval() for m in parts)
    return Teacher(unet, vae, text, tokenizer, DDPMScheduler(**SD_SCHEDULER), "epsilon", folder)


def vit_h_expert(device: torch.device, dtype: torch.dtype):
    """open_clip ViT-H-14 with random weights, HPS letterbox preprocessing (the HPSv2.1 architecture)."""
    import open_clip

    from rglcd.rewards import freeze
    from rglcd.rewards.openclip import OpenClipReward, create_model

    with torch.device(device):
        model = create_model("ViT-H-14").to(device, dtype)
    return freeze(OpenClipReward(model, open_clip.get_tokenizer("ViT-H-14"), "letterbox", False, "hpsv2.1-random"))


def build_models(args, cfg, device: torch.device, dtype: torch.dtype):
    """(teacher, expert, lrm factory) for the chosen size."""
    from rglcd.lrm import new_lrm

    if args.size == "tiny":
        from rglcd.models import load_teacher
        from rglcd.rewards import load_reward

        teacher = load_teacher("tiny:epsilon", cfg.model.cache_dir, dtype=dtype, device=device)
        expert = load_reward("hpsv2.1", "tiny", device=device, dtype=dtype, cache_dir=cfg.model.cache_dir)
    else:
        teacher, expert = sd21_base_teacher(device, dtype), vit_h_expert(device, dtype)
    size = cfg.model.resolution // teacher.vae_scale_factor
    return teacher, expert, lambda: new_lrm(cfg.lrm, size, {"resolution": cfg.model.resolution}).to(device)


# ---------------------------------------------------------------- one variant

def make_run(cfg, teacher, guidance):
    from rglcd.models import make_target
    from rglcd.train.checkpoint import TrainState
    from rglcd.train.fast import prepare_unets
    from rglcd.train.loop import Run, make_accelerator
    from rglcd.optim import make_optimizer, make_scheduler, trainable
    from rglcd.train.setup import build_student

    acc = make_accelerator(cfg)
    student = build_student(teacher.unet, cfg.train, cfg.model.time_cond_proj_dim).to(acc.device)
    target = make_target(student)
    execution = prepare_unets(cfg, teacher, student, target, acc.device)  # as `build_run` does
    optimizer = make_optimizer(trainable(student), cfg.train)
    scheduler = make_scheduler(optimizer, cfg.train)
    student, optimizer, scheduler = acc.prepare(student, optimizer, scheduler)
    return Run(cfg, acc, Path(tempfile.mkdtemp()), teacher, student, target, optimizer, scheduler, guidance,
               TrainState(), trainable(acc.unwrap_model(student)), {}, execution)


def batches(cfg, teacher, latents: bool, device: torch.device):
    """Endless synthetic batches (fixed content, fresh indices), as pixels or as precomputed VAE moments."""
    g = torch.Generator().manual_seed(0)
    b, res = cfg.train.batch_size, cfg.model.resolution
    pixels = torch.rand((b, 3, res, res), generator=g) * 2 - 1
    key, data = "pixel_values", pixels
    if latents:
        with torch.no_grad():
            vae = teacher.vae
            data = vae.encode(pixels.to(device, vae.dtype)).latent_dist.parameters.float().cpu()
        key = "latent_moments"
    captions = ["a photo of a cat sitting on a red sofa, highly detailed"] * b
    step = 0
    while True:
        yield {key: data.to(device), "captions": captions, "index": torch.arange(step * b, (step + 1) * b)}
        step += 1


class PeakRSS:
    """Peak resident-set growth of this process while the block runs (sampled every 2 ms)."""

    def __enter__(self):
        import psutil

        self.proc, self.base, self.peak, self.stop = psutil.Process(), 0, 0, False
        self.base = self.peak = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()

    @property
    def grown(self) -> int:
        return self.peak - self.base


def count_flops(run, data) -> int:
    """FLOPs of one loop step, counted eagerly (compiled modules run eager here) by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    from rglcd.train.loop import train_step

    with torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False) as counter:
        train_step(run, data)
    return counter.get_total_flops()


def measure(variant: str, args, cfg, teacher, expert, make_lrm, device: torch.device, shared: dict) -> dict:
    """`measure_variant`, with an out-of-memory error recorded as the variant's result (the next one still runs)."""
    try:
        return measure_variant(variant, args, cfg, teacher, expert, make_lrm, device, shared)
    except torch.cuda.OutOfMemoryError as err:
        if "run" in shared:
            shared["run"].optimizer.zero_grad(set_to_none=True)
        return {"variant": variant, "error": f"out of memory: {str(err)[:200]}"}


def measure_variant(variant: str, args, cfg, teacher, expert, make_lrm, device: torch.device, shared: dict) -> dict:
    """Build the variant's student/target/optimizer (and LRM), warm up, time `args.steps` loop steps, count FLOPs.

    With `--reuse-student` the first variant's run (student, target, optimizer: compiled once) serves every
    variant and only the reward side changes; otherwise each variant builds its own.
    """
    from rglcd.lrm import make_lrm_optimizer
    from rglcd.train.guidance import Guidance
    from rglcd.train.loop import train_step

    cuda = device.type == "cuda"
    variant, _, number = variant.partition("/")
    cfg.lrm.finetune_every = int(number) if number and variant == "lcd+lrm" else args.lrm_every
    cfg.reward.batch_size = int(number) if number and variant == "lcd+direct" else None
    gc.collect()  # the previous variant's student, target and optimizer are gone before measuring
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        if variant == "lcd+direct":
            guidance = Guidance(student_reward=expert)
        elif variant == "lcd+lrm":
            lrm = make_lrm()
            guidance = Guidance(student_reward=lrm, expert=expert, lrm=lrm, lrm_optimizer=make_lrm_optimizer(lrm, cfg))
        else:
            guidance = Guidance()
        cfg.reward.guidance = "lrm" if variant == "lcd+lrm" else "direct"
        run = shared.get("run") or make_run(cfg, teacher, guidance)
        run.guidance = guidance
        if args.reuse_student:
            shared["run"] = run
        data = batches(cfg, teacher, variant == "lcd+latents", device)
        warm = []
        for _ in range(args.warmup):
            start = time.perf_counter()
            train_step(run, data)
            if cuda:
                torch.cuda.synchronize()
            warm.append(time.perf_counter() - start)
        times = []
        for _ in range(args.steps):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            train_step(run, data)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else rss.grown
    step_s = sum(times) / len(times)
    flops = count_flops(run, data) if args.flops else None
    peak_tf = args.peak_tflops or peak_tflops(device, cfg.train.mixed_precision)
    achieved = flops / step_s / 1e12 if flops else None
    name = variant + (f"/{number}" if number else "")
    return {"variant": name, "step_s": step_s, "min_step_s": min(times), "peak_bytes": peak, "warmup_s": warm,
            "flops": flops, "tflops_per_s": achieved, "peak_tflops": peak_tf,
            "mfu": achieved / peak_tf if achieved and peak_tf else None, "execution": run.execution}


def measure_in_child(variant: str, argv: list[str]) -> dict:
    """CPU: run one variant in a fresh interpreter, so its RSS growth is its own (fork would deadlock OpenMP)."""
    import subprocess

    cmd = [sys.executable, __file__, *argv, "--variants", variant, "--child"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"benchmark child for {variant} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# ---------------------------------------------------------------- main

def config_for(args):
    from rglcd.config import load_config

    if args.size == "tiny":
        overrides = ["reward.name=hpsv2.1", "reward.weights=tiny", f"train.batch_size={args.batch or 4}"]
        cfg = load_config("tiny-random", overrides=overrides + [f"model.cache_dir={args.cache_dir}"])
    else:
        overrides = [f"train.mixed_precision={args.precision}"] + ([f"train.batch_size={args.batch}"] if args.batch else [])
        cfg = load_config("sd21-base-hpsv21-lrm", overrides=overrides)
    cfg.train.gradient_checkpointing = {"on": True, "off": False, "auto": "auto"}[args.gradient_checkpointing]
    cfg.train.compile = args.compile
    cfg.lrm.batch_size = min(cfg.lrm.batch_size, cfg.train.batch_size)
    return cfg


def main(argv: list[str] | None = None) -> list[dict]:
    from rglcd.devices import DEVICE_HELP, resolve_device

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--size", default="tiny", choices=["tiny", "sd21-base"])
    parser.add_argument("--batch", type=int, default=None, help="per-step batch (default: tiny 4, sd21-base the preset's)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--precision", default="bf16", choices=["no", "bf16", "fp16"], help="sd21-base on CUDA")
    parser.add_argument("--gradient-checkpointing", default="auto", choices=["on", "off", "auto"],
                        help="auto: only when the measured free memory requires it (rglcd.train.fast)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                        help="torch.compile the student, target and teacher UNets (train.compile)")
    parser.add_argument("--reuse-student", action=argparse.BooleanOptionalAction, default=False,
                        help="one student/target/optimizer for all variants (compiled once; CUDA, no child processes)")
    parser.add_argument("--lrm-every", type=int, default=1, help="lrm.finetune_every of the lcd+lrm variant")
    parser.add_argument("--flops", action=argparse.BooleanOptionalAction, default=True,
                        help="count FLOPs of one extra (eager) step per variant")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device peak TFLOP/s for the MFU (default: PEAK_TFLOPS by device name; none on CPU)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--cache-dir", default="~/.cache/rglcd")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cpu":
        args.precision = "no"
    cfg = config_for(args)
    variants = args.variants.split(",")
    if device.type == "cpu" and not args.child:  # one fresh process per variant (memory isolation)
        rows = [measure_in_child(v, list(argv if argv is not None else sys.argv[1:])) for v in variants]
    else:
        from rglcd.train.setup import weight_dtype

        torch.manual_seed(0)
        models = build_models(args, cfg, device, weight_dtype(cfg.train.mixed_precision, device))
        rows, shared = [], {}
        for v in variants:
            rows.append(measure(v, args, cfg, *models, device, shared))
            print("measured " + json.dumps(rows[-1]), flush=True)  # partial results survive a time limit
            if args.json:
                Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "partial": True}, indent=2))
    if args.child:
        print("RESULT " + json.dumps(rows[0]))
        return rows
    report(rows, args, cfg, device)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return rows


def report(rows: list[dict], args, cfg, device: torch.device) -> None:
    ok = [r for r in rows if "error" not in r]
    base = next((r for r in ok if r["variant"] == "lcd"), None)
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# rglcd train step, size={args.size}, batch={cfg.train.batch_size}, res={cfg.model.resolution}, "
          f"precision={cfg.train.mixed_precision}, grad-ckpt={cfg.train.gradient_checkpointing}, "
          f"compile={cfg.train.compile}, device={what}, mean of {args.steps} steps after {args.warmup} warm-up")
    print(f"{'variant':<13} {'step s':>9} {'x lcd':>7} {'peak MiB':>10} {'x lcd':>7} {'TFLOP':>8} {'TFLOP/s':>8} {'MFU':>6}")
    nan = float("nan")
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:<13} {r['error'][:80]}")
            continue
        time_x = r["step_s"] / base["step_s"] if base else nan
        mem_x = r["peak_bytes"] / base["peak_bytes"] if base and base["peak_bytes"] > 0 else nan
        tflop = (r["flops"] or nan) / 1e12
        print(f"{r['variant']:<13} {r['step_s']:>9.4f} {time_x:>7.2f} {r['peak_bytes'] / 2**20:>10.1f} {mem_x:>7.2f} "
              f"{tflop:>8.2f} {r['tflops_per_s'] or nan:>8.1f} {r['mfu'] or nan:>6.1%}")
    if ok and ok[0].get("peak_tflops"):
        print(f"MFU against a dense peak of {ok[0]['peak_tflops']} TFLOP/s ({cfg.train.mixed_precision}; "
              f"benchmarks/train_step.py PEAK_TFLOPS)")
    lat = next((r for r in ok if r["variant"] == "lcd+latents"), None)
    if lat and base:
        print(f"precomputed latents: LCD step {base['step_s'] / lat['step_s']:.2f}x faster than encoding on the fly")


if __name__ == "__main__":
    main()
