"""Named factories that a config refers to by name: the reward models of `reward.name` and `eval.rewards`,
and the source schemes of references ("toy:teacher", "toy:shapes", ...).

    register_reward("my-rm", "my_package.rewards:load_my_rm", input_kind="image")
    load_reward("my-rm", weights)          # rglcd.rewards: imports my_package.rewards only now

An entry is "module:function", imported only when its name is loaded, so a config can name any reward
without importing its packages (open_clip, transformers, ImageReward). The built-in entries are below;
an experiment or an installed extension adds its own with `register_reward` before its config is
loaded. Importing this module imports nothing else (the config checks names against it).

A source scheme makes references "<scheme>:<rest>" resolvable where the project reads a reference of one
kind (a model, a training set, prompts, an FID reference folder), the way "toy:" serves the toy world:

    register_source("model", "my", "my_package.models:resolve_my")   # model.teacher: "my:base"
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


# ---------------------------------------------------------------- source schemes

# kind -> what its function is called with and returns, and where the project reads that kind:
SOURCE_KINDS = {
    "model": "f(ref, cache_dir) -> local directory (model.teacher, lrm.checkpoint, every model reference)",
    "data": "f(spec) -> a rglcd.data.sources.Source (data.train)",
    "version": "f(spec) -> sha256 hex of the data a data.train spec names (the data check)",
    "prompts": "f(spec) -> list of prompts (data.prompts, eval.prompts, eval.fid_prompts)",
    "reference": "f(spec, cache_dir) -> local folder of images (eval.fid_reference)",
}
_TOY = "rglcd.toy.sources"
SOURCES: dict[str, dict[str, str]] = {
    # The toy world (docs/method.md 11.6): the `tiny` preset's teacher, data, prompts and FID reference.
    "model": {"toy": f"{_TOY}:model_dir"},
    "data": {"toy": f"{_TOY}:data_source"},
    "version": {"toy": f"{_TOY}:data_version"},
    "prompts": {"toy": f"{_TOY}:prompts"},
    "reference": {"toy": f"{_TOY}:reference_dir"},
}


def register_source(kind: str, scheme: str, target: str) -> None:
    """Make references "<scheme>:..." of `kind` resolve through `target` ("module:function")."""
    if kind not in SOURCE_KINDS:
        raise ValueError(f"source kind {kind!r} is not allowed; allowed: {', '.join(SOURCE_KINDS)}")
    if not re.match(r"^[a-z][a-z0-9+-]*$", scheme) or not _TARGET.match(target):
        raise ValueError(f"source {scheme!r} -> {target!r} is not allowed; allowed: a lower-case scheme and "
                         "'module:function'")
    if SOURCES[kind].get(scheme, target) != target:
        raise ValueError(f"{kind} source {scheme!r} is already registered as {SOURCES[kind][scheme]}")
    SOURCES[kind][scheme] = target


def source_handler(kind: str, ref: str) -> Callable[..., Any] | None:
    """The function registered for `ref`'s scheme under `kind` (its module imported now), or None."""
    scheme, sep, _ = str(ref).partition(":")
    target = SOURCES[kind].get(scheme) if sep else None
    if target is None:
        return None
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)
