"""Settings of the toy replication (`rglcd toy run`): the world (cached) and the experiments.

The world (data, VAE, teacher, classifiers, pretrained LRM) is cached under a key made of `WorldConfig`,
so changing an experiment setting never retrains the teacher. The method's own settings (distill,
train, reward, lrm, eval sections) travel as the project's `rglcd.config.Config`, built by `method_config`
from the `tiny` preset and a mapping of sections, the way a config file is read.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from rglcd.config import Config, load_config

PredictionType = Literal["epsilon", "v_prediction"]

WORLD_FORMAT = 2   # bump when code outside WORLD_CODE changes what a cached world holds
# The modules that build a world: their source is part of the cache key, so editing them rebuilds it.
WORLD_CODE = ("rglcd/toy/data.py", "rglcd/toy/classifier.py", "rglcd/toy/world.py", "rglcd/models/tiny.py")
TOY_PRESET = "tiny"   # the method config every row starts from (the tiny factory's model sizes)
TOY_REWARD = "toy"    # the toy expert's name in the reward registry (rglcd.plugins)


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    # Images rendered for training (VAE, teacher, classifiers, LRM) and, held out, for the FID-like reference.
    train_images: int = 4096
    reference_images: int = 1024
    # Tiny AutoencoderKL (the tiny factory's shape): MSE + kl_weight * per-dimension KL.
    vae_steps: int = 400
    vae_batch_size: int = 16
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-4
    # Teacher: `world.toy_unet` + the tiny CLIP text encoder, trained together with DDPM eps-prediction
    # (loss weighted as `world.loss_weight`), 10% empty captions for CFG. Training stops once the EMA
    # teacher's 50-step DDIM+CFG samples reach `teacher_target_accuracy` (held-out judge: colour, shape and
    # position all right, one sample per caption), checked every `teacher_check_every` steps.
    teacher_max_steps: int = 3000
    teacher_check_every: int = 250
    teacher_target_accuracy: float = 0.9
    teacher_batch_size: int = 32
    teacher_lr: float = 1e-3
    teacher_ema_decay: float = 0.999
    teacher_prediction_type: PredictionType = "epsilon"
    text_embedding_std: float = 1.0     # init std of the text encoder's token embeddings (`world.toy_text_encoder`)
    teacher_max_weight: float = 50.0    # cap of the (1 + snr) / snr weight of the eps MSE (`world.loss_weight`)
    caption_dropout: float = 0.1
    teacher_guidance: float = 4.0       # CFG scale of the teacher's 50-step DDIM (its check and baseline row)
    # Classifiers: `reward` is the expert RM, `judge` (held out, wider, noise-augmented) grades the samples.
    classifier_steps: int = 300
    reward_width: int = 16
    judge_width: int = 32
    judge_noise: float = 0.2
    # Latent reward model: contrastive pretraining on (VAE latent, caption); sizes from the `tiny` preset.
    lrm_pretrain_steps: int = 300
    lrm_pretrain_lr: float = 1e-3
    lrm_pretrain_batch_size: int = 48

    def __post_init__(self) -> None:
        allowed = get_args(PredictionType)
        if self.teacher_prediction_type not in allowed:
            raise ValueError(f"teacher_prediction_type: {self.teacher_prediction_type!r} is not allowed; "
                             f"allowed: {', '.join(allowed)}")

    def key(self) -> str:
        """Cache key: hash of every field, the world format and the source of the WORLD_CODE modules."""
        text = json.dumps({"format": WORLD_FORMAT, "code": world_code_digest(), **dataclasses.asdict(self)},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def world_code_digest() -> str:
    """sha256 of the WORLD_CODE modules' source, as installed next to this file."""
    root = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for name in WORLD_CODE:
        digest.update(name.encode() + b"\0" + (root / name).read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ToyConfig:
    world: WorldConfig = field(default_factory=WorldConfig)
    # Every student row is trained and evaluated once per seed (training draws, w-projection init, batch
    # order and sampling noise all follow it); the table reports the mean and the spread over seeds.
    seeds: tuple[int, ...] = (0, 1, 2)
    # Student training, identical for every row except the reward term (same batches, same draws).
    student_steps: int = 300
    batch_size: int = 16
    lr: float = 1e-4
    ema_decay: float = 0.95
    w_min: float = 2.0                  # guidance w ~ U[w_min, w_max] (LCM form; CFG scale w + 1)
    w_max: float = 6.0
    # RG-LCD rows: direct expert-reward guidance at each beta, LRM guidance at each lrm beta.
    direct_betas: tuple[float, ...] = (1.0, 5.0, 25.0)
    lrm_betas: tuple[float, ...] = (20.0, 50.0)
    lrm_lr: float = 1e-4
    lrm_batch_size: int = 8
    # Evaluation: every caption `eval_repeats` times; student guidance g (w = g - 1).
    eval_repeats: int = 2
    eval_steps: tuple[int, ...] = (1, 2, 4, 8)
    eval_guidance: float = 4.0
    teacher_steps: int = 50
    hf_cutoff: float = 0.25
    latency_repeats: int = 5

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: {self.seeds!r} is not allowed; allowed: one or more distinct seeds")


def toy_config_from_dict(data: dict[str, Any]) -> ToyConfig:
    """The ToyConfig of `dataclasses.asdict(toy)` as results.json holds it (lists back to tuples)."""
    data = dict(data)
    world = WorldConfig(**data.pop("world"))
    return ToyConfig(world=world, **{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def quick_config() -> ToyConfig:
    """A seconds-to-a-minute version of everything, for the test (its numbers mean nothing)."""
    world = WorldConfig(train_images=96, reference_images=48, vae_steps=10, vae_batch_size=8, teacher_max_steps=10,
                        teacher_check_every=10, teacher_batch_size=8, classifier_steps=20, lrm_pretrain_steps=5,
                        lrm_pretrain_batch_size=16)
    return ToyConfig(world=world, seeds=(0, 1), student_steps=3, batch_size=4, direct_betas=(1.0,), lrm_betas=(1.0,),
                     lrm_batch_size=2, eval_repeats=1, eval_steps=(1, 2), teacher_steps=50, latency_repeats=1)


def claim_steps(toy) -> int:
    """The student step count the claims are judged at: 4 (the paper's few-step regime) if evaluated."""
    return 4 if 4 in toy.eval_steps else max(toy.eval_steps)


def method_config(toy: ToyConfig, guidance: str = "direct", beta: float = 0.0,
                  world_dir: str | Path | None = None, seed: int | None = None) -> Config:
    """The project's Config of one experiment row: the `tiny` preset (the toy world's) with the row's settings
    over it, read and validated as any config file is (`rglcd.config.load_config`).

    beta 0 is plain LCD (reward.name none, no LRM); otherwise the expert is the registered reward "toy"
    (`rglcd.toy.reward.load_toy_reward`). The teacher, the expert's weights and the pretrained LRM point into
    `world_dir` (a built world), or without it to the default world's `toy:` references (docs/method.md 11.6).
    seed: the row's training seed (default: the first of toy.seeds).
    """
    w = toy.world
    ref = {part: str(Path(world_dir) / folder) if world_dir is not None else f"toy:{part}"
           for part, folder in (("teacher", "teacher"), ("world", ""), ("lrm", "lrm"))}
    data: dict[str, Any] = {
        "model": {"teacher": ref["teacher"]},
        "train": {"seed": toy.seeds[0] if seed is None else seed, "lr": toy.lr, "batch_size": toy.batch_size,
                  "max_steps": toy.student_steps},
        "distill": {"ema_decay": toy.ema_decay, "w_min": toy.w_min, "w_max": toy.w_max},
        "reward": {"name": TOY_REWARD if beta else "none", "guidance": guidance, "beta": beta,
                   "weights": ref["world"] if beta else None},
        "lrm": {"lr": toy.lrm_lr, "batch_size": toy.lrm_batch_size, "pretrain_steps": w.lrm_pretrain_steps,
                "pretrain_lr": w.lrm_pretrain_lr, "pretrain_batch_size": w.lrm_pretrain_batch_size,
                "checkpoint": ref["lrm"] if beta and guidance == "lrm" else None},
        "eval": {"guidance": toy.eval_guidance, "teacher_guidance": w.teacher_guidance,
                 "teacher_steps": toy.teacher_steps, "hf_cutoff": toy.hf_cutoff, "steps": list(toy.eval_steps),
                 "gate_steps": claim_steps(toy)},
    }
    return load_config(TOY_PRESET, data=data)
