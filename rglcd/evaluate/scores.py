"""Image-text scores for evaluation: HPSv2.1 benchmark prompts, registered rewards, CLIP score (docs/method.md 6.1, 6.3).

- HPSv2.1 benchmark (Wu et al. 2023): 4 style files (anime, concept-art, paintings, photo; 800 prompts
  each), one image per prompt, score = 100 x cosine with the v2.1 checkpoint; per style and the mean.
  The version is always v2.1 (never hpsv2's v2.0 default, docs/method.md 7.5).
- Registered rewards (`rglcd.rewards`): mean over a prompt set; ImageReward reports its raw r (not the
  training hinge). Evaluation preprocesses with antialiasing, as the RMs' own PIL pipelines do.
- CLIP score (Hessel et al. 2021, w = 100 as torchmetrics): 100 x max(cos, 0) with an open_clip model
  and open_clip's own PIL preprocessing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from rglcd.safeio import MAX_LIST_BYTES, parse_json, read_text

HPS_STYLES = ("anime", "concept-art", "paintings", "photo")
HPS_DATASET = "zhwang/HPDv2"        # hub dataset holding benchmark/<style>.json (hpsv2.utils)
HPS_REWARD = "hpsv2.1"


# ---------------------------------------------------------------- HPSv2 benchmark prompts

def _style_file(spec: str, style: str) -> Path:
    if spec == "hub":
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(HPS_DATASET, f"{style}.json", subfolder="benchmark", repo_type="dataset"))
        except Exception as err:  # offline, or the hub refused: say what to do instead
            raise FileNotFoundError(
                f"eval.hps_benchmark: 'hub' could not fetch benchmark/{style}.json from the dataset "
                f"{HPS_DATASET!r} ({type(err).__name__}). Download {', '.join(s + '.json' for s in HPS_STYLES)} "
                "where there is network, put them in a folder and set eval.hps_benchmark=DIR, "
                "or eval.hps_benchmark=null to skip the benchmark") from None
    path = Path(os.path.expanduser(spec)) / f"{style}.json"
    if not path.is_file():
        raise FileNotFoundError(f"eval.hps_benchmark: {str(path)!r} does not exist; allowed: a folder with "
                                f"{', '.join(s + '.json' for s in HPS_STYLES)}, 'hub', or null")
    return path


def benchmark_prompts(spec: str, per_style: int | None = None) -> dict[str, list[str]]:
    """{style: prompts} of the HPSv2 benchmark from a folder or the hub; the first `per_style` of each."""
    styles = {}
    for style in HPS_STYLES:
        path = _style_file(spec, style)
        data = parse_json(read_text(path, "eval.hps_benchmark", MAX_LIST_BYTES), "eval.hps_benchmark", path)
        if not isinstance(data, list) or not data or not all(isinstance(p, str) for p in data):
            raise ValueError(f"eval.hps_benchmark: {path}: expected a non-empty JSON list of prompt strings")
        styles[style] = data[:per_style] if per_style else data
    return styles


def summarize_benchmark(scores: dict[str, torch.Tensor]) -> dict:
    """Per-style means and the mean over all images of {style: 100 x cosine (N_style,)} (hpsv2 `evaluate`)."""
    every = torch.cat([s.float() for s in scores.values()])
    return {"per_style": {k: v.float().mean().item() for k, v in scores.items()}, "mean": every.mean().item(),
            "num_images": int(every.numel()), "per_style_count": {k: int(v.numel()) for k, v in scores.items()}}


# ---------------------------------------------------------------- registered rewards

def load_eval_rewards(names: list[str], weights: dict[str, str], device: torch.device, cache_dir: str) -> dict:
    """{name: frozen reward model} for evaluation (antialiased preprocessing, fp32)."""
    from rglcd.rewards import load_reward

    unknown = sorted(set(weights) - set(names) - {HPS_REWARD})
    if unknown:
        raise ValueError(f"eval.reward_weights: {unknown} not in eval.rewards {names}")
    return {name: load_reward(name, weights.get(name), antialias=True, device=device, cache_dir=cache_dir)
            for name in names}


@torch.no_grad()
def reward_values(model, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """(B,) the value evaluation reports: raw ImageReward r where the model has it, else `score` (cosine)."""
    fn = getattr(model, "raw_score", model.score)
    return fn(images.to(model.device), list(prompts)).float().cpu()


# ---------------------------------------------------------------- CLIP score

@dataclass
class ClipScorer:
    """An open_clip model with its own eval preprocessing and tokenizer."""
    model: torch.nn.Module
    preprocess: object           # PIL image -> (3, S, S) tensor
    tokenizer: object
    name: str                    # "ViT-L-14/openai", "tiny (random)", ...

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def __call__(self, images: list, prompts: list[str]) -> torch.Tensor:
        """(B,) 100 x max(cos(image, text), 0) for PIL images and their prompts."""
        pixels = torch.stack([self.preprocess(im) for im in images]).to(self.device)     # (B, 3, S, S)
        img = F.normalize(self.model.encode_image(pixels).float(), dim=-1)              # (B, D)
        txt = F.normalize(self.model.encode_text(self.tokenizer(list(prompts)).to(self.device)).float(), dim=-1)
        return (100 * (img * txt).sum(-1).clamp_min(0)).cpu()


def load_clip_scorer(model_name: str, pretrained: str | None, device: torch.device, seed: int = 0) -> ClipScorer:
    """open_clip `create_model_and_transforms(model_name, pretrained)`; 'tiny' = the tiny random test model."""
    import logging

    import open_clip

    label = f"{model_name}/{pretrained}"
    if model_name == "tiny":
        from rglcd.rewards.openclip import register_tiny_arch

        model_name, pretrained, label = register_tiny_arch(), None, "tiny (random init, tests only)"
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip warns on random init, which is the point of 'tiny'
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained,
                                                                         device=device)
    except (RuntimeError, OSError, ValueError) as err:
        raise RuntimeError(f"eval.clip_model/eval.clip_pretrained: cannot load {label} ({err})") from None
    finally:
        logging.disable(previous)
    return ClipScorer(model.eval().requires_grad_(False), preprocess, open_clip.get_tokenizer(model_name), label)
