"""Named factories that a config refers to by name: the reward models of `reward.name` and `eval.rewards`.

    register_reward("my-rm", "my_package.rewards:load_my_rm", input_kind="image")
    load_reward("my-rm", weights)          # rglcd.rewards: imports my_package.rewards only now

An entry is "module:function", imported only when its name is loaded, so a config can name any reward
without importing its packages (open_clip, transformers, ImageReward). The built-in entries are below;
an experiment or an installed extension adds its own with `register_reward` before its config is
loaded. Importing this module imports nothing else (the config checks names against it).
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any, Callable

INPUT_KINDS = ("image", "latent")
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class RewardEntry:
    # "module:function"; the function is called as f(weights, *, antialias, device, dtype, cache_dir) and
    # returns a frozen `rglcd.rewards.RewardModel`.
    target: str
    # "image": an expert scoring RGB images (allowed as reward.name); "latent": scores VAE latents (the LRM).
    input_kind: str


REWARDS: dict[str, RewardEntry] = {
    "hpsv2.1": RewardEntry("rglcd.rewards.openclip:load_hps", "image"),
    "pickscore": RewardEntry("rglcd.rewards.pickscore:load_pickscore", "image"),
    "clipscore": RewardEntry("rglcd.rewards.openclip:load_clipscore", "image"),
    "imagereward": RewardEntry("rglcd.rewards.imagereward:load_imagereward", "image"),
    "lrm": RewardEntry("rglcd.lrm.model:load_lrm_reward", "latent"),
    # The toy world's classifier expert; weights: a toy world directory (`rglcd toy run` builds one).
    "toy": RewardEntry("rglcd.toy.reward:load_toy_reward", "image"),
}


def register_reward(name: str, target: str, input_kind: str = "image") -> None:
    """Make `name` loadable by `rglcd.rewards.load_reward` and allowed in configs. Re-registering a name
    with the same entry is a no-op; with another entry it is refused (two meanings for one name)."""
    if not _TARGET.match(target):
        raise ValueError(f"reward {name!r}: target {target!r} is not allowed; allowed: 'module:function'")
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"reward {name!r}: input_kind {input_kind!r} is not allowed; allowed: {', '.join(INPUT_KINDS)}")
    entry = RewardEntry(target, input_kind)
    if REWARDS.get(name, entry) != entry:
        raise ValueError(f"reward {name!r} is already registered as {REWARDS[name].target}")
    REWARDS[name] = entry


def reward_names(input_kind: str | None = None) -> list[str]:
    """Registered reward names, all or those of one input kind."""
    return [name for name, entry in REWARDS.items() if input_kind in (None, entry.input_kind)]


def expert_reward_choices() -> list[str]:
    """What `reward.name` allows: "none" (plain LCD) or a registered image reward."""
    return ["none", *reward_names("image")]


def reward_factory(name: str) -> Callable[..., Any]:
    """The factory function registered under `name` (its module is imported now)."""
    if name not in REWARDS:
        raise ValueError(f"reward {name!r} is not known; allowed: {', '.join(REWARDS)}")
    module, _, function = REWARDS[name].target.partition(":")
    return getattr(importlib.import_module(module), function)
