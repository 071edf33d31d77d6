"""The latent reward model: open_clip registration, latent sizes, pretraining, online fine-tuning, checkpoints."""
from __future__ import annotations

import json

import open_clip
import pytest
import torch
from torch import nn


from rglcd.lrm import (latent_size_for, load_lrm, load_lrm_optimizer, lrm_finetune_step,
                       make_lrm_optimizer, new_lrm, pair_kl, permute_with_captions, pretrain_lrm, save_lrm,
                       unlock_for_finetune, unpermute)
from rglcd.lrm.pretrain import load_vae
from rglcd.rewards import load_reward

CAPTIONS = ["a red sports car", "a cat sleeping on a sofa", "mountains at sunset", "a bowl of ramen",
            "an astronaut in space", "a lighthouse in a storm", "children playing football", "an old oak tree"]


@pytest.fixture(scope="module")
def cfg(model_cache):
    from rglcd.config import load_config

    return load_config("tiny-random", overrides=[f"model.cache_dir={model_cache}"])


@pytest.fixture(scope="module")
def vae(cfg):
    return load_vae(cfg.model.teacher, cfg.model.cache_dir)


@pytest.fixture(scope="module")
def expert(model_cache):
    return load_reward("hpsv2.1", "tiny", cache_dir=model_cache)


def _lrm(cfg, size=16, seed=0):
    torch.manual_seed(seed)
    return new_lrm(cfg.lrm, size, {"resolution": size * 2})


def _latents(n=8, size=16, seed=0):
    return 3 * torch.randn(n, 4, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- architecture

@pytest.mark.parametrize("resolution,factor,size", [(32, 2, 16), (512, 8, 64), (768, 8, 96)])
def test_positional_embeddings_follow_the_latent_resolution(cfg, resolution, factor, size):
    assert latent_size_for(resolution, factor) == size
    lrm = _lrm(cfg, size)
    grid = size // cfg.lrm.patch_size
    assert lrm.model.visual.positional_embedding.shape == (grid * grid + 1, cfg.lrm.width)
    assert lrm.model.visual.conv1.in_channels == 4 and lrm.input_kind == "latent"
    score = lrm.score(torch.randn(2, 4, size, size), CAPTIONS[:2])
    assert score.shape == (2,) and torch.isfinite(score).all()
    with pytest.raises(ValueError, match=f"expects latents of {size}x{size}"):
        lrm.score(torch.randn(2, 4, size + 8, size + 8), CAPTIONS[:2])


def test_config_is_registered_with_open_clip(cfg):
    lrm = _lrm(cfg)
    name = lrm.meta["open_clip_name"]
    assert name in open_clip.list_models()
    registered = open_clip.get_model_config(name)
    assert registered["vision_cfg"]["image_size"] == 16 and registered["vision_cfg"]["patch_size"] == cfg.lrm.patch_size
    assert registered["text_cfg"]["layers"] == cfg.lrm.text_layers and registered["embed_dim"] == cfg.lrm.embed_dim
    with pytest.raises(ValueError, match="lrm.patch_size: 4 does not divide the latent size 18"):
        new_lrm(cfg.lrm, 18)


def test_method_defaults_give_the_reference_architecture():
    """docs/method.md 4.1 defaults -> RG-LCD's latent_ViT: patch 4, width 512, 12 layers, 8 heads, embed 1024,
    ViT-H-14's text tower; 64x64 latents for 512 px."""
    from rglcd.config import LRMConfig
    from rglcd.lrm import open_clip_config

    assert open_clip_config(LRMConfig(), latent_size_for(512, 8)) == {
        "embed_dim": 1024,
        "vision_cfg": {"image_size": 64, "patch_size": 4, "width": 512, "layers": 12, "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24},
    }
    assert open_clip_config(LRMConfig(), latent_size_for(768, 8))["vision_cfg"]["image_size"] == 96


# ---------------------------------------------------------------- gradients through the LRM (student side)

def test_score_gradients_reach_latents_not_the_lrm(cfg):
    lrm = _lrm(cfg)
    names = unlock_for_finetune(lrm, 1, 1)                  # trainable params exist, as during RG-LCD
    x = _latents(2).requires_grad_(True)
    lrm.score(x, CAPTIONS[:2]).sum().backward()
    assert x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    assert all(p.grad is None for p in lrm.parameters())
    assert [n for n, p in lrm.named_parameters() if p.requires_grad] == names   # restored afterwards
    assert not lrm.text_features(CAPTIONS[:2]).requires_grad


# ---------------------------------------------------------------- pretraining

def test_contrastive_pretraining_lowers_the_loss(cfg, vae, tmp_path):
    from dataclasses import replace

    latents, images = _latents(8), torch.rand(8, 3, 32, 32) * 2 - 1
    run = replace(cfg, lrm=replace(cfg.lrm, pretrain_steps=10))
    result = pretrain_lrm(run, [(latents, CAPTIONS)], tmp_path / "lrm", vae=vae, device="cpu")
    losses = result["losses"]
    assert len(losses) == 10 and losses[0] > 1.5                        # ~ln 8 at random init
    assert losses[-1] < 0.75 * losses[0], losses
    meta = json.loads((tmp_path / "lrm" / "lrm_config.json").read_text())
    assert meta["pretrain"]["steps"] == 10 and meta["latent_size"] == 16 and meta["teacher"] == "tiny:epsilon"
    assert meta["rglcd_config"]["lrm"]["pretrain_steps"] == 10
    # images in [-1, 1] (and rglcd.data batch dicts) go through the teacher's VAE
    batch = {"pixel_values": images, "captions": CAPTIONS, "index": torch.arange(8)}
    assert pretrain_lrm(replace(run, lrm=replace(cfg.lrm, pretrain_steps=1)), [batch], tmp_path / "b", vae=vae)["steps"] == 1
    with pytest.raises(ValueError, match="example 3 has an empty caption"):
        pretrain_lrm(run, [{**batch, "captions": CAPTIONS[:3] + [""] + CAPTIONS[4:]}], tmp_path / "c", vae=vae)
    with pytest.raises(ValueError, match="need 32x32 px"):
        pretrain_lrm(run, [(torch.rand(8, 3, 64, 64), CAPTIONS)], tmp_path / "d", vae=vae)
    with pytest.raises(ValueError, match="need 16x16"):
        pretrain_lrm(run, [(torch.rand(8, 8, 32, 32), CAPTIONS)], tmp_path / "d", vae=vae)


# ---------------------------------------------------------------- online fine-tuning

def test_unlocked_parts_match_open_clip_lock_functions(cfg):
    lrm = _lrm(cfg)
    ours = set(unlock_for_finetune(lrm, 1, 1))
    lrm.model.requires_grad_(True)
    lrm.model.lock_image_tower(unlocked_groups=2)           # last block + ln_post, proj
    lrm.model.lock_text_tower(unlocked_layers=2)            # last block + ln_final, text_projection
    theirs = {n for n, p in lrm.named_parameters() if p.requires_grad} | {"model.logit_scale"}
    assert ours == theirs
    assert any(n.startswith("model.visual.transformer.resblocks.1.") for n in ours)
    assert not any(n.startswith(("model.visual.transformer.resblocks.0.", "model.transformer.resblocks.0.",
                                 "model.token_embedding", "model.visual.conv1")) for n in ours)
    assert set(unlock_for_finetune(lrm, 0, 0)) == {"model.visual.ln_post.weight", "model.visual.ln_post.bias",
                                                  "model.visual.proj", "model.ln_final.weight", "model.ln_final.bias",
                                                  "model.text_projection", "model.logit_scale"}
    with pytest.raises(ValueError, match=r"lrm.unlocked_text_blocks: 3 is out of range for this LRM; allowed: 0..2"):
        unlock_for_finetune(lrm, 1, 3)


def test_finetuning_updates_only_the_unlocked_blocks(cfg, vae, expert):
    lrm = _lrm(cfg)
    optimizer = make_lrm_optimizer(lrm, cfg)
    before = {n: p.detach().clone() for n, p in lrm.named_parameters()}
    allowed = {n for n, p in lrm.named_parameters() if p.requires_grad}
    z = _latents(6)
    out = lrm_finetune_step(lrm, optimizer, expert, vae, z, 0.5 * z, z + 1, CAPTIONS[:6], cfg,
                            generator=torch.Generator().manual_seed(0))
    changed = {n for n, p in lrm.named_parameters() if not torch.equal(p, before[n])}
    assert changed == allowed
    assert out["lrm_loss"] > 0 and 0 <= out["lrm_acc"] <= 1 and set(out) == {"lrm_loss", "lrm_acc", "lrm_logit_scale"}
    assert all(p.grad is None for p in lrm.parameters())


def test_finetuning_learns_the_experts_preferences(cfg, tmp_path):
    """Repeated steps on one batch drive the KL down. The expert here is another (frozen, random) LRM,
    a latent-kind expert, so no VAE decode is needed and the test stays fast."""
    from dataclasses import replace

    save_lrm(_lrm(cfg, seed=1), tmp_path / "teacher-lrm")
    expert = load_reward("lrm", str(tmp_path / "teacher-lrm"))
    run = replace(cfg, lrm=replace(cfg.lrm, lr=3e-3, unlocked_visual_blocks=2, unlocked_text_blocks=2))
    lrm = _lrm(run)
    optimizer = make_lrm_optimizer(lrm, run)
    z = _latents(4)
    g = torch.Generator().manual_seed(0)
    losses = [lrm_finetune_step(lrm, optimizer, expert, None, z, -z, z.flip(-1), CAPTIONS[:4], run, generator=g)["lrm_loss"]
              for _ in range(6)]
    assert min(losses[-2:]) < 0.5 * losses[0], losses


def test_pair_kl_by_hand():
    expert = torch.tensor([[2.0], [0.0], [1.0]])             # P, T, G logits of one caption
    lrm = torch.tensor([[0.0], [0.0], [0.0]])
    loss, acc = pair_kl(expert, lrm)
    p = torch.sigmoid(torch.tensor([2.0, 1.0, -1.0]))          # expert P(a > b) for (P,T), (P,G), (T,G)
    kl = (p * torch.log(p / 0.5) + (1 - p) * torch.log((1 - p) / 0.5)).sum()
    torch.testing.assert_close(loss, kl)
    assert acc.item() == pytest.approx(2 / 3)   # expert prefers P, P, G; the tied LRM argmax picks the first
    assert pair_kl(expert, expert)[0].item() == pytest.approx(0.0, abs=1e-7)


class RecordingExpert(nn.Module):
    """A latent-kind stub expert: logits = the latent's fill value, and it records what it was shown."""

    input_kind, has_logit_scale = "latent", True

    def __init__(self):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.seen: list[tuple[float, str]] = []

    def logits(self, x, prompts):
        values = x.flatten(1)[:, 0]
        self.seen += list(zip(values.tolist(), prompts))
        return values


def test_captions_stay_aligned_with_their_latents(cfg):
    n = 4
    rows = torch.arange(3 * n, dtype=torch.float32)
    latents, captions = rows.view(-1, 1, 1, 1).expand(-1, 4, 16, 16), [f"row {int(i)}" for i in rows]
    shuffled, caps, perm = permute_with_captions(latents, captions, torch.Generator().manual_seed(1))
    assert not torch.equal(perm, torch.arange(3 * n))
    assert all(c == f"row {int(v)}" for v, c in zip(shuffled[:, 0, 0, 0], caps))
    assert torch.equal(unpermute(shuffled[:, 0, 0, 0], perm), rows)

    # the full step: P, T, G of caption i carry fills i, 100 + i, 200 + i; the expert must see each with caption i
    lrm, expert = _lrm(cfg), RecordingExpert()
    fill = torch.arange(n, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 4, 16, 16)
    prompts = [f"caption {i}" for i in range(n)]
    lrm_finetune_step(lrm, make_lrm_optimizer(lrm, cfg), expert, None, fill, fill + 100, fill + 200, prompts, cfg,
                      generator=torch.Generator().manual_seed(3))
    assert len(expert.seen) == 3 * n
    assert all(caption == f"caption {int(value) % 100}" for value, caption in expert.seen), expert.seen
    assert [int(v) // 100 for v, _ in expert.seen] != sorted(int(v) // 100 for v, _ in expert.seen)  # shuffled


def test_imagereward_expert_is_scaled_by_the_lrm_temperature(cfg, vae, model_cache):
    from rglcd.lrm.finetune import expert_logits

    imagereward = load_reward("imagereward", "tiny", cache_dir=model_cache)
    lrm = _lrm(cfg)
    z = _latents(2)
    with torch.no_grad():
        lrm.logit_scale.fill_(1.5)
        images = (vae.decode(z).sample / 2 + 0.5).clamp(0, 1)
        expected = imagereward.score(images, CAPTIONS[:2]) * torch.exp(torch.tensor(1.5))
    torch.testing.assert_close(expert_logits(imagereward, vae, z, CAPTIONS[:2], lrm, chunk=2), expected)


# ---------------------------------------------------------------- checkpoints

def test_save_load_round_trip_with_optimizer_state(cfg, vae, expert, tmp_path):
    lrm = _lrm(cfg)
    optimizer = make_lrm_optimizer(lrm, cfg)
    z = _latents(4)
    lrm_finetune_step(lrm, optimizer, expert, vae, z, -z, z + 1, CAPTIONS[:4], cfg)
    save_lrm(lrm, tmp_path / "lrm", optimizer)
    assert sorted(p.name for p in (tmp_path / "lrm").iterdir()) == ["lrm_config.json", "model.safetensors", "optimizer.pt"]

    loaded = load_lrm(tmp_path / "lrm")
    assert torch.equal(loaded.score(z, CAPTIONS[:4]), lrm.score(z, CAPTIONS[:4]))
    restored = make_lrm_optimizer(loaded, cfg)
    load_lrm_optimizer(restored, loaded, tmp_path / "lrm")
    trainable = [p for p in lrm.parameters() if p.requires_grad]
    assert len(restored.state) == len(trainable) < sum(1 for _ in lrm.parameters())   # the LRM's, not another's
    for p_old, p_new in zip(trainable, [p for p in loaded.parameters() if p.requires_grad]):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(optimizer.state[p_old][key], restored.state[p_new][key])

    # saving again replaces the directory atomically; a student's optimizer is refused
    with pytest.raises(ValueError, match="optimizer does not hold the LRM's trainable parameters"):
        save_lrm(lrm, tmp_path / "lrm", torch.optim.AdamW([nn.Parameter(torch.zeros(1))]))
    assert load_lrm(tmp_path / "lrm").meta["optimizer"]["params"][0].startswith("model.")


def test_resaving_a_loaded_checkpoint_without_optimizer_drops_its_optimizer_entry(cfg, tmp_path):
    lrm = _lrm(cfg)
    save_lrm(lrm, tmp_path / "with", make_lrm_optimizer(lrm, cfg))
    loaded = load_lrm(tmp_path / "with")
    assert "optimizer" in loaded.meta                      # the loaded meta carries the entry along
    save_lrm(loaded, tmp_path / "without")
    assert sorted(p.name for p in (tmp_path / "without").iterdir()) == ["lrm_config.json", "model.safetensors"]
    assert "optimizer" not in json.loads((tmp_path / "without" / "lrm_config.json").read_text())
    reloaded = load_lrm(tmp_path / "without")
    with pytest.raises(FileNotFoundError, match="saved without an optimizer state"):
        load_lrm_optimizer(make_lrm_optimizer(reloaded, cfg), reloaded, tmp_path / "without")


def test_load_reward_lrm_is_frozen(cfg, tmp_path):
    save_lrm(_lrm(cfg), tmp_path / "lrm")
    rm = load_reward("lrm", str(tmp_path / "lrm"))
    assert rm.input_kind == "latent" and not any(p.requires_grad for p in rm.parameters())
    with pytest.raises(FileNotFoundError, match="lrm_config.json missing"):
        load_reward("lrm", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="'runs/nothing': no such directory"):
        load_reward("lrm", "runs/nothing")
    with pytest.raises(FileNotFoundError, match="needs a checkpoint directory"):
        load_reward("lrm")


def test_lrm_checkpoint_from_s3(cfg, s3_remote, tmp_path, monkeypatch):
    """An s3:// checkpoint prefix (what pipeline steps pass around), from a real (moto) S3 server."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_remote.server.endpoint_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    lrm = _lrm(cfg)
    folder = save_lrm(lrm, tmp_path / "lrm")
    client = s3_remote.server.client()
    for f in folder.iterdir():
        client.upload_file(str(f), s3_remote.bucket, f"models/lrm/{f.name}")
    loaded = load_reward("lrm", f"s3://{s3_remote.bucket}/models/lrm", cache_dir=str(tmp_path / "cache"))
    z = _latents(2)
    assert torch.equal(loaded.score(z, CAPTIONS[:2]), lrm.score(z, CAPTIONS[:2]))


# ---------------------------------------------------------------- CLI

def _photo_folder(root):
    import skimage.data as sd
    from PIL import Image

    root.mkdir()
    photos = {"astronaut": "Color image of the astronaut Eileen Collins", "chelsea": "Chelsea the cat",
              "coffee": "Coffee cup", "rocket": "Launch photo of DSCOVR on Falcon 9"}
    for name, caption in photos.items():
        Image.fromarray(getattr(sd, name)()).save(root / f"{name}.jpg")
        (root / f"{name}.txt").write_text(caption)
    return root


def test_cli_pretrains_from_an_image_folder(model_cache, tmp_path, capsys):
    from rglcd.cli import main

    data = _photo_folder(tmp_path / "photos")
    argv = ["pretrain-lrm", "--data", str(data), "--out", str(tmp_path / "lrm"), "--set", f"model.cache_dir={model_cache}",
            "--set", "lrm.pretrain_steps=2", "--set", "lrm.pretrain_batch_size=4", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{"):])
    assert summary["steps"] == 2 and summary["out_dir"] == str(tmp_path / "lrm")
    assert load_lrm(tmp_path / "lrm").latent_size == 16

    (data / "coffee.txt").unlink()
    assert main(argv) == 1
    assert "empty caption" in capsys.readouterr().err


def test_cli_and_pipeline_step_stream_the_data_the_same_way(tmp_path, monkeypatch, capsys):
    """`rglcd pretrain-lrm` and the pipeline's LRM step both go through `pretrain_lrm_from_data`, which streams
    with the config's batch size, resolution, seed, shuffle buffer and workers."""
    import rglcd.data
    import rglcd.lrm.pretrain
    from rglcd.cli import main

    specs, calls = [], []
    real_make_loader = rglcd.data.make_loader

    def make_loader(source, spec, num_workers=0):
        specs.append((spec, num_workers))
        return real_make_loader(source, spec, num_workers)

    def fake_pretrain(c, batches, out_dir, *, vae=None, device=None):
        calls.append((next(iter(batches))["captions"], str(out_dir), device))
        return {"steps": 1, "first_loss": 1.0, "last_loss": 1.0, "losses": [1.0], "out_dir": str(out_dir)}

    monkeypatch.setattr(rglcd.data, "make_loader", make_loader)
    monkeypatch.setattr(rglcd.lrm.pretrain, "pretrain_lrm", fake_pretrain)
    argv = ["pretrain-lrm", "--data", "builtin:photos:4", "--out", str(tmp_path / "lrm"), "--preset", "tiny-random",
            "--set", "data.shuffle_buffer=3", "--set", "lrm.pretrain_batch_size=2", "--set", "train.seed=5",
            "--device", "cpu"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["out_dir"] == str(tmp_path / "lrm")
    (spec, workers), = specs
    assert (spec.shuffle_buffer, spec.batch_size, spec.seed, spec.resolution, workers) == (3, 2, 5, 32, 0)
    assert len(calls[0][0]) == 2 and calls[0][1:] == (str(tmp_path / "lrm"), torch.device("cpu"))
