"""Reward models: one interface, differentiable preprocessing twin of each RM's own PIL pipeline, safe loading."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image


from rglcd.rewards import MissingRewardWeights, RewardWeightsError, available_rewards, load_reward
from rglcd.rewards.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_preprocess

PROMPTS = ["a photo of a cat", "an astronaut riding a horse"]
IMAGE_REWARDS = ["hpsv2.1", "clipscore", "pickscore", "imagereward"]


@pytest.fixture(scope="module")
def rewards(model_cache):
    return {name: load_reward(name, "tiny", cache_dir=model_cache) for name in IMAGE_REWARDS}


def _photos():
    import skimage.data as sd

    return {"astronaut": sd.astronaut(), "chelsea": sd.chelsea()}    # 512x512 and 300x451 (non-square)


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255    # (1, 3, H, W) in [0, 1]


# ---------------------------------------------------------------- registry

def test_registry_names_and_unknown_name():
    assert set(IMAGE_REWARDS + ["lrm", "toy"]) == set(available_rewards())
    with pytest.raises(ValueError, match="'hpsv2' is not known; allowed: hpsv2.1, pickscore"):
        load_reward("hpsv2")


def test_a_registered_reward_is_loaded_by_name_and_allowed_in_configs(monkeypatch):
    from rglcd import plugins
    from rglcd.config import ConfigError, load_config

    monkeypatch.setattr(plugins, "REWARDS", dict(plugins.REWARDS))       # this test's registrations only
    with pytest.raises(ConfigError, match="reward.name: 'ones' is not allowed; allowed: none, hpsv2.1"):
        load_config("tiny-random", overrides=["reward.name=ones"])
    plugins.register_reward("ones", "tests.test_rewards:_ones_reward")
    plugins.register_reward("ones", "tests.test_rewards:_ones_reward")      # the same entry again: no-op
    cfg = load_config("tiny-random", overrides=["reward.name=ones", "eval.rewards=[ones, lrm]", "eval.gate_reward=ones"])
    rm = load_reward(cfg.reward.name, "w", device="cpu")
    assert rm.weights == "w" and rm.score(torch.zeros(2, 3, 8, 8), ["a", "b"]).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="'ones' is already registered as tests.test_rewards:_ones_reward"):
        plugins.register_reward("ones", "elsewhere:load")
    with pytest.raises(ValueError, match="target 'no colon' is not allowed; allowed: 'module:function'"):
        plugins.register_reward("x", "no colon")
    plugins.register_reward("latent-only", "m:f", input_kind="latent")
    with pytest.raises(ConfigError, match="reward.name: 'latent-only' is not allowed"):   # not an image expert
        load_config("tiny-random", overrides=["reward.name=latent-only"])


class _Ones(torch.nn.Module):
    input_kind = "image"

    def __init__(self, weights):
        super().__init__()
        self.weights = weights

    def score(self, x, prompts):
        return torch.ones(len(prompts))


def _ones_reward(weights, *, antialias, device, dtype, cache_dir):
    return _Ones(weights)


@pytest.mark.slow
def test_choosing_one_reward_does_not_import_the_others(rewards, model_cache):
    # `rewards` filled the cache, so the tiny PickScore loads like a real one: no open_clip BPE file needed
    code = (
        "import sys; import rglcd.rewards as r\n"
        "assert 'open_clip' not in sys.modules and 'transformers' not in sys.modules\n"
        f"r.load_reward('pickscore', 'tiny', cache_dir={model_cache!r})\n"
        "print('open_clip' in sys.modules, 'ImageReward' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]


def test_every_reward_has_the_interface(rewards):
    for name, rm in rewards.items():
        assert rm.input_kind == "image"
        assert not rm.training and not any(p.requires_grad for p in rm.parameters()), name
        x = torch.rand(2, 3, 48, 64)
        score, logits = rm.score(x, PROMPTS), rm.logits(x, PROMPTS)
        assert score.shape == (2,) and score.dtype == torch.float32 and torch.isfinite(score).all(), name
        torch.testing.assert_close(logits, score * rm.logit_scale.exp().float())


def test_bad_inputs_are_refused_with_clear_errors(rewards):
    rm = rewards["hpsv2.1"]
    with pytest.raises(ValueError, match=r"expected images in \[0, 1\] of shape \(B, 3, H, W\), got \(2, 4, 8, 8\)"):
        rm.score(torch.rand(2, 4, 8, 8), PROMPTS)
    with pytest.raises(ValueError, match="need one prompt per input \\(2\\), got 1"):
        rm.score(torch.rand(2, 3, 8, 8), PROMPTS[:1])


# ---------------------------------------------------------------- scores = the model's own cosine

def test_open_clip_scores_equal_direct_cosine(rewards):
    x = torch.rand(2, 3, 40, 56)
    for name, mode in (("hpsv2.1", "letterbox"), ("clipscore", "shorter_crop")):
        rm = rewards[name]
        pixels = clip_preprocess(x, 224, mode, antialias=False)
        with torch.no_grad():
            img = rm.model.encode_image(pixels)
            txt = rm.model.encode_text(rm.tokenizer(PROMPTS))
        direct = (F.normalize(img, dim=-1) * F.normalize(txt, dim=-1)).sum(-1)
        torch.testing.assert_close(rm.score(x, PROMPTS), direct, rtol=0, atol=1e-6)


def test_pickscore_equals_transformers_clip_forward(rewards):
    rm = rewards["pickscore"]
    x = torch.rand(2, 3, 40, 56)
    tok = rm.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = rm.model(input_ids=tok.input_ids, attention_mask=tok.attention_mask,
                       pixel_values=clip_preprocess(x, 224, "shorter_crop", antialias=False))
    direct = out.logits_per_image.diagonal() / rm.model.logit_scale.exp()   # official PickScore / exp(scale)
    torch.testing.assert_close(rm.score(x, PROMPTS), direct, rtol=0, atol=1e-6)
    torch.testing.assert_close(rm.logits(x, PROMPTS), out.logits_per_image.diagonal(), rtol=1e-5, atol=1e-5)


def test_repeated_prompts_are_encoded_once(rewards):
    rm = rewards["clipscore"]
    calls = []
    original = rm.encode_prompts
    rm.encode_prompts = lambda prompts: calls.append(list(prompts)) or original(prompts)
    try:
        x = torch.rand(6, 3, 32, 32)
        score = rm.score(x, PROMPTS * 3)
    finally:
        del rm.encode_prompts
    assert calls == [PROMPTS]
    torch.testing.assert_close(score, torch.cat([rm.score(x[i:i + 2], PROMPTS) for i in (0, 2, 4)]))


# ---------------------------------------------------------------- preprocessing vs the RMs' PIL pipelines

def _hpsv2_val_transform(image: Image.Image) -> torch.Tensor:
    """hpsv2's eval transform: ToTensor -> ResizeMaxSize(224, bicubic, fill 0) on the tensor -> Normalize."""
    import torchvision.transforms as T
    import torchvision.transforms.functional as TF

    x = T.ToTensor()(image)
    h, w = x.shape[1:]
    scale = 224 / max(h, w)
    new = (round(h * scale), round(w * scale))
    x = TF.resize(x, list(new), T.InterpolationMode.BICUBIC)
    pad_h, pad_w = 224 - new[0], 224 - new[1]
    x = TF.pad(x, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return T.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)(x)


def _shorter_crop_references() -> dict:
    """Each RM's own PIL preprocessing: open_clip's (CLIPScore), CLIPImageProcessor (PickScore), and
    ImageReward's `_transform` (Resize(224, bicubic) + CenterCrop(224) + ToTensor + Normalize)."""
    import open_clip
    import torchvision.transforms as T
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor()
    imagereward = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                             T.ToTensor(), T.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])
    return {"clipscore": open_clip.image_transform(224, is_train=False),
            "pickscore": lambda im: processor(im, return_tensors="pt")["pixel_values"][0],
            "imagereward": imagereward}


@pytest.mark.parametrize("photo", ["astronaut", "chelsea"])
def test_hps_letterbox_matches_hpsv2_transform(photo):
    array = _photos()[photo]
    ours = clip_preprocess(_to_tensor(array), 224, "letterbox", antialias=True)[0]
    theirs = _hpsv2_val_transform(Image.fromarray(array))
    assert ours.shape == theirs.shape == (3, 224, 224)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)   # same torch resize: equal to float rounding


@pytest.mark.parametrize("photo", ["astronaut", "chelsea"])
def test_shorter_side_crop_matches_pil_pipelines(photo):
    """Tolerance (normalised units, ~3.7 per unit of [0, 1]): mean |diff| < 0.006 and max < 0.25.
    The residual is PIL's uint8 rounding between its two separable passes and its clipping of bicubic
    overshoot at sharp edges (max 0.20 on astronaut, 0.02 on chelsea; mean 0.004 on both)."""
    array = _photos()[photo]
    x = _to_tensor(array)
    ours = clip_preprocess(x, 224, "shorter_crop", antialias=True)[0]
    aliased = clip_preprocess(x, 224, "shorter_crop", antialias=False)[0]
    for name, reference in _shorter_crop_references().items():
        theirs = reference(Image.fromarray(array))
        diff = (ours - theirs).abs()
        assert theirs.shape == (3, 224, 224), name
        assert diff.mean() < 0.006 and diff.max() < 0.25, (name, diff.mean().item(), diff.max().item())
        # the switch matters: without antialiasing the downsample is > 3x further from PIL's
        assert (aliased - theirs).abs().mean() > 3 * diff.mean(), name


def test_reward_models_use_their_preprocessing(rewards):
    x = torch.rand(1, 3, 30, 50)
    assert torch.equal(rewards["hpsv2.1"].preprocess(x), clip_preprocess(x, 224, "letterbox", False))
    for name in ("clipscore", "pickscore", "imagereward"):
        assert torch.equal(rewards[name].preprocess(x), clip_preprocess(x, 224, "shorter_crop", False)), name


def test_antialias_switch_reaches_preprocessing(model_cache):
    x = torch.rand(1, 3, 512, 512)
    rm = load_reward("hpsv2.1", "tiny", antialias=True, cache_dir=model_cache)
    assert rm.antialias and torch.equal(rm.preprocess(x), clip_preprocess(x, 224, "letterbox", True))
    assert not torch.allclose(rm.preprocess(x), clip_preprocess(x, 224, "letterbox", False))


# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize("name", IMAGE_REWARDS)
def test_gradients_reach_the_image_only(rewards, name):
    rm = rewards[name]
    x = torch.rand(2, 3, 48, 48, requires_grad=True)
    rm.score(x, PROMPTS).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in rm.parameters())
    if name != "imagereward":   # cross-attention RM: its prompt is only token ids
        assert not rm.text_features(PROMPTS).requires_grad


def test_imagereward_hinge_and_raw_score(rewards):
    rm = rewards["imagereward"]
    assert rm.name == "imagereward-tiny-standin" and not rm.has_logit_scale
    x = torch.rand(2, 3, 32, 32)
    r = rm.raw_score(x, PROMPTS)
    torch.testing.assert_close(rm.score(x, PROMPTS), torch.clamp(r - 2, max=0))
    core = rm.core
    try:   # shift the normalisation so that r > 2: the hinged reward is 0 and passes no gradient
        core.mean = core.mean - 10.0
        x.requires_grad_(True)
        score = rm.score(x, PROMPTS)
        assert (rm.raw_score(x, PROMPTS) > 2).all() and torch.equal(score.detach(), torch.zeros(2))
        score.sum().backward()
        assert torch.equal(x.grad, torch.zeros_like(x))
    finally:
        core.mean = core.mean + 10.0


def test_real_imagereward_without_package_names_the_install(model_cache):
    import importlib.util

    if importlib.util.find_spec("ImageReward") is not None:
        pytest.skip("ImageReward is installed here")
    with pytest.raises(ModuleNotFoundError, match="pip install image-reward"):
        load_reward("imagereward", cache_dir=model_cache)


# ---------------------------------------------------------------- weights: by path, missing, unsafe, offline

class Payload:
    """Not a tensor: torch.load(weights_only=True) must refuse to rebuild it."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _tiny_hps_state(model_cache):
    return load_reward("hpsv2.1", "tiny", cache_dir=model_cache).model.state_dict()


def test_hps_loads_a_saved_checkpoint_by_path(rewards, model_cache, tmp_path):
    state = {k: v + 0.01 * torch.randn_like(v) for k, v in _tiny_hps_state(model_cache).items()}
    path = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": state}, path)
    rm = load_reward("hpsv2.1", str(path))
    for k, v in rm.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    x = torch.rand(2, 3, 32, 48)
    assert not torch.allclose(rm.score(x, PROMPTS), rewards["hpsv2.1"].score(x, PROMPTS))
    # a directory holding the file, and a DDP-style 'module.' prefix, load the same weights
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    torch.testing.assert_close(load_reward("hpsv2.1", str(tmp_path)).score(x, PROMPTS), rm.score(x, PROMPTS))


def test_checkpoint_that_does_not_fit_is_refused(model_cache, tmp_path):
    state = _tiny_hps_state(model_cache)
    state.pop("text_projection")
    path = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(RewardWeightsError, match=r"HPS_v2.1_compressed.pt does not fit the open_clip rglcd-tiny-clip"):
        load_reward("hpsv2.1", str(path))
    torch.save({"state_dict": {"visual.conv1.weight": torch.zeros(7, 3, 5, 5)}}, path)
    with pytest.raises(RewardWeightsError, match=r"not an open_clip ViT-H-14 checkpoint .*\(7, 3, 5, 5\)"):
        load_reward("hpsv2.1", str(path))


def test_missing_weight_file_names_file_and_source(tmp_path):
    missing = tmp_path / "HPS_v2.1_compressed.pt"
    with pytest.raises(MissingRewardWeights, match=r"HPS_v2.1_compressed.pt does not exist.*xswu/HPSv2") as err:
        load_reward("hpsv2.1", str(missing))
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(MissingRewardWeights, match="no config.json"):
        load_reward("pickscore", str(tmp_path))


def test_weights_only_refuses_arbitrary_pickles(model_cache, tmp_path):
    path = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": _tiny_hps_state(model_cache), "extra": Payload()}, path)
    with pytest.raises(RewardWeightsError, match=r"refused to load.*weights_only=True"):
        load_reward("hpsv2.1", str(path))
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(RewardWeightsError, match="not a readable torch checkpoint"):
        load_reward("hpsv2.1", str(tmp_path / "junk.pt"))


@pytest.mark.parametrize("name,repo", [("hpsv2.1", "xswu/HPSv2"),
                                       ("clipscore", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
                                       ("pickscore", "yuvalkirstain/PickScore_v1")])
def test_default_hub_weights_fail_fast_offline(tmp_path, name, repo):
    with pytest.raises(MissingRewardWeights, match=f"cannot load '{repo}'.*no network"):
        load_reward(name, cache_dir=str(tmp_path))


def test_hps_weights_from_s3(s3_remote, model_cache, tmp_path, monkeypatch):
    """An s3:// URI of the checkpoint file, served by a real (moto) S3 server on loopback."""
    import io

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_remote.server.endpoint_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    state = {k: v * 0.5 for k, v in _tiny_hps_state(model_cache).items()}
    buffer = io.BytesIO()
    torch.save({"state_dict": state}, buffer)
    s3_remote.server.client().put_object(Bucket=s3_remote.bucket, Key="rm/HPS_v2.1_compressed.pt",
                                         Body=buffer.getvalue())
    rm = load_reward("hpsv2.1", f"s3://{s3_remote.bucket}/rm/HPS_v2.1_compressed.pt", cache_dir=str(tmp_path))
    assert all(torch.equal(v, state[k]) for k, v in rm.model.state_dict().items())
    with pytest.raises(MissingRewardWeights, match="no objects under this prefix"):
        load_reward("hpsv2.1", f"s3://{s3_remote.bucket}/nothing/HPS_v2.1_compressed.pt", cache_dir=str(tmp_path))
    bucket_cache = tmp_path / "s3" / s3_remote.bucket
    assert sorted(p.name for p in bucket_cache.iterdir() if not p.name.endswith(".lock")) == ["rm"]  # no half copy


def test_params_frozen_takes_several_modules_and_restores_each_flag():
    from rglcd.rewards import params_frozen

    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    b.bias.requires_grad_(False)                              # already frozen: must stay frozen
    x = torch.randn(3, 2, requires_grad=True)
    with params_frozen(a, None, b):
        assert not any(p.requires_grad for p in [*a.parameters(), *b.parameters()])
        y = b(a(x)).sum()
    (gx,) = torch.autograd.grad(y, x)                         # the graph reaches the input only
    assert gx.abs().sum() > 0 and all(p.grad is None for p in [*a.parameters(), *b.parameters()])
    assert a.weight.requires_grad and a.bias.requires_grad and b.weight.requires_grad
    assert not b.bias.requires_grad
