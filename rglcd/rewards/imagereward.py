"""ImageReward (Xu et al. 2023): BLIP image encoder + BERT text encoder with cross-attention + MLP head.

The real model comes from the `ImageReward` package (`pip install image-reward`, imported only when
this reward is chosen) with `ImageReward.pt` + `med_config.json` from the hub repository
`THUDM/ImageReward`. Its `score_gard(ids, mask, image)` gives the z-normalised reward r; the reward
used for training is the hinge min(r - 2, 0) (docs/method.md 3.3), `raw_score` keeps r. Preprocessing: resize
shorter side to 224 (bicubic) + center crop + OpenAI mean/std, as the package's `_transform`.

`TinyImageRewardStandIn` is NOT ImageReward: a tiny random module with the same `score_gard` contract
(image tokens -> text transformer cross-attending to them -> [CLS] -> MLP -> (r - mean) / std), for tests
of this wrapper without the package or its weights.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from rglcd.fsutil import build_once
from rglcd.losses import imagereward_hinge
from rglcd.models.sources import ModelSourceError, resolve
from rglcd.rewards.base import RewardModel, freeze
from rglcd.rewards.preprocess import clip_preprocess
from rglcd.rewards.weights import MissingRewardWeights, load_weights_file

HUB_REPO = "THUDM/ImageReward"
CHECKPOINT, MED_CONFIG = "ImageReward.pt", "med_config.json"
MAX_TOKENS = 35        # ImageReward pads/truncates prompts to 35 BERT tokens
IMAGE_SIZE = 224


class ImageRewardModel(RewardModel):
    """Wraps any core with ImageReward's `score_gard` contract and `blip.tokenizer`."""

    has_logit_scale = False

    def __init__(self, core: nn.Module, antialias: bool, name: str = "imagereward"):
        super().__init__()
        self.core, self.antialias, self.name = core, antialias, name
        self.register_buffer("logit_scale", torch.zeros(()), persistent=False)   # exp(0) = 1: logits = score

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return clip_preprocess(images, IMAGE_SIZE, "shorter_crop", self.antialias).to(self.dtype)

    def raw_score(self, x: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(B,) ImageReward's z-normalised reward r, differentiable w.r.t. x."""
        self.check_inputs(x, prompts)
        with torch.no_grad():
            tok = self.core.blip.tokenizer(list(prompts), padding="max_length", truncation=True,
                                           max_length=MAX_TOKENS, return_tensors="pt").to(self.device)
        r = self.core.score_gard(tok.input_ids, tok.attention_mask, self.preprocess(x.to(self.device)))
        return r.float().reshape(-1)                                                   # (B, 1) -> (B,)

    def score(self, x: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(B,) hinged reward min(r - 2, 0): no gradient once r >= 2 (docs/method.md 3.3)."""
        return imagereward_hinge(self.raw_score(x, prompts))


class _TinyImageEncoder(nn.Module):
    """Patchify + transformer -> (B, 1 + N, D) tokens (the shape BLIP's visual encoder returns)."""

    def __init__(self, width: int, patch: int = 32, layers: int = 2, heads: int = 4):
        super().__init__()
        self.patch = nn.Conv2d(3, width, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(0.02 * torch.randn(1, 1 + (IMAGE_SIZE // patch) ** 2, width))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)                          # (B, N, D)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos  # (B, 1 + N, D)
        return self.blocks(x)


class _TinyCrossEncoder(nn.Module):
    """Text transformer with cross-attention to the image tokens; returns `.last_hidden_state`."""

    def __init__(self, vocab_size: int, width: int, layers: int = 2, heads: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.pos = nn.Parameter(0.02 * torch.randn(1, MAX_TOKENS, width))
        layer = nn.TransformerDecoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True)
        self.blocks = nn.TransformerDecoder(layer, layers)

    def forward(self, input_ids, attention_mask, encoder_hidden_states, encoder_attention_mask, return_dict=True):
        x = self.embed(input_ids) + self.pos[:, :input_ids.shape[1]]         # (B, T, D)
        h = self.blocks(x, encoder_hidden_states, tgt_key_padding_mask=attention_mask == 0)
        return SimpleNamespace(last_hidden_state=h)


class TinyImageRewardStandIn(nn.Module):
    """A tiny random stand-in for ImageReward (not its weights, not its architecture sizes): tests only."""

    mean, std = 0.16717362830052426, 1.0333394966054072   # ImageReward's output normalisation

    def __init__(self, tokenizer, width: int = 32):
        super().__init__()
        self.blip = nn.Module()
        self.blip.visual_encoder = _TinyImageEncoder(width)
        self.blip.text_encoder = _TinyCrossEncoder(len(tokenizer), width)
        self.blip.tokenizer = tokenizer
        self.mlp = nn.Sequential(nn.Linear(width, 16), nn.Linear(16, 1))

    def score_gard(self, prompt_ids, prompt_attention_mask, image):
        image_embeds = self.blip.visual_encoder(image)                        # (B, 1 + N, D)
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image.device)
        out = self.blip.text_encoder(prompt_ids, attention_mask=prompt_attention_mask,
                                     encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts,
                                     return_dict=True)
        rewards = self.mlp(out.last_hidden_state[:, 0, :])                    # (B, 1)
        return (rewards - self.mean) / self.std


def _tiny_core(cache_dir: str, seed: int = 0) -> TinyImageRewardStandIn:
    from transformers import CLIPTokenizer

    from rglcd.models.tokenizer import write_clip_tokenizer

    tok_dir = build_once(cache_dir, "clip-tokenizer", write_clip_tokenizer,
                         ready=lambda path: (path / "tokenizer_config.json").is_file())
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return TinyImageRewardStandIn(CLIPTokenizer.from_pretrained(str(tok_dir)))


def _real_core(weights: str | None, device: str | torch.device, cache_dir: str) -> nn.Module:
    try:
        from ImageReward.ImageReward import ImageReward
    except ImportError:
        raise ModuleNotFoundError("reward 'imagereward' needs the ImageReward package: pip install image-reward "
                                  "(or use weights='tiny' for the offline stand-in)") from None
    try:
        folder = resolve(weights or HUB_REPO, cache_dir, allow_patterns=[CHECKPOINT, MED_CONFIG])
    except ModelSourceError as err:
        raise MissingRewardWeights(f"{err} (ImageReward needs {CHECKPOINT} and {MED_CONFIG} from {HUB_REPO!r})") from None
    missing = [f for f in (CHECKPOINT, MED_CONFIG) if not (folder / f).is_file()]
    if missing:
        raise MissingRewardWeights(f"ImageReward weights not found: {folder} lacks {', '.join(missing)} "
                                   f"(both come from the hub repository {HUB_REPO!r})")
    core = ImageReward(med_config=str(folder / MED_CONFIG), device=str(device))
    core.load_state_dict(load_weights_file(folder / CHECKPOINT), strict=False)  # strict=False as the package
    return core


def load_imagereward(weights: str | None = None, *, antialias: bool = False, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32, cache_dir: str = "~/.cache/rglcd") -> ImageRewardModel:
    """ImageReward-v1.0 (folder with ImageReward.pt + med_config.json, s3://, hub id), or the tiny stand-in."""
    core = _tiny_core(cache_dir) if weights == "tiny" else _real_core(weights, device, cache_dir)
    name = "imagereward-tiny-standin" if weights == "tiny" else "imagereward"
    return freeze(ImageRewardModel(core, antialias, name).to(device=device, dtype=dtype))
