"""The toy world (rglcd.toy): data, reward, LRM batches, claim verdicts, and the quick end-to-end run."""
from __future__ import annotations

import json
import math

import pytest
import torch

from rglcd.toy.classifier import ToyClassifier
from rglcd.toy.reward import TEMPERATURE, ToyReward
from rglcd.toy.config import ToyConfig, WorldConfig, method_config, quick_config, toy_config_from_dict
from rglcd.toy.data import COLOURS, NUM_CLASSES, all_labels, caption, labels_of, make_dataset, parse_caption, prompt_set
from rglcd.toy.report import evaluate_claims
from rglcd.toy.world import lrm_batches


def test_captions_round_trip_and_bad_captions_are_refused():
    labels = all_labels()
    assert len(labels) == 48 == math.prod(NUM_CLASSES)
    assert caption((0, 0, 0)) == "a red circle on the left"
    assert caption((3, 2, 3)) == "a yellow triangle at the bottom"
    assert [parse_caption(caption(lab)) for lab in labels] == labels
    for bad in ("a purple circle on the left", "a red circle in the middle", "red circle on the left", ""):
        with pytest.raises(ValueError, match="not allowed; allowed: 'a <colour> <shape> <where>'"):
            parse_caption(bad)
    assert prompt_set(2)[:48] == prompt_set(2)[48:] == [caption(lab) for lab in labels]


def _shape_mask(images: torch.Tensor) -> torch.Tensor:
    """Saturated pixels: the shape (backgrounds are grey, r = g = b)."""
    return (images.max(1).values - images.min(1).values) > 0.3                  # (N, 32, 32)


def test_dataset_is_seeded_balanced_and_shows_what_the_caption_says():
    a, b, c = make_dataset(96, seed=5), make_dataset(96, seed=5), make_dataset(96, seed=6)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (96, 3, 32, 32) and 0 <= a.images.min() and a.images.max() <= 1
    combos, counts = torch.unique(a.labels, dim=0, return_counts=True)
    assert len(combos) == 48 and counts.tolist() == [2] * 48
    assert a.captions == [caption(tuple(r)) for r in a.labels.tolist()]
    mask = _shape_mask(a.images)
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    for img, m, (col, _, pos) in zip(a.images, mask, a.labels.tolist()):
        cx, cy = (xs * m).sum() / m.sum(), (ys * m).sum() / m.sum()
        where = {0: cx < 14, 1: cx > 18, 2: cy < 14, 3: cy > 18}[pos]                # left, right, top, bottom
        assert where, (col, pos, float(cx), float(cy))
        rgb = img[:, m].mean(1)                                                  # (3,) mean shape colour
        expected = torch.tensor(list(COLOURS.values())[col])
        assert (rgb - expected).abs().max() < 0.15
    with pytest.raises(ValueError, match="n >= 1"):
        make_dataset(0, seed=0)


def test_toy_reward_is_the_mean_tempered_attribute_probability_with_gradients_to_the_images_only():
    torch.manual_seed(0)
    reward = ToyReward(ToyClassifier(width=8, feature_dim=16))
    images = torch.rand(3, 3, 32, 32, requires_grad=True)
    prompts = ["a red circle on the left", "a blue square at the top", "a yellow triangle at the bottom"]
    r = reward.score(images, prompts)
    logits = reward.classifier(images.detach())
    labels = labels_of(prompts)

    def by_hand(t):
        return torch.stack([(logits[i] / t).softmax(1)[torch.arange(3), labels[:, i]] for i in range(3)], 1).mean(1)
    torch.testing.assert_close(r.detach(), by_hand(TEMPERATURE))
    untempered = ToyReward(reward.classifier, temperature=1.0).score(images.detach(), prompts)
    torch.testing.assert_close(untempered, by_hand(1.0))
    by_hand = by_hand(TEMPERATURE)
    assert r.shape == (3,) and ((0 < r) & (r < 1)).all()
    r.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in reward.parameters())
    torch.testing.assert_close(reward.logits(images.detach(), prompts), by_hand * 20.0)
    assert reward.input_kind == "image"
    with pytest.raises(ValueError, match="not allowed"):
        reward.score(images.detach(), ["a cat", "a dog", "a bird"])
    with pytest.raises(ValueError, match="one prompt per input"):
        reward.score(images.detach(), prompts[:2])


def test_the_toy_expert_is_the_registered_reward_toy_loaded_from_a_world(tmp_path):
    from safetensors.torch import save_file

    from rglcd.rewards import load_reward
    from rglcd.toy.world import _classifier_state

    torch.manual_seed(0)
    reward_cls, judge = ToyClassifier(width=8, feature_dim=16), ToyClassifier(width=4, feature_dim=8)
    save_file(_classifier_state(reward_cls, judge), str(tmp_path / "classifiers.safetensors"))
    state = torch.random.get_rng_state()
    loaded = load_reward("toy", str(tmp_path), device="cpu")
    assert torch.equal(torch.random.get_rng_state(), state)             # no random init drawn: rows stay seeded
    images, prompts = torch.rand(3, 3, 32, 32), [caption(labels) for labels in all_labels()[:3]]
    assert isinstance(loaded, ToyReward) and loaded.classifier.width == 8
    torch.testing.assert_close(loaded.score(images, prompts), ToyReward(reward_cls).score(images, prompts), rtol=0, atol=0)
    assert not any(p.requires_grad for p in loaded.parameters())
    with pytest.raises(ValueError, match="reward 'toy' needs reward.weights: a toy world directory"):
        load_reward("toy", None)
    with pytest.raises(FileNotFoundError, match="does not exist; allowed: a toy world directory"):
        load_reward("toy", str(tmp_path / "missing"))


def test_lrm_pretraining_batches_have_distinct_captions_matching_their_latents():
    data = make_dataset(96, seed=1)
    moments = torch.arange(96.0)[:, None, None, None].expand(96, 8, 2, 2).clone()   # row i holds the value i
    batches = list(lrm_batches(moments, data.labels, steps=3, batch_size=20, seed=0))
    assert len(batches) == 3
    for x, captions in batches:
        assert x.shape == (20, 8, 2, 2) and len(set(captions)) == 20
        rows = x[:, 0, 0, 0].long()
        assert [data.captions[i] for i in rows.tolist()] == captions
    with pytest.raises(ValueError, match="exceeds the 48 distinct toy captions"):
        next(lrm_batches(moments, data.labels, steps=1, batch_size=49, seed=0))


def _rows(lcd, direct, lrm, teacher=(0.9, 2.0), reward_std=0.01):
    """Rows at 4 steps: lcd = (reward, acc, fd, hf); direct / lrm: {beta: (reward, acc, fd, hf)}."""
    def row(model, guidance, beta, v):
        return {"model": model, "guidance": guidance, "beta": beta, "steps": 4, "reward": v[0], "accuracy": v[1],
                "fd": v[2], "hf_ratio": v[3], "speedup": 12.0, "reward_std": reward_std}
    rows = [{"model": "teacher", "guidance": "-", "beta": None, "steps": 50, "reward": 0.5,
             "accuracy": teacher[0], "fd": teacher[1], "hf_ratio": 1.0}, row("lcd", "none", 0.0, lcd)]
    rows += [row(f"rg-direct-b{b:g}", "direct", b, v) for b, v in direct.items()]
    rows += [row(f"rg-lrm-b{b:g}", "lrm", b, v) for b, v in lrm.items()]
    return rows


def test_claim_verdicts_follow_the_numbers():
    toy = ToyConfig()
    rows = _rows(lcd=(0.5, 0.85, 3.0, 1.0), direct={1.0: (0.6, 0.8, 3.5, 1.2), 10.0: (0.8, 0.7, 6.0, 2.0)},
                 lrm={10.0: (0.7, 0.8, 4.0, 1.1)})
    claims = {c["claim"]: c for c in evaluate_claims(rows, toy)}
    assert len(claims) == 7 and all(c["holds"] for c in claims.values())
    beta = claims["A larger beta gives a higher reward (direct)"]["evidence"]["rg-direct-b1 -> rg-direct-b10"]
    assert beta["gain"] == pytest.approx(0.2) and beta["gain_over_spread"] == pytest.approx(20.0)
    matched = claims["The LRM variant raises high-frequency energy less at similar reward"]["evidence"]["rg-lrm-b10"]
    assert matched["direct_hf_ratio_at_same_reward"] == pytest.approx(1.6)   # halfway between (0.6, 1.2), (0.8, 2.0)
    assert matched["direct_fd_at_same_reward"] == pytest.approx(4.75)

    rows = _rows(lcd=(0.5, 0.5, 5.0, 1.0), direct={10.0: (0.45, 0.5, 5.0, 1.05)}, lrm={10.0: (0.6, 0.5, 9.0, 1.5)})
    verdicts = {c["claim"]: c["holds"] for c in evaluate_claims(rows, toy)}
    assert verdicts == {
        "Few-step LCM approaches the 50-step teacher": False,           # accuracy 0.5 < 0.9 * 0.9
        "RG-LCD with the direct expert reward raises the expert reward well beyond seed-to-seed noise": False,
        "RG-LCD with the LRM raises the expert reward well beyond seed-to-seed noise": True,      # +0.1 >= 3 x 0.01
        "Direct reward optimisation with a large beta raises high-frequency energy (reward hacking)": False,
        "The LRM variant raises high-frequency energy less at similar reward": False,   # 1.5 > 1.05 (clamped end)
        "The LRM variant has a better FD than direct optimisation at similar reward": False,
    }

    # a gain that is real but within 3 seed standard deviations does not count
    rows = _rows(lcd=(0.5, 0.85, 3.0, 1.0), direct={1.0: (0.6, 0.8, 3.5, 1.2)}, lrm={10.0: (0.7, 0.8, 4.0, 1.1)},
                 reward_std=0.04)
    claims = {c["claim"]: c for c in evaluate_claims(rows, toy)}
    direct = claims["RG-LCD with the direct expert reward raises the expert reward well beyond seed-to-seed noise"]
    lrm = claims["RG-LCD with the LRM raises the expert reward well beyond seed-to-seed noise"]
    assert direct["evidence"]["rg-direct-b1"]["gain_over_spread"] == pytest.approx(2.5) and not direct["holds"]
    assert lrm["evidence"]["rg-lrm-b10"]["gain_over_spread"] == pytest.approx(5.0) and lrm["holds"]
    assert "A larger beta gives a higher reward (direct)" not in claims                 # one beta: no sweep


def test_world_key_and_method_config():
    assert WorldConfig().key() == WorldConfig().key() != WorldConfig(teacher_lr=2e-3).key()
    assert len(WorldConfig().key()) == 12
    toy = ToyConfig()
    lcd, direct, lrm = method_config(toy), method_config(toy, "direct", 5.0), method_config(toy, "lrm", 50.0)
    assert (lcd.reward.name, lcd.reward.beta) == ("none", 0.0)
    assert (direct.reward.name, direct.reward.guidance, direct.reward.beta) == ("toy", "direct", 5.0)
    assert (lrm.reward.name, lrm.reward.guidance, lrm.lrm.batch_size) == ("toy", "lrm", toy.lrm_batch_size)
    assert (lcd.distill.w_min, lcd.distill.w_max, lcd.train.lr) == (toy.w_min, toy.w_max, toy.lr)
    assert lcd.model.resolution == 32 and lcd.distill.num_ddim_timesteps == 50
    assert (lcd.preset, lcd.reward.weights, lcd.lrm.checkpoint, lcd.model.teacher) == ("tiny", None, None, "toy:teacher")
    row = method_config(toy, "lrm", 5.0, world_dir="/w/world-abc")        # a built world: every source points into it
    assert (row.model.teacher, row.reward.weights, row.lrm.checkpoint) == (
        "/w/world-abc/teacher", "/w/world-abc", "/w/world-abc/lrm")
    plain = method_config(toy, world_dir="/w/world-abc")                    # LCD: no expert, no LRM to load
    assert (plain.model.teacher, plain.reward.weights, plain.lrm.checkpoint) == ("/w/world-abc/teacher", None, None)


@pytest.mark.slow
def test_quick_run_end_to_end_and_the_world_cache_is_reused(tmp_path, monkeypatch):
    from rglcd.cli import main
    from rglcd.toy import world as world_mod

    out, cache = tmp_path / "out", tmp_path / "cache"
    assert main(["toy", "run", "--quick", "--out", str(out), "--cache-dir", str(cache)]) == 0
    results = json.loads((out / "results.json").read_text())
    toy = quick_config()
    names = ["lcd"] + [f"rg-direct-b{b:g}" for b in toy.direct_betas] + [f"rg-lrm-b{b:g}" for b in toy.lrm_betas]
    got = [(r["model"], r["steps"]) for r in results["rows"]]
    assert got == [("data", None), ("teacher", 50)] + [(n, s) for n in names for s in toy.eval_steps]
    for r in results["rows"]:
        for key in ("reward", "accuracy", "fd", "hf_ratio", "hf_share"):
            assert math.isfinite(r[key]), (r["model"], key)
        assert 0 <= r["reward"] <= 1 and 0 <= r["accuracy"] <= 1
    assert results["rows"][1]["hf_ratio"] == pytest.approx(1.0)          # the teacher against itself
    for r in results["rows"]:                                              # mean and spread over the seeds
        per_seed = [s for s in results["seed_rows"] if (s["model"], s["steps"]) == (r["model"], r["steps"])]
        assert [s["seed"] for s in per_seed] == list(toy.seeds) and r["reward_by_seed"] == [s["reward"] for s in per_seed]
        assert r["reward"] == pytest.approx(sum(r["reward_by_seed"]) / 2)
        assert r["reward_std"] == pytest.approx(abs(r["reward_by_seed"][0] - r["reward_by_seed"][1]) / math.sqrt(2))
    assert [(t["name"], t["seed"]) for t in results["training"]] == [(n, s) for n in names for s in toy.seeds]
    assert all(r["latency_ms"] > 0 for r in results["rows"][1:])
    assert [c["claim"] for c in results["claims"]][0] == "Few-step LCM approaches the 50-step teacher"
    assert all(isinstance(c["holds"], bool) for c in results["claims"])
    lrm_run = next(t for t in results["training"] if t["guidance"] == "lrm")
    assert {"lrm_loss", "lrm_acc", "train_reward"} <= set(lrm_run["last_20pct"])
    text = (out / "RESULTS.md").read_text()
    assert "| model | reward guidance |" in text and "## Claims" in text
    assert (out / "samples.png").stat().st_size > 0
    # `rglcd toy report` judges the claims again from the run's own numbers and rewrites RESULTS.md
    from rglcd.toy.report import markdown
    tampered = json.loads((out / "results.json").read_text())
    tampered["claims"] = [{**c, "holds": not c["holds"]} for c in tampered["claims"]]
    (out / "results.json").write_text(json.dumps(tampered))
    (out / "RESULTS.md").write_text("stale")
    assert main(["toy", "report", "--out", str(out)]) == 0
    rejudged = json.loads((out / "results.json").read_text())
    assert [c["holds"] for c in rejudged["claims"]] == [c["holds"] for c in results["claims"]]
    assert rejudged["rows"] == results["rows"] and (out / "RESULTS.md").read_text() == markdown(rejudged)
    worlds = list(cache.glob("world-*"))
    assert [w.name for w in worlds] == [f"world-{toy.world.key()}"]
    assert (worlds[0] / "teacher" / "model_index.json").is_file() and (worlds[0] / "lrm" / "lrm_config.json").is_file()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached world was rebuilt")
    monkeypatch.setattr(world_mod, "build_world", no_rebuild)
    again = world_mod.load_or_build_world(toy.world, cache, "cpu", method_config(toy))
    assert again.path == worlds[0] and again.info == results["world"]
    assert again.teacher.unet.config.time_cond_proj_dim is None and again.moments.shape[1:] == (8, 16, 16)


def test_teacher_loss_weight_is_the_v_loss_weight_capped():
    from rglcd.toy.world import loss_weight

    abar = torch.tensor([0.5, 0.9, 0.0047])
    # snr = abar / (1 - abar) = 1, 9, 0.00472: (1 + snr) / snr = 2, 10/9, 212.8 -> capped at 50
    torch.testing.assert_close(loss_weight(abar, 50.0), torch.tensor([2.0, 10 / 9, 50.0]))


def test_teacher_loss_eps_and_v_branches_against_hand_values():
    from rglcd.toy.world import teacher_loss

    abar = torch.tensor([0.36, 0.64])                    # a = 0.6, s = 0.8 at t = 0; a = 0.8, s = 0.6 at t = 1
    t = torch.tensor([0, 1])
    z0, eps = torch.ones(2, 1, 1, 1), torch.full((2, 1, 1, 1), 2.0)
    out = torch.zeros(2, 1, 1, 1)
    # eps: per-example (0 - 2)^2 = 4, weights (1 + snr) / snr = 1 / abar = 2.778, 1.5625 (under the cap 50)
    eps_cfg = WorldConfig()
    torch.testing.assert_close(teacher_loss(out, z0, eps, abar, t, eps_cfg), torch.tensor(4 * (1 / 0.36 + 1 / 0.64) / 2))
    # v = a eps - s z0 = 0.6*2 - 0.8 = 0.4 and 0.8*2 - 0.6 = 1.0: MSE to 0 = (0.16 + 1) / 2
    v_cfg = WorldConfig(teacher_prediction_type="v_prediction")
    torch.testing.assert_close(teacher_loss(out, z0, eps, abar, t, v_cfg), torch.tensor(0.58))
    assert v_cfg.key() != eps_cfg.key()
    with pytest.raises(ValueError, match="teacher_prediction_type: 'sample' is not allowed; allowed: epsilon, v_prediction"):
        WorldConfig(teacher_prediction_type="sample")


def test_published_results_are_what_the_default_config_and_report_code_make():
    """benchmarks/toy/ was written by `rglcd toy run` with today's defaults; its verdicts follow its numbers."""
    from pathlib import Path

    from rglcd.toy.report import markdown

    folder = Path(__file__).resolve().parents[1] / "benchmarks" / "toy"
    results = json.loads((folder / "results.json").read_text())
    toy = toy_config_from_dict(results["config"])
    assert toy == ToyConfig(), "the published table was made with other defaults: rerun `rglcd toy run`"
    assert results["world"]["key"] == toy.world.key(), "the world's code or settings changed: rerun `rglcd toy run`"
    assert results["expert"]["temperature"] == TEMPERATURE
    assert [c["holds"] for c in evaluate_claims(results["rows"], toy)] == [c["holds"] for c in results["claims"]]
    assert (folder / "RESULTS.md").read_text() == markdown(results)
    assert (folder / "samples.png").stat().st_size > 10_000


# ---------------------------------------------------------------- the toy world as sources (the tiny preset)

def test_toy_shapes_source_serves_the_worlds_training_images_and_captions():
    import numpy as np

    from rglcd.data.sources import open_source
    from rglcd.data.version import source_version

    source = open_source("toy:shapes:5")
    records = list(source.read_unit(0))
    data = make_dataset(WorldConfig().train_images, WorldConfig().seed)
    assert source.unit_counts() == [5] and [r.index for r in records] == list(range(5))
    assert [r.caption for r in records] == data.captions[:5]
    pixels = np.asarray(records[3].image, dtype=np.float32) / 255                      # (32, 32, 3), 8 bits
    np.testing.assert_allclose(pixels, data.images[3].permute(1, 2, 0).numpy(), atol=0.5 / 255 + 1e-6)
    assert source.read_record(0, 4).caption == records[4].caption and records[4].key == "toy:shapes:5 #4"
    assert open_source("toy:shapes").unit_counts() == [WorldConfig().train_images]
    assert source_version("toy:shapes:5") == source_version("toy:shapes:5") != source_version("toy:shapes:6")
    for bad in ("toy:shapes:0", "toy:shapes:x", f"toy:shapes:{WorldConfig().train_images + 1}", "toy:shape"):
        with pytest.raises(ValueError, match="allowed: toy:shapes or toy:shapes:N"):
            open_source(bad)


def test_toy_prompts_and_reference_folder(tmp_path):
    from PIL import Image

    from rglcd.data.prompts import load_prompts
    from rglcd.evaluate.reference import resolve_reference

    captions = load_prompts("toy:captions")
    assert sorted(captions) == sorted(prompt_set(1)) and captions == load_prompts("toy:captions")   # a fixed order
    assert len({labels_of([c])[0, 0].item() for c in captions[:4]}) > 1                # the first ones differ
    assert sorted(load_prompts("toy:captions:3")) == sorted(prompt_set(3))
    with pytest.raises(ValueError, match=r"eval.prompts: 'toy:captions:0' is not allowed"):
        load_prompts("toy:captions:0", field="eval.prompts")
    folder = resolve_reference("toy:reference:4", tmp_path)
    files = sorted(folder.iterdir())
    assert [f.name for f in files] == [f"{i:05d}.png" for i in range(4)]
    assert resolve_reference("toy:reference:4", tmp_path) == folder                      # built once
    held_out = make_dataset(WorldConfig().reference_images, WorldConfig().seed + 1)
    first = torch.from_numpy(__import__("numpy").asarray(Image.open(files[0]))).permute(2, 0, 1) / 255
    torch.testing.assert_close(first, held_out.images[0], atol=0.5 / 255 + 1e-6, rtol=0)
    with pytest.raises(ValueError, match="eval.fid_reference: 'toy:reference:9999' is not allowed"):
        resolve_reference("toy:reference:9999", tmp_path)


def test_toy_model_references_resolve_into_the_world_built_once(tmp_path, monkeypatch):
    from rglcd.models.sources import ModelSourceError, resolve
    from rglcd.toy import world as world_mod

    built = []

    def fake_build(cfg, out, device, method_cfg):          # the build's artifacts, without minutes of training
        built.append(out)
        (out / "teacher").mkdir()
        (out / "lrm").mkdir()
        return {"key": cfg.key()}
    monkeypatch.setattr(world_mod, "build_world", fake_build)
    world = tmp_path / "toy" / f"world-{WorldConfig().key()}"
    assert resolve("toy:teacher", str(tmp_path)) == world / "teacher"
    assert resolve("toy:lrm", str(tmp_path)) == world / "lrm"
    assert resolve("toy:world", str(tmp_path)) == world and len(built) == 1                # cached after one build
    assert json.loads((world / "world.json").read_text()) == {"key": WorldConfig().key()}
    with pytest.raises(ModelSourceError, match="'toy:student' is not allowed; allowed: toy:teacher, toy:lrm, toy:world"):
        resolve("toy:student", str(tmp_path))


def test_source_schemes_are_registered_with_checked_names():
    from rglcd.plugins import SOURCES, register_source, source_handler
    from rglcd.toy.sources import data_source

    assert source_handler("data", "toy:shapes") is data_source
    assert source_handler("data", "s3://bucket/shards") is None and source_handler("model", "tiny:epsilon") is None
    with pytest.raises(ValueError, match="source kind 'weights' is not allowed"):
        register_source("weights", "my", "pkg.mod:fn")
    with pytest.raises(ValueError, match="is not allowed; allowed: a lower-case scheme"):
        register_source("data", "My Scheme", "pkg.mod:fn")
    with pytest.raises(ValueError, match="already registered as rglcd.toy.sources:data_source"):
        register_source("data", "toy", "pkg.mod:other")
    register_source("data", "toy", SOURCES["data"]["toy"])                                # same entry: a no-op


def test_the_tiny_preset_runs_the_method_in_the_toy_world():
    """`make run`'s preset: every reference it holds resolves through the toy sources, the expert and the
    gate read the toy reward (docs/method.md 11.6)."""
    from rglcd.config import load_config
    from rglcd.plugins import source_handler
    from rglcd.toy import sources

    cfg = load_config("tiny")
    refs = {"model": [cfg.model.teacher, cfg.lrm.checkpoint], "data": [cfg.data.train],
            "prompts": [cfg.data.prompts], "reference": [cfg.eval.fid_reference]}
    for kind, values in refs.items():
        for value in values:
            handler = {"model": "model_dir", "data": "data_source", "prompts": "prompts", "reference": "reference_dir"}
            assert source_handler(kind, value) is getattr(sources, handler[kind]), (kind, value)
    assert (cfg.reward.name, cfg.reward.weights, cfg.reward.guidance) == ("toy", "toy:world", "direct")
    assert source_handler("prompts", cfg.eval.prompts) is sources.prompts and cfg.eval.num_prompts == 4 * 48
    assert cfg.eval.rewards == ["toy"] and cfg.eval.reward_weights == {"toy": "toy:world"}
    assert cfg.eval.gate_reward == "toy" and cfg.eval.gate_min_reward_margin == 0.0
    assert cfg.eval.hps_benchmark is None and cfg.eval.clip_model is None
