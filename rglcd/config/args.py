"""The `--preset` / `--config` / `--set` arguments that every command shares (the `rglcd` CLI and the
command lines in components/), and the one way they become a `Config`.

The order is fixed: the preset, then the config file over it, then the `RGLCD_<SECTION>__<KEY>` environment
variables (a cluster's mounted settings, e.g. RGLCD_STORAGE__REMOTE), then each `--set` in the order given.
The preset is `--preset` when given, else the file's `preset:` key, else `$RGLCD_PRESET` (e.g. a cluster's
ConfigMap, or the test suite's `tiny-random`), else the command's default preset (`DEFAULT_PRESET`, "tiny",
for `rglcd`; docs/operations.md 4.8). `--preset custom` (or `preset: custom`) starts from the schema defaults
without any preset.
"""
from __future__ import annotations

import argparse
import os
from typing import Mapping

from rglcd.config import Config, ConfigError, list_presets, load_config

DEFAULT_PRESET = "tiny"   # CPU-sized, runs anywhere: what `rglcd train` with no arguments trains
PRESET_ENV = "RGLCD_PRESET"   # the preset when neither --preset nor the file's `preset:` key names one


def add_config_args(parser: argparse.ArgumentParser, default_preset: str = DEFAULT_PRESET) -> None:
    """Add --preset, --config and --set to `parser`; `config_from_args` turns them into a Config."""
    parser.add_argument("--preset", default=None, metavar="NAME",
                        help=f"named preset ({', '.join(list_presets())}, or custom: the schema defaults); "
                             f"default: the config file's `preset` key, else ${PRESET_ENV}, else {default_preset}")
    parser.add_argument("--config", metavar="FILE", help="YAML/JSON config file, applied over the preset (then RGLCD_<SECTION>__<KEY> "
                                                     "environment variables, then --set)")
    parser.add_argument("--set", dest="overrides", metavar="SECTION.KEY=VALUE", action="append", default=[],
                        help="override one config value, applied last (repeatable), e.g. --set train.max_steps=20")
    parser.set_defaults(default_preset=default_preset)


def config_from_args(args: argparse.Namespace) -> Config:
    """Preset, then file, then RGLCD_* environment, then --set (see the module docstring for which preset)."""
    default = env_preset(os.environ) or getattr(args, "default_preset", DEFAULT_PRESET)
    return load_config(preset=args.preset, path=args.config, overrides=args.overrides,
                       default_preset=default, env=os.environ)


def env_preset(environ: Mapping[str, str]) -> str | None:
    """The preset `$RGLCD_PRESET` names (unset or empty: None). Checked even when --preset or the file's
    `preset:` key wins: a mistyped variable fails at once, not first on the command that relies on it."""
    name = environ.get(PRESET_ENV, "").strip()
    if not name:
        return None
    allowed = [*list_presets(), "custom"]
    if name not in allowed:
        raise ConfigError(f"environment variable {PRESET_ENV}: {name[:80]!r} is not a known preset; "
                          f"allowed: {', '.join(allowed)}")
    return name
