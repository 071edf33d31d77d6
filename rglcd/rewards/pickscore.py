"""PickScore (Kirstain et al. 2023): a CLIP-H fine-tuned on Pick-a-Pic preferences, in transformers.

Weights `yuvalkirstain/PickScore_v1` (a `CLIPModel` directory), text tokenizer from the processor
`laion/CLIP-ViT-H-14-laion2B-s32B-b79K`. Image preprocessing as its CLIPImageProcessor: shorter side
to 224 (bicubic), center crop 224, OpenAI mean/std (docs/method.md 3.2). Reward = cosine; the official
PickScore is exp(logit_scale) * cosine, which is `logits`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from rglcd.fsutil import build_once
from rglcd.models.sources import ModelSourceError, resolve
from rglcd.models.tokenizer import check_tokenizer, write_clip_tokenizer
from rglcd.rewards.base import RewardModel, freeze
from rglcd.rewards.preprocess import clip_preprocess
from rglcd.rewards.weights import MissingRewardWeights

PICKSCORE_REPO = "yuvalkirstain/PickScore_v1"
PROCESSOR_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
MAX_TOKENS = 77


class HFClipReward(RewardModel):
    """A transformers `CLIPModel` as a reward: cosine of projected, normalised pooled features."""

    def __init__(self, model: torch.nn.Module, tokenizer, antialias: bool, name: str = "pickscore"):
        super().__init__()
        self.model, self.tokenizer, self.antialias, self.name = model, tokenizer, antialias, name
        self.image_size = int(model.config.vision_config.image_size)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return clip_preprocess(images, self.image_size, "shorter_crop", self.antialias).to(self.dtype)

    def encode_inputs(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.model.vision_model(pixel_values=self.preprocess(x.to(self.device))).pooler_output
        return self.model.visual_projection(pooled)                                   # (B, D)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_TOKENS,
                             return_tensors="pt").to(self.device)
        pooled = self.model.text_model(input_ids=tok.input_ids, attention_mask=tok.attention_mask).pooler_output
        return self.model.text_projection(pooled)                                     # (N, D)


def tiny_pickscore_dir(cache_dir: str, seed: int = 0) -> Path:
    """A tiny random `CLIPModel` directory (config, safetensors, real CLIP tokenizer), built once per cache."""
    from transformers import CLIPConfig, CLIPModel

    def build(tmp: Path) -> None:
        common = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
        config = CLIPConfig(
            text_config=dict(vocab_size=49408, max_position_embeddings=MAX_TOKENS, bos_token_id=49406,
                             eos_token_id=49407, pad_token_id=49407, **common),
            vision_config=dict(image_size=224, patch_size=32, **common), projection_dim=32)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = CLIPModel(config)
        model.save_pretrained(str(tmp))
        write_clip_tokenizer(tmp)

    return build_once(cache_dir, "tiny-pickscore-v1", build, ready=lambda path: (path / "config.json").is_file())


def _local_dir(ref: str, cache_dir: str, patterns: list[str], what: str) -> Path:
    try:
        return resolve(ref, cache_dir, allow_patterns=patterns)
    except ModelSourceError as err:
        raise MissingRewardWeights(f"{err} ({what})") from None


def _tokenizer(model_dir: Path, cache_dir: str):
    from transformers import AutoTokenizer

    has_own = any((model_dir / f).is_file() for f in ("tokenizer.json", "vocab.json"))
    source = model_dir if has_own else _local_dir(PROCESSOR_REPO, cache_dir, ["*.json", "*.txt"],
                                                    f"PickScore's tokenizer comes from {PROCESSOR_REPO!r}")
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    check_tokenizer(tokenizer, str(source))
    return tokenizer


def load_pickscore(weights: str | None = None, *, antialias: bool = False, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32, cache_dir: str = "~/.cache/rglcd") -> HFClipReward:
    """PickScore from a CLIPModel directory (local, s3:// or hub id; None: the official weights)."""
    from transformers import CLIPModel

    if weights == "tiny":
        model_dir = tiny_pickscore_dir(cache_dir)
    else:
        model_dir = _local_dir(weights or PICKSCORE_REPO, cache_dir, ["*.json", "*.safetensors", "*.bin"],
                               f"PickScore weights come from the hub repository {PICKSCORE_REPO!r}")
    if not (model_dir / "config.json").is_file():
        raise MissingRewardWeights(f"PickScore weights not found: {model_dir} has no config.json (a transformers "
                                   f"CLIPModel directory such as {PICKSCORE_REPO!r} is expected)")
    model = CLIPModel.from_pretrained(str(model_dir))
    reward = HFClipReward(model, _tokenizer(model_dir, cache_dir), antialias)
    return freeze(reward.to(device=device, dtype=dtype))
