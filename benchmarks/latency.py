"""Latency benchmark: student (LCM, 1/2/4/8 steps) vs teacher (50-step DDIM + CFG), seconds per image.

    python benchmarks/latency.py                       # tiny random SD on CPU (32 px)
    python benchmarks/latency.py --device cuda         # SD 2.1-base sizes (865M UNet, 512 px), random weights, fp16

Random weights time exactly what real ones would (same shapes, same kernels); no download is needed.
Timing: `rglcd.evaluate.latency_report` (text encoding + UNet steps + VAE decode, one warm-up call,
median of the timed calls, CUDA synchronised). Prints a table and the speedup ratios; `--json` writes them.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rglcd.devices import DEVICE_HELP, resolve_device  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def sd21_base_parts():
    """UNet, VAE and text encoder with stabilityai/stable-diffusion-2-1-base's configs, random init."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, use_linear_projection=True,
        time_cond_proj_dim=None)  # explicit, as the tiny factory: a defaulted key is dropped by make_student's from_config
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2, sample_size=512, scaling_factor=0.18215)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=512, bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407))
    return unet, vae, text_encoder, 512


def tiny_parts():
    from rglcd.models.tiny import TINY_RESOLUTION, tiny_text_encoder, tiny_unet, tiny_vae

    return tiny_unet(), tiny_vae(), tiny_text_encoder(), TINY_RESOLUTION


def build(size: str, device: torch.device, dtype: torch.dtype, time_cond_proj_dim: int = 256):
    """(student, teacher) SamplingModels sharing VAE, text encoder and tokenizer, like an exported student."""
    from transformers import CLIPTokenizer

    from rglcd.models import make_student, write_clip_tokenizer
    from rglcd.models.tiny import sd_scheduler
    from rglcd.sample import SamplingModel

    torch.manual_seed(0)
    unet, vae, text_encoder, resolution = sd21_base_parts() if size == "sd21-base" else tiny_parts()
    tokenizer = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(tempfile.mkdtemp(prefix="rglcd-tok-"))))
    student_unet = make_student(unet, time_cond_proj_dim)
    for module in (unet, student_unet, vae, text_encoder):
        module.requires_grad_(False).eval().to(device, dtype)
    scheduler = dict(sd_scheduler("epsilon").config)
    parts = dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler_config=scheduler)
    return SamplingModel(unet=student_unet, **parts), SamplingModel(unet=unet, **parts), resolution


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--size", choices=["tiny", "sd21-base"], help="model sizes (default: tiny on CPU, sd21-base on CUDA)")
    parser.add_argument("--dtype", choices=list(DTYPES), help="default: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8], help="student LCM steps")
    parser.add_argument("--teacher-steps", type=int, default=50, help="teacher DDIM steps (CFG doubles the batch)")
    parser.add_argument("--batch", type=int, default=1, help="images per call (same for both)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up (median)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    args = parser.parse_args(argv)

    from rglcd.evaluate import latency_report

    device = resolve_device(args.device)
    size = args.size or ("sd21-base" if device.type == "cuda" else "tiny")
    dtype = DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    student, teacher, resolution = build(size, device, dtype)
    built = time.perf_counter() - t0
    report = latency_report(student, teacher, args.steps, args.teacher_steps, batch=args.batch,
                            resolution=resolution, repeats=args.repeats)
    report.update(model_sizes=size, unet_params=sum(p.numel() for p in teacher.unet.parameters()),
                  build_s=built, torch=torch.__version__)
    print(f"{size} at {resolution} px, {report['device_name']} {report['dtype']}, batch {args.batch}, "
          f"median of {args.repeats} after 1 warm-up; UNet {report['unet_params'] / 1e6:.1f}M params")
    t = report["teacher"]["seconds_per_image"]
    print(f"{'model':<28}{'s/image':>12}{'speedup':>10}")
    print(f"{'teacher DDIM ' + str(args.teacher_steps) + ' + CFG':<28}{t:>12.4f}{1.0:>10.2f}")
    for s in args.steps:
        print(f"{'student LCM ' + str(s):<28}{report['student'][str(s)]['seconds_per_image']:>12.4f}"
              f"{report['speedup'][str(s)]:>10.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
