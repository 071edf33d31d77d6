"""`evaluate(cfg, model_dir, out_dir)`: the evaluation step of the DAG (docs/method.md 6, docs/architecture.md 2.9).

1. Sample the evaluation prompts with the teacher (50-step DDIM + CFG) and the student at each of
   eval.steps, one image per prompt, same seeds; score them (registered rewards, CLIP score) and
   measure their high-frequency energy (reward-hacking monitor).
2. HPSv2.1 benchmark (4 styles), when eval.hps_benchmark is set.
3. FID of the student at eval.gate_steps (eval.fid_models all: of the teacher and every student) against
   eval.fid_reference (clean-fid).
4. Latency per image, student vs teacher.
5. metrics.json (summary = the plain numbers), report.html, and the registration gate's decision, which
   compares the student and teacher on eval.gate_reward (any registered image reward evaluated).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rglcd.config import ConfigError
from rglcd.config.checks import HPS_REWARD, check_eval
from rglcd.devices import device_and_dtype
from rglcd.evaluate.gate import GateDecision, gate
from rglcd.evaluate.generate import ImageSet, generate_set, reuse_images
from rglcd.evaluate.spectrum import high_frequency_share
from rglcd.export import read_manifest
from rglcd.provenance import provenance

HPS_SCALE = 100.0  # HPS is reported as 100 x cosine (HPSv2 README)


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    metrics_path: Path
    html_path: Path
    gate: GateDecision


# ---------------------------------------------------------------- set-up

def _check(cfg) -> None:
    """The evaluation's cross-field rules (gate steps and reward among those evaluated), also for a config
    assembled without `load_config`."""
    check_eval(cfg)


def eval_device(eval_cfg) -> tuple[torch.device, torch.dtype]:
    """eval.device / eval.precision -> (device, dtype) (rglcd.devices.device_and_dtype), as a ConfigError."""
    try:
        return device_and_dtype(eval_cfg.device, eval_cfg.precision, "eval")
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _prompts(spec: str, what: str, count: int | None = None) -> list[str]:
    from rglcd.data.prompts import load_prompts

    prompts = load_prompts(spec, field=what)
    return prompts[:count] if count else prompts


# ---------------------------------------------------------------- scoring one batch

class Scorers:
    """Everything measured on each generated batch: registered rewards, CLIP score, HF share."""

    def __init__(self, cfg, device: torch.device):
        from rglcd.evaluate.scores import load_clip_scorer, load_eval_rewards

        e = cfg.eval
        self.rewards = load_eval_rewards(e.rewards, e.reward_weights, device, cfg.model.cache_dir)
        self.clip = load_clip_scorer(e.clip_model, e.clip_pretrained, device) if e.clip_model else None
        self.cutoff = e.hf_cutoff

    def __call__(self, images: torch.Tensor, prompts: list[str], only: tuple[str, ...] | None = None) -> dict:
        from rglcd.evaluate.scores import reward_values
        from rglcd.sample import to_pil

        out = {"hf_share": high_frequency_share(images, self.cutoff)}
        for name, model in self.rewards.items():
            if only is None or name in only:
                out[name] = reward_values(model, images, prompts) * (HPS_SCALE if name == HPS_REWARD else 1.0)
        if self.clip is not None and only is None:
            out["clip_score"] = self.clip(to_pil(images), prompts)
        return out

    def describe(self) -> dict:
        return {"rewards": {n: {"model": getattr(m, "name", n), "value": _reward_meaning(n)}
                            for n, m in self.rewards.items()},
                "clip_score": None if self.clip is None else {"model": self.clip.name,
                                                              "value": "100 x max(cos, 0), open_clip preprocessing"}}


def _reward_meaning(name: str) -> str:
    return {HPS_REWARD: "100 x cosine (HPSv2.1)", "imagereward": "raw ImageReward r (not hinged)"}.get(
        name, "cosine of L2-normalised image and text features")


# ---------------------------------------------------------------- samplers

def samplers(cfg, student, teacher) -> dict[str, Any]:
    """label -> (prompts, generators) -> images, for the teacher and each student step count."""
    from rglcd.sample import ddim_sample, lcm_sample

    e, res = cfg.eval, cfg.model.resolution
    out = {"teacher": lambda p, g: ddim_sample(teacher, p, e.teacher_steps, e.teacher_guidance, g,
                                               height=res, width=res).images}
    for s in e.steps:
        out[f"student-{s}"] = lambda p, g, s=s: lcm_sample(student, p, s, e.guidance, g, height=res, width=res).images
    return out


def _label_text(label: str, cfg) -> str:
    if label == "teacher":
        return f"teacher {cfg.eval.teacher_steps}-step DDIM, CFG {cfg.eval.teacher_guidance}"
    return f"student {label.split('-')[1]}-step LCM"


# ---------------------------------------------------------------- the sections

def prompt_set_section(sets: dict[str, ImageSet], cfg, scorers: Scorers, spec: str) -> dict:
    """Per-model means on the evaluation prompts, and the student/teacher high-frequency ratios."""
    teacher = sets["teacher"]
    models = {}
    for label, s in sets.items():
        models[label] = {name: s.mean(name) for name in s.values}
    hf = {label.split("-")[1]: {"ratio": s.mean("hf_share") / max(teacher.mean("hf_share"), 1e-30),
                                "student_share": s.mean("hf_share")}
          for label, s in sets.items() if label != "teacher"}
    return {"prompts": spec, "num_prompts": len(teacher.prompts), "resolution": list(teacher.resolution),
            "seed": cfg.eval.seed, "guidance": cfg.eval.guidance, "teacher_guidance": cfg.eval.teacher_guidance,
            "teacher_steps": cfg.eval.teacher_steps, "means": models, **scorers.describe(),
            "high_frequency": {"cutoff_cycles_per_pixel": cfg.eval.hf_cutoff, "teacher_share": teacher.mean("hf_share"),
                               "measure": "share of Hann-windowed spectral energy above the cutoff",
                               "by_steps": hf}}


def benchmark_section(cfg, sampler_fns: dict, scorers: Scorers, out: Path) -> dict:
    """HPSv2.1 benchmark: per style and mean of 100 x cosine, for the teacher and each student step count."""
    from rglcd.evaluate.scores import benchmark_prompts, summarize_benchmark

    e = cfg.eval
    styles = benchmark_prompts(e.hps_benchmark, max(1, e.num_prompts // 4))
    results = {}
    for label, fn in sampler_fns.items():
        scores = {}
        for style, prompts in styles.items():
            s = generate_set(label, fn, prompts, out / "images" / "hps" / style / label, batch_size=e.batch_size,
                             seed=e.seed, measure=lambda x, p: scorers(x, p, only=(HPS_REWARD,)))
            scores[style] = s.values[HPS_REWARD]
        results[label] = summarize_benchmark(scores)
    return {"source": e.hps_benchmark, "version": "v2.1", "score": "100 x cosine", "per_style_prompts":
            {k: len(v) for k, v in styles.items()}, "models": results}


def fid_section(cfg, label: str, fn, prompts: list[str], out: Path, device: torch.device,
                done: ImageSet | None = None) -> dict:
    """FID of one model (`label`: "student-<n>" or "teacher") on eval.fid_num_images images against
    eval.fid_reference.

    done: the model's evaluation-prompt images; those whose prompt and index match are linked, not drawn
    again (docs/method.md 9.10)."""
    from rglcd.evaluate.fid import compute_fid
    from rglcd.evaluate.reference import resolve_reference

    e = cfg.eval
    reference = resolve_reference(e.fid_reference, cfg.model.cache_dir)
    captions = [prompts[i % len(prompts)] for i in range(e.fid_num_images)]
    folder = out / "images" / f"fid-{label}"
    reused = reuse_images(done, captions, folder) if done is not None else 0
    generate_set("fid", fn, captions[reused:], folder, batch_size=e.batch_size, seed=e.seed, first=reused)
    record = compute_fid(folder, reference, e.fid_mode, e.inception_weights, cfg.model.cache_dir, device,
                         e.batch_size)
    steps = e.teacher_steps if label == "teacher" else int(label.split("-")[1])
    return {**record, "model": label, "steps": steps, "captions": e.fid_prompts or "evaluation prompts (cycled)",
            "reference_spec": e.fid_reference}


def fid_models(cfg) -> list[str]:
    """The models that get an FID: the student at eval.gate_steps, or (eval.fid_models all) the teacher and
    the student at every step count."""
    e = cfg.eval
    return ["teacher", *(f"student-{s}" for s in e.steps)] if e.fid_models == "all" else [f"student-{e.gate_steps}"]


def gate_reward_means(cfg, prompt_set: dict, bench: dict | None) -> tuple[float, float, str]:
    """(student mean at eval.gate_steps, teacher mean, where they come from) of eval.gate_reward: the HPSv2
    benchmark's means when the gate reward is HPSv2.1 and the benchmark ran, else the evaluation prompts' means."""
    name, label = cfg.eval.gate_reward, f"student-{cfg.eval.gate_steps}"
    if name == HPS_REWARD and bench is not None:
        return bench["models"][label]["mean"], bench["models"]["teacher"]["mean"], "hps_benchmark"
    means = prompt_set["means"]
    return means[label][name], means["teacher"][name], "prompt_set"


def _hps(cfg, prompt_set: dict, bench: dict | None) -> dict[str, float]:
    """hps, teacher_hps, hps_margin when HPSv2.1 was scored (registry, MLflow and production comparisons read
    them); benchmark means when the benchmark ran."""
    label, means = f"student-{cfg.eval.gate_steps}", prompt_set["means"]
    if bench is not None:
        hps, teacher_hps = bench["models"][label]["mean"], bench["models"]["teacher"]["mean"]
    elif HPS_REWARD in means["teacher"]:
        hps, teacher_hps = means[label][HPS_REWARD], means["teacher"][HPS_REWARD]
    else:
        return {}
    return {"hps": hps, "teacher_hps": teacher_hps, "hps_margin": hps - teacher_hps}


def summary(cfg, prompt_set: dict, bench: dict | None, fid: dict | None, latency: dict,
            fid_by_model: dict[str, float] | None = None) -> dict:
    """The plain numbers the pipeline compares and the registry stores (floats; a non-finite one is written
    as null and fails the gate rule that reads it). `reward`, `teacher_reward`, `reward_margin`: eval.gate_reward
    at eval.gate_steps (`gate_reward_means`; its name is in the gate section, docs/method.md 6.6)."""
    g = str(cfg.eval.gate_steps)
    means = prompt_set["means"]
    reward, teacher_reward, _ = gate_reward_means(cfg, prompt_set, bench)
    out = {"reward": reward, "teacher_reward": teacher_reward, "reward_margin": reward - teacher_reward,
           **_hps(cfg, prompt_set, bench),
           "hf_ratio": prompt_set["high_frequency"]["by_steps"][g]["ratio"], "gate_steps": float(g)}
    for label, values in means.items():
        for name, v in values.items():
            if name != "hf_share":
                out[f"{name}_{label.replace('-', '_')}"] = v
    for s, ratio in latency["speedup"].items():
        out[f"speedup_{s}"] = ratio
        out[f"latency_student_{s}_s"] = latency["student"][s]["seconds_per_image"]
    out["latency_teacher_s"] = latency["teacher"]["seconds_per_image"]
    if fid is not None:
        out.update(fid=fid["value"], fid_num_images=float(fid["num_generated"]),
                   fid_reference_key=float(int(fid["reference_sha256"][:12], 16)))  # 48 bits: exact in a float
    for label, value in (fid_by_model or {}).items():
        out[f"fid_{label.replace('-', '_')}"] = value
    return out


# ---------------------------------------------------------------- the step

def _run_info(cfg, model_dir: Path, teacher_ref: str, device, dtype) -> dict:
    """The provenance block (`rglcd.provenance`) with what was compared: the model, its teacher, the dtype."""
    try:
        trained_from = read_manifest(model_dir).get("teacher")
    except FileNotFoundError:
        trained_from = None
    return {"model_dir": str(model_dir), "teacher": teacher_ref, "student_trained_from": trained_from,
            "dtype": str(dtype).replace("torch.", ""), **provenance(cfg, device, extra_libraries=("clean-fid",))}


def evaluate(cfg, model_dir: str | Path, out_dir: str | Path, teacher: str | None = None,
             production_metrics: dict | None = None) -> EvalResult:
    """Evaluate the exported student in `model_dir` against its teacher; write metrics.json and report.html."""
    from rglcd.evaluate.latency import latency_report
    from rglcd.evaluate.report import write_html, write_metrics
    from rglcd.evaluate.serving import serving_cost, serving_summary
    from rglcd.sample import load_sampling_model, prepare_sampling

    _check(cfg)
    e, t0 = cfg.eval, time.perf_counter()
    device, dtype = eval_device(e)
    out, model_dir = Path(out_dir), Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not (model_dir / "model_index.json").is_file():
        raise FileNotFoundError(f"model_dir (--model): {str(model_dir)!r} is not an exported student (no model_index.json); "
                                "allowed: a directory written by rglcd's export (a diffusers pipeline directory)")
    teacher_ref = teacher or cfg.model.teacher
    student = prepare_sampling(load_sampling_model(str(model_dir), cfg.model.cache_dir, device, dtype), e.compile)
    if not student.is_lcm:
        raise ValueError(f"--model {str(model_dir)!r}: its UNet has no guidance embedding; expected an exported student")
    teacher_m = prepare_sampling(load_sampling_model(teacher_ref, cfg.model.cache_dir, device, dtype), e.compile)
    scorers, fns = Scorers(cfg, device), samplers(cfg, student, teacher_m)

    spec = e.prompts or cfg.data.prompts
    prompts = _prompts(spec, "eval.prompts" if e.prompts else "data.prompts", e.num_prompts)
    sets = {label: generate_set(label, fn, prompts, out / "images" / label, batch_size=e.batch_size, seed=e.seed,
                                measure=scorers, keep=e.grid_prompts) for label, fn in fns.items()}
    metrics: dict[str, Any] = {"summary": {}, "prompt_set": prompt_set_section(sets, cfg, scorers, spec)}
    bench = benchmark_section(cfg, fns, scorers, out) if e.hps_benchmark else None
    metrics["hps_benchmark"] = bench
    fid_prompts = _prompts(e.fid_prompts, "eval.fid_prompts") if e.fid_prompts else prompts
    fids = {label: fid_section(cfg, label, fns[label], fid_prompts, out, device, sets.get(label))
            for label in fid_models(cfg)} if e.fid_reference else {}
    fid = fids.get(f"student-{e.gate_steps}")
    metrics["fid"] = fid
    metrics["fid_by_model"] = {label: record["value"] for label, record in fids.items()} if len(fids) > 1 else None
    metrics["latency"] = latency_report(student, teacher_m, e.steps, e.teacher_steps, e.guidance, e.teacher_guidance,
                                        e.latency_batch_size, cfg.model.resolution, None, e.latency_repeats)
    metrics["serving"] = serving_cost(student, teacher_m, cfg)
    metrics["summary"] = {**summary(cfg, metrics["prompt_set"], bench, fid, metrics["latency"], metrics["fid_by_model"]),
                          **serving_summary(metrics["serving"])}
    decision = gate(metrics, e, production_metrics)
    metrics["gate"] = {**asdict(decision), "reward_source": gate_reward_means(cfg, metrics["prompt_set"], bench)[2],
                       "production": production_metrics}
    metrics["run"] = {**_run_info(cfg, model_dir, teacher_ref, device, dtype),
                      "seconds": time.perf_counter() - t0}
    metrics_path = write_metrics(metrics, out / "metrics.json")
    columns = [(_label_text(label, cfg), s.preview) for label, s in sets.items()]
    html_path = write_html(metrics, prompts[:e.grid_prompts], columns, out / "report.html",
                           f"rglcd evaluation: student {model_dir.name}, teacher {teacher_ref}")
    return EvalResult(metrics, metrics_path, html_path, decision)
