"""HPSv2.1 and CLIPScore: an open_clip ViT-H-14 scored on differentiably preprocessed tensors.

HPSv2.1 (Wu et al. 2023) = open_clip `ViT-H-14` + `HPS_v2.1_compressed.pt` ({'state_dict': ...}, hub
`xswu/HPSv2`), which loads strictly into open_clip's ViT-H-14 (docs/method.md 9.4); letterbox
preprocessing as hpsv2's ResizeMaxSize. CLIPScore = ViT-H-14 `laion2b_s32b_b79k`, resize shorter side
+ center crop as open_clip's own preprocess. Reward = cosine (docs/method.md 3.3); logits = cosine * exp(logit_scale).

`weights="tiny"` writes a tiny random model of a registered open_clip config to the cache in the real
checkpoint's format and loads it by path through the same code, so tests exercise the real loader.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from rglcd.fsutil import build_once
from rglcd.rewards.base import RewardModel, freeze
from rglcd.rewards.preprocess import ResizeMode, clip_preprocess
from rglcd.rewards.weights import RewardWeightsError, load_strict, load_weights_file, resolve_weight_file

ARCH = "ViT-H-14"
TINY_ARCH = "rglcd-tiny-clip"
# Same input size (224) and tokenizer as ViT-H-14, so preprocessing and tokenization are the real ones.
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}


@dataclass(frozen=True)
class OpenClipSpec:
    name: str
    resize: ResizeMode
    hub_repo: str
    filename: str
    what: str


HPS = OpenClipSpec("hpsv2.1", "letterbox", "xswu/HPSv2", "HPS_v2.1_compressed.pt", "HPSv2.1")
CLIPSCORE = OpenClipSpec("clipscore", "shorter_crop", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
                         "open_clip_model.safetensors", "CLIPScore (open_clip ViT-H-14 laion2b_s32b_b79k)")


def register_tiny_arch() -> str:
    """Register the tiny config with open_clip's model registry (idempotent)."""
    open_clip.factory._MODEL_CONFIGS.setdefault(TINY_ARCH, copy.deepcopy(TINY_CONFIG))
    return TINY_ARCH


class OpenClipReward(RewardModel):
    """An open_clip CLIP model as a reward: cosine(image, text) on tensors preprocessed by `resize`."""

    def __init__(self, model: torch.nn.Module, tokenizer, resize: ResizeMode, antialias: bool, name: str):
        super().__init__()
        self.model, self.tokenizer, self.resize, self.antialias, self.name = model, tokenizer, resize, antialias, name
        self.image_size = int(model.visual.image_size[0])

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, 224, 224) normalised, in the model's dtype."""
        return clip_preprocess(images, self.image_size, self.resize, self.antialias).to(self.dtype)

    def encode_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(self.preprocess(x.to(self.device)))          # (B, D)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(prompts).to(self.device))     # (N, D)


def create_model(arch: str) -> torch.nn.Module:
    """`open_clip.create_model(arch)` with random init, without its 'initialized randomly' warning
    (the weights are loaded right after)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        return open_clip.create_model(arch, pretrained=None)
    finally:
        logging.disable(previous)


def _arch_for(state_dict: dict[str, torch.Tensor], source: str) -> str:
    """Which known architecture a checkpoint is for (ViT-H-14, or the tiny test config)."""
    conv = state_dict.get("visual.conv1.weight")
    for arch in (ARCH, register_tiny_arch()):
        v = open_clip.get_model_config(arch)["vision_cfg"]
        if conv is not None and tuple(conv.shape) == (v["width"], 3, v["patch_size"], v["patch_size"]):
            return arch
    shape = None if conv is None else tuple(conv.shape)
    raise RewardWeightsError(f"{source}: not an open_clip {ARCH} checkpoint (visual.conv1.weight has shape {shape})")


def _save_state_dict(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    else:
        torch.save({"state_dict": state_dict}, path)


def tiny_checkpoint(spec: OpenClipSpec, cache_dir: str, seed: int = 0) -> Path:
    """A tiny random checkpoint in the real one's format (`spec.filename`), built once per cache."""
    def build(tmp: Path) -> None:
        with torch.random.fork_rng():  # the caller's RNG stream is left as it was
            torch.manual_seed(seed)
            model = create_model(register_tiny_arch())
        _save_state_dict(model.state_dict(), tmp / spec.filename)

    folder = build_once(cache_dir, f"tiny-{spec.name}-v1", build, ready=lambda path: (path / spec.filename).is_file())
    return folder / spec.filename


def load_open_clip_reward(spec: OpenClipSpec, weights: str | None = None, *, antialias: bool = False,
                          device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                          cache_dir: str = "~/.cache/rglcd") -> OpenClipReward:
    """Build the architecture the checkpoint is for, load it strictly, freeze it."""
    if weights == "tiny":
        path = tiny_checkpoint(spec, cache_dir)
    else:
        path = resolve_weight_file(weights, spec.filename, spec.hub_repo, cache_dir, spec.what)
    state_dict = load_weights_file(path)
    arch = _arch_for(state_dict, str(path))
    model = create_model(arch)
    load_strict(model, state_dict, str(path), f"open_clip {arch}")
    reward = OpenClipReward(model, open_clip.get_tokenizer(arch), spec.resize, antialias, spec.name)
    return freeze(reward.to(device=device, dtype=dtype))


def load_hps(weights: str | None = None, **kwargs) -> OpenClipReward:
    """HPSv2.1 (always v2.1: never hpsv2's v2.0 default, docs/method.md 7.5)."""
    return load_open_clip_reward(HPS, weights, **kwargs)


def load_clipscore(weights: str | None = None, **kwargs) -> OpenClipReward:
    return load_open_clip_reward(CLIPSCORE, weights, **kwargs)
