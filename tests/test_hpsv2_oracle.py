"""The official `hpsv2` package as the oracle of rglcd's HPSv2.1 scores (docs/method.md 9.4).

One random-init open_clip ViT-H-14 (seed 0) is saved in the HPS checkpoint format (`{'state_dict': ...}`
as `HPS_v2.1_compressed.pt`, half precision: 2 GB) and scored twice on the same 8-bit images and prompts:
- by `hpsv2.score(images, prompt, hps_version="v2.1")`, unmodified: its own model factory, checkpoint
  loader, tokenizer, preprocessing and scoring. It finds its two hub files (the laion ViT-H-14 it builds
  from, then the HPS checkpoint) in a local hub cache made here, both pointing at that one file;
- by rglcd's evaluation (`Scorers` of rglcd/evaluate/core.py, `eval.reward_weights` = the checkpoint).
Evaluation reports 100 x cosine, hpsv2 the cosine. On a 512 downsample, a non-square letterbox, an
upsample and an image already at 224, with one prompt over the 77-token context, they agree to
TOLERANCE = 1e-4 (measured: max 2e-6, scores spread over 4.8), and the preprocessed inputs are equal.

The training path (docs/method.md 3.2, 9.1) differs on purpose: `reward.antialias: false` resizes without
antialiasing (hpsv2 resizes tensors, antialiased by torchvision >= 0.17). Measured: the preprocessed
astronaut (512 -> 224) differs from hpsv2's by 0.045 mean |diff| (normalised units; chelsea 0.021, no
resize 0) and the scores by 0.04 and 0.09 (100 x cosine, this random model), vs evaluation's 2e-6.

hpsv2 is installed by `make install` without its pins (`pip install --no-deps`), with the BPE vocabulary its
wheel lacks (tests/oracle/hpsv2_vocab.py). hpsv2 fixes the architecture (`img_score.initialize_model` builds
ViT-H-14), so the module needs about 8.5 GB of memory at its peak and ~2 minutes on 2 CPU cores.
"""
from __future__ import annotations

import gc
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

PROMPTS = {
    "astronaut": "a portrait of an astronaut in front of a flag, photo",
    "chelsea": "a tabby cat looking to the left, concept art",
    "coffee-crop": "a cup of coffee on a saucer, " + "highly detailed, " * 30,   # > 77 tokens: truncated
    "coffee-small": "a small blurry cup of coffee, anime",
}
TOLERANCE = 1e-4        # 100 x cosine; the measured difference is float rounding (max 2e-6)
TRAINING_GAP = 0.02     # 100 x cosine; training's aliased resize moves downsampled scores by more (0.04, 0.09)
REVISION = "0" * 40     # commit name of the local hub cache entries


def _images() -> dict[str, np.ndarray]:
    """(H, W, 3) uint8: a 512 downsample, a 300x451 letterbox, a 224 no-resize, a 96x128 upsample."""
    import skimage.data as sd
    from PIL import Image

    coffee = sd.coffee()                                                      # 400 x 600
    small = np.asarray(Image.fromarray(coffee).resize((128, 96), Image.Resampling.BOX))
    return {"astronaut": sd.astronaut(), "chelsea": sd.chelsea(), "coffee-crop": coffee[100:324, 200:424],
            "coffee-small": small}


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255     # (1, 3, H, W), 8-bit values


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random-init open_clip ViT-H-14 (seed 0) in the HPS checkpoint format."""
    import open_clip

    with torch.random.fork_rng():     # later tests keep their random stream
        torch.manual_seed(0)
        model = open_clip.create_model("ViT-H-14", pretrained=None)
    path = tmp_path_factory.mktemp("hps") / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {k: v.half() for k, v in model.state_dict().items()}}, path)   # 2 GB, not 4
    del model
    gc.collect()
    return path


def _hub_cache(root: Path, checkpoint: Path) -> Path:
    """A hub cache in which both files hpsv2 asks for are the checkpoint (offline: refs/main -> snapshot)."""
    for repo, filename in (("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "open_clip_pytorch_model.bin"),
                           ("xswu/HPSv2", "HPS_v2.1_compressed.pt")):
        folder = root / ("models--" + repo.replace("/", "--"))
        (folder / "snapshots" / REVISION).mkdir(parents=True)
        (folder / "refs").mkdir()
        (folder / "refs" / "main").write_text(REVISION)
        os.symlink(checkpoint, folder / "snapshots" / REVISION / filename)
    return root


def _import_hpsv2():
    try:
        import hpsv2
        import hpsv2.img_score
    except (ImportError, FileNotFoundError) as err:   # FileNotFoundError: the vocabulary was not supplied
        pytest.fail(f"the hpsv2 oracle is not installed ({err}); run `make install` (Makefile: pip install "
                    "--no-deps hpsv2, then tests/oracle/hpsv2_vocab.py)")
    return hpsv2


@pytest.fixture(scope="module")
def oracle(checkpoint, tmp_path_factory) -> dict:
    """hpsv2's own scores (cosine) and its own preprocessed inputs, per image; its model freed after."""
    from PIL import Image

    hpsv2 = _import_hpsv2()
    import huggingface_hub.constants

    tmp = tmp_path_factory.mktemp("hpsv2")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(_hub_cache(tmp / "hub", checkpoint)))
        mp.setattr(hpsv2.img_score, "root_path", str(tmp / "root"))       # it creates ~/.cache/hpsv2 otherwise
        hpsv2.img_score.model_dict.clear()
        try:
            scores = {name: float(hpsv2.score([Image.fromarray(a)], PROMPTS[name], hps_version="v2.1")[0])
                      for name, a in _images().items()}
            preprocess = hpsv2.img_score.model_dict["preprocess_val"]
            inputs = {name: preprocess(Image.fromarray(a)) for name, a in _images().items()}
        finally:
            hpsv2.img_score.model_dict.clear()
            gc.collect()
    return {"scores": scores, "inputs": inputs}


def _evaluation_scores(checkpoint: Path, cache_dir: str) -> dict[str, float]:
    """rglcd's evaluation scores (100 x cosine) of each image with its prompt; the model freed after."""
    from rglcd.config import load_config
    from rglcd.evaluate.core import Scorers

    cfg = load_config("tiny-random", overrides=[f"model.cache_dir={cache_dir}", "eval.rewards=[hpsv2.1]",
                                         f"eval.reward_weights={{hpsv2.1: '{checkpoint}'}}", "eval.clip_model=null"])
    scorers = Scorers(cfg, torch.device("cpu"))
    out = {n: scorers(_tensor(a), [PROMPTS[n]], only=("hpsv2.1",))["hpsv2.1"].item() for n, a in _images().items()}
    del scorers
    gc.collect()
    return out


def _training_scores(checkpoint: Path, cache_dir: str, antialias: bool) -> dict[str, float]:
    """100 x the training reward (rglcd.rewards `load_reward`, cosine) of each image with its prompt."""
    from rglcd.rewards import load_reward

    model = load_reward("hpsv2.1", str(checkpoint), antialias=antialias, cache_dir=cache_dir)
    out = {n: 100 * model.score(_tensor(a), [PROMPTS[n]]).item() for n, a in _images().items()}
    del model
    gc.collect()
    return out


@pytest.fixture(scope="module")
def evaluation(checkpoint, oracle, model_cache) -> dict[str, float]:
    return _evaluation_scores(checkpoint, model_cache)


def test_evaluation_hps_equals_hpsv2_scores(oracle, evaluation):
    theirs = {n: 100 * s for n, s in oracle["scores"].items()}
    for name in PROMPTS:
        assert evaluation[name] == pytest.approx(theirs[name], abs=TOLERANCE), name
    assert np.ptp(list(theirs.values())) > 1.0    # the images are told apart (measured spread 4.8)


def test_evaluation_preprocessing_equals_hpsv2_inputs(oracle):
    from rglcd.rewards.preprocess import clip_preprocess

    for name, array in _images().items():
        ours = clip_preprocess(_tensor(array), 224, "letterbox", antialias=True)[0]     # (3, 224, 224)
        torch.testing.assert_close(ours, oracle["inputs"][name], rtol=0, atol=1e-5)


def test_training_path_difference_is_the_documented_one(checkpoint, oracle, model_cache):
    """reward.antialias=false (training's default) differs from hpsv2 where it downsamples, not where the
    image is already 224 (evaluation is the same loader with antialias=true)."""
    from rglcd.rewards.preprocess import clip_preprocess

    aliased = clip_preprocess(_tensor(_images()["astronaut"]), 224, "letterbox", antialias=False)[0]
    input_gap = (aliased - oracle["inputs"]["astronaut"]).abs().mean().item()
    assert 0.02 < input_gap < 0.09                                            # measured 0.045
    training = _training_scores(checkpoint, model_cache, antialias=False)
    theirs = {n: 100 * s for n, s in oracle["scores"].items()}
    for name in ("astronaut", "chelsea"):                                     # 512x512 and 300x451 -> 224
        assert abs(training[name] - theirs[name]) > TRAINING_GAP, name
    assert training["coffee-crop"] == pytest.approx(theirs["coffee-crop"], abs=TOLERANCE)   # no resize at 224
