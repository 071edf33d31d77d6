"""The latent proxy reward model (LRM): latent CLIP registered with open_clip, contrastive pretraining,
online fine-tuning against the expert RM (docs/method.md 4; docs/architecture.md 2.5)."""
from rglcd.lrm.finetune import lrm_finetune_step, make_lrm_optimizer, pair_kl, permute_with_captions, unpermute
from rglcd.lrm.model import (LatentRewardModel, latent_size_for, load_lrm, load_lrm_optimizer, new_lrm,
                             open_clip_config, read_lrm_config, save_lrm, unlock_for_finetune)
from rglcd.lrm.pretrain import contrastive_step, load_vae, pretrain_lrm, pretrain_lrm_from_data, to_latents

__all__ = ["LatentRewardModel", "contrastive_step", "latent_size_for", "load_lrm", "load_lrm_optimizer", "load_vae",
           "lrm_finetune_step", "make_lrm_optimizer", "new_lrm", "open_clip_config", "pair_kl",
           "permute_with_captions", "pretrain_lrm", "pretrain_lrm_from_data", "read_lrm_config", "save_lrm",
           "to_latents", "unlock_for_finetune", "unpermute"]
