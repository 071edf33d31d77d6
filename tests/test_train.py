"""rglcd.train: the loop, exact resume, SIGTERM, the non-finite guard, LoRA, outputs, end to end."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rglcd.train import NonFiniteLoss, list_checkpoints, train
from rglcd.train.checkpoint import check_compatible
from rglcd.train.metrics import read_metrics_jsonl

FAST = ["reward.name=none", "reward.guidance=direct", "train.batch_size=2", "train.validation_every=1000",
        "train.max_steps=4", "train.checkpoint_every=2", "data.shuffle_buffer=8", "train.seed=3"]
DATA = "builtin:photos:12"


class Crash(RuntimeError):
    pass


def _crash_at(step: int, micro: int):
    """A hook that kills the run (as a crash would) after micro-batch `micro` of step `step` (0-based)."""
    def hook(run, step_now, micro_now):
        if (step_now, micro_now) == (step, micro):
            raise Crash(f"killed at step {step} micro-batch {micro}")
    return {"micro_batch": lambda run, step, micro: hook(run, step, micro)}


def _state(ckpt: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint: student, EMA target, optimizer (and LRM + its optimizer)."""
    tensors = {f"student.{k}": v for k, v in load_file(str(ckpt / "model.safetensors")).items()}
    for extra in sorted(ckpt.glob("custom_checkpoint_*.pkl")) + sorted(ckpt.glob("optimizer*.bin")):
        state = torch.load(extra, weights_only=False)
        flat = state if isinstance(state, dict) else {}
        for key, value in _flatten(flat, extra.name):
            tensors[key] = value if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    return tensors


def _flatten(tree, prefix):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, f"{prefix}.{k}")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _flatten(v, f"{prefix}.{i}")
    elif isinstance(tree, (torch.Tensor, int, float)) and not isinstance(tree, bool):
        yield prefix, tree


def _assert_identical(a: Path, b: Path) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys() and len(sa) > 10
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, different[:5]


def _run_with_crashes(tiny_cfg, tmp_path, name, crashes, *overrides, data=DATA, **kw):
    cfg = tiny_cfg(*FAST, *overrides, f"train.output_dir={tmp_path / name}")
    for step, micro in crashes:
        with pytest.raises(Crash):
            train(cfg, data, hooks=_crash_at(step, micro), **kw)
    return train(cfg, data, **kw)


# ---------------------------------------------------------------- resume

def test_resume_after_a_crash_mid_accumulation_is_bit_exact(tiny_cfg, tmp_path):
    over = ["train.grad_accum=2", "train.batch_size=1", "train.max_steps=3", "train.checkpoint_every=1"]
    ref = _run_with_crashes(tiny_cfg, tmp_path, "ref", [], *over)
    res = _run_with_crashes(tiny_cfg, tmp_path, "res", [(2, 0)], *over)  # in step 3, after micro-batch 0
    assert ref.steps == res.steps == 3 and res.resumed_from.name == "step-00000002"
    _assert_identical(ref.checkpoint, res.checkpoint)
    assert [r["step"] for r in read_metrics_jsonl(res.output_dir / "metrics.jsonl")] == [1, 2, 3]
    assert [r["lcd_loss"] for r in read_metrics_jsonl(res.output_dir / "metrics.jsonl")] == \
           [r["lcd_loss"] for r in read_metrics_jsonl(ref.output_dir / "metrics.jsonl")]
    assert [s for s, _ in list_checkpoints(res.output_dir)] == [2, 3]            # keep_checkpoints=2
    assert not list((res.output_dir / "checkpoints").glob(".tmp-*"))


@pytest.mark.slow
def test_resume_at_several_kill_points_with_lrm_fine_tuning_is_bit_exact(tiny_cfg, tmp_path, tiny_lrm):
    over = ["reward.name=hpsv2.1", "reward.guidance=lrm", "reward.weights=tiny", "train.grad_accum=2",
            "train.max_steps=5", "lrm.batch_size=2"]
    ref = _run_with_crashes(tiny_cfg, tmp_path, "ref", [], *over, lrm_checkpoint=tiny_lrm)
    # before the first checkpoint, right after one, and in the last micro-batch of a step
    res = _run_with_crashes(tiny_cfg, tmp_path, "res", [(1, 0), (2, 1), (4, 1)], *over, lrm_checkpoint=tiny_lrm)
    _assert_identical(ref.checkpoint, res.checkpoint)
    assert any(k.startswith("custom_checkpoint_2") for k in _state(res.checkpoint))   # the LRM is in it
    records = read_metrics_jsonl(res.output_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5] and all(r["lrm_loss"] is not None for r in records)
    saved = json.loads((res.output_dir / "lrm" / "lrm_config.json").read_text())
    assert saved["steps"] == 5 and "optimizer" in saved


def test_resume_needs_the_same_number_of_processes(tmp_path):
    (tmp_path / "checkpoint.json").write_text(json.dumps({"step": 2, "num_processes": 2}))
    with pytest.raises(ValueError, match="written by 2 processes, this run has 1"):
        check_compatible(tmp_path, 1)


def test_sigterm_checkpoints_then_stops_and_the_run_resumes(tiny_cfg, tmp_path):
    cfg = tiny_cfg(*FAST)
    hooks = {"step": lambda run, step, record: step == 1 and os.kill(os.getpid(), signal.SIGTERM)}
    first = train(cfg, DATA, hooks=hooks)
    assert first.interrupted and first.steps == 1 and first.model_dir is None
    assert first.checkpoint.name == "step-00000001" and (first.output_dir / "report.html").is_file()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL                      # handler restored
    second = train(cfg, DATA)
    assert not second.interrupted and second.steps == 4 and second.resumed_from.name == "step-00000001"
    # a fresh run in the same output_dir would prune its own checkpoints behind these: refused, nothing touched
    kept = list_checkpoints(second.output_dir)
    with pytest.raises(ValueError, match=r"past step 0 \(newest step-00000004\); use a new output_dir, or resume=auto"):
        train(cfg, DATA, resume="none")
    assert list_checkpoints(second.output_dir) == kept


@pytest.mark.slow
def test_cli_exits_143_after_checkpointing_on_sigterm(tiny_cfg, tmp_path, model_cache):
    out = tmp_path / "cli-run"
    cmd = [sys.executable, "-m", "rglcd", "train", "--data", DATA, "--output-dir", str(out),
           *[a for o in FAST for a in ("--set", o)], "--set", "train.max_steps=1000", "--set",
           "train.checkpoint_every=1000", "--set", f"model.cache_dir={model_cache}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 240
    while not read_metrics_jsonl(out / "metrics.jsonl") and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 143, stderr[-2000:]
    assert "interrupted at step" in stdout
    (step, path), = list_checkpoints(out)
    assert 1 <= step < 1000 and (path / "model.safetensors").is_file()


# ---------------------------------------------------------------- the non-finite guard

def _nan_at(monkeypatch, micro_batches):
    import rglcd.train.loop

    real = rglcd.train.loop.lcd_step

    def patched(student, target, teacher, batch, cfg, step, reward=None):
        out = real(student, target, teacher, batch, cfg, step, reward=reward)
        if step in micro_batches:
            out.loss = out.loss * float("nan")
        return out
    monkeypatch.setattr(rglcd.train.loop, "lcd_step", patched)


def test_non_finite_steps_are_skipped_and_counted(tiny_cfg, monkeypatch):
    _nan_at(monkeypatch, {1})
    snapshots = {}

    def snap(run, step, record):
        snapshots[step] = [p.detach().clone() for p in run.params]
    result = train(tiny_cfg(*FAST, "train.max_steps=3"), DATA, hooks={"step": snap})
    records = read_metrics_jsonl(result.output_dir / "metrics.jsonl")
    assert [r["bad_step"] for r in records] == [False, True, False] and result.bad_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(snapshots[1], snapshots[2]))     # step 2 changed nothing
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[2], snapshots[3]))
    assert records[1]["loss"] is None and records[2]["loss"] > 0                 # NaN written as null


def test_consecutive_non_finite_steps_stop_the_run_with_a_clear_error(tiny_cfg, monkeypatch):
    _nan_at(monkeypatch, set(range(100)))
    with pytest.raises(NonFiniteLoss, match=r"2 consecutive steps .*train.max_bad_steps=2.*Last good checkpoint"):
        train(tiny_cfg(*FAST, "train.max_bad_steps=2"), DATA)


# ---------------------------------------------------------------- model variants

def test_gradient_checkpointing_gives_the_same_gradients(tiny_cfg):
    from rglcd.data import StreamSpec, TrainStream, open_source
    from rglcd.models import load_teacher, make_target
    from rglcd.step import lcd_step
    from rglcd.train.setup import build_student

    cfg = tiny_cfg(*FAST)
    teacher = load_teacher(cfg.model.teacher, cfg.model.cache_dir)
    batch = next(iter(TrainStream(open_source(DATA), StreamSpec(batch_size=2, resolution=32))))
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        cfg.train.gradient_checkpointing = checkpointing
        student = build_student(teacher.unet, cfg.train, cfg.model.time_cond_proj_dim)
        assert student.is_gradient_checkpointing == checkpointing
        lcd_step(student, make_target(student), teacher, batch, cfg, step=0).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in student.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)


def test_lora_trains_only_the_adapter_and_guidance_projection_and_exports_merged(tiny_cfg):
    from diffusers import UNet2DConditionModel

    seen = {}
    hooks = {"step": lambda run, step, record: seen.setdefault(
        "names", [n for n, p in run.accelerator.unwrap_model(run.student).named_parameters() if p.requires_grad])}
    result = train(tiny_cfg(*FAST, "train.lora_rank=4", "train.max_steps=2"), DATA, hooks=hooks)
    names = seen["names"]
    assert names and all("lora_" in n or n.startswith("time_embedding.cond_proj") for n in names)
    assert any(n.startswith("time_embedding.cond_proj") for n in names)
    unet = UNet2DConditionModel.from_pretrained(result.model_dir, subfolder="unet")
    assert unet.config.time_cond_proj_dim == 256 and not any("lora" in k for k in unet.state_dict())
    assert {p.name for p in (result.output_dir / "lora").iterdir()} == {
        "pytorch_lora_weights.safetensors", "guidance_projection.safetensors"}
    adapter = load_file(str(result.output_dir / "lora" / "pytorch_lora_weights.safetensors"))
    assert adapter and all("lora" in k for k in adapter)
    proj = load_file(str(result.output_dir / "lora" / "guidance_projection.safetensors"))
    assert torch.equal(proj["time_embedding.cond_proj.weight"], unet.time_embedding.cond_proj.weight)


def test_merged_lora_unet_computes_what_base_plus_adapter_computes(tiny_cfg):
    from rglcd.models import load_teacher
    from rglcd.train.setup import build_student, merged_unet

    cfg = tiny_cfg(*FAST, "train.lora_rank=4")
    teacher = load_teacher(cfg.model.teacher, cfg.model.cache_dir)
    torch.manual_seed(0)
    student = build_student(teacher.unet, cfg.train, cfg.model.time_cond_proj_dim)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)                       # a trained adapter (B starts at zero)
    merged = merged_unet(student)
    assert not any("lora" in k for k in merged.state_dict()) and any("lora" in k for k in student.state_dict())
    z, t, text, cond = torch.randn(2, 4, 16, 16), torch.tensor([999, 259]), torch.randn(2, 77, 32), torch.randn(2, 256)
    with torch.no_grad():
        a = student(z, t, encoder_hidden_states=text, timestep_cond=cond).sample
        b = merged(z, t, encoder_hidden_states=text, timestep_cond=cond).sample
        base = teacher.unet(z, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(a, base, atol=1e-3)


# ---------------------------------------------------------------- outputs and end to end

def test_short_run_writes_every_output(tiny_cfg):
    from diffusers import LatentConsistencyModelPipeline

    result = train(tiny_cfg(*FAST, "train.max_steps=2", "train.validation_every=2"), DATA)
    out = result.output_dir
    for name in ("config.yaml", "run.json", "metrics.jsonl", "loss_curves.png", "report.html",
                 "validation/step-00000002.png"):
        assert (out / name).is_file(), name
    run = json.loads((out / "run.json").read_text())
    assert run["git_revision"] and run["versions"]["torch"] and run["data"]["num_records"] == 12
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "lcd_loss" in html
    pipe = LatentConsistencyModelPipeline.from_pretrained(result.model_dir)
    image = pipe("a cat", num_inference_steps=2, guidance_scale=7.5, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()


def test_precomputed_latents_with_another_resolution_are_refused(tiny_cfg, tmp_path):
    from rglcd.data import prep

    prep(tiny_cfg("data.precompute_latents=true"), "builtin:photos:4", tmp_path / "lat")
    with pytest.raises(ValueError, match="precomputed at 32 px, model.resolution is 64"):
        train(tiny_cfg(*FAST, "model.resolution=64"), str(tmp_path / "lat"))


@pytest.mark.slow
def test_end_to_end_from_prep_output_with_the_tiny_preset(tiny_cfg, tmp_path, model_cache, tiny_lrm):
    """`rglcd prep` then `rglcd train` (LRM-guided, tiny HPS expert) for 24 steps, all outputs checked."""
    from diffusers import LatentConsistencyModelPipeline

    from rglcd.cli import main

    common = ["--set", f"model.cache_dir={model_cache}"]
    assert main(["prep", "--source", "builtin:photos:24", "--out", str(tmp_path / "data"), *common]) == 0
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "data"), "--lrm-checkpoint", tiny_lrm, "--output-dir", str(out),
                 *common, "--set", "train.max_steps=24", "--set", "train.validation_every=12",
                 "--set", "train.checkpoint_every=12", "--set", "train.batch_size=2"]) == 0
    records = read_metrics_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 25))
    assert all(r["lrm_loss"] is not None and r["reward"] is not None for r in records)
    assert [s for s, _ in list_checkpoints(out)] == [12, 24]
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step-00000012.png", "step-00000024.png"]
    assert json.loads((out / "run.json").read_text())["data"]["content_hash"]
    pipe = LatentConsistencyModelPipeline.from_pretrained(out / "model")
    assert pipe.unet.config.time_cond_proj_dim == 256
    assert (out / "lrm" / "model.safetensors").is_file()


@pytest.fixture
def tiny_lrm(tiny_cfg, tmp_path) -> str:
    """A random-init LRM checkpoint for 32 px tiny latents (16x16)."""
    from rglcd.lrm import new_lrm, save_lrm

    cfg = tiny_cfg()
    torch.manual_seed(0)
    return str(save_lrm(new_lrm(cfg.lrm, 16, {"teacher": cfg.model.teacher, "resolution": 32}), tmp_path / "lrm0"))
