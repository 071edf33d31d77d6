"""What subcommands share: the --preset/--config/--set arguments, and reading a mapping file a flag names."""
from __future__ import annotations

import argparse
from typing import Any

from rglcd.config import Config, list_presets, load_config
from rglcd.safeio import read_mapping


def add_config_args(parser: argparse.ArgumentParser, default_preset: str | None = "tiny") -> None:
    parser.add_argument("--preset", default=default_preset,
                        help=f"named preset ({', '.join(list_presets())}); default: %(default)s")
    parser.add_argument("--config", metavar="FILE", help="YAML/JSON config file (applied over the preset)")
    parser.add_argument("--set", dest="overrides", metavar="SECTION.KEY=VALUE", action="append", default=[],
                        help="override one config value (repeatable), e.g. --set train.max_steps=20")


def config_from_args(args: argparse.Namespace) -> Config:
    preset = None if args.config and args.preset == "tiny" else args.preset
    return load_config(preset=preset, path=args.config, overrides=args.overrides)


def read_mapping_file(path: str, what: str) -> dict[str, Any]:
    """A JSON or YAML file holding a mapping (rglcd.safeio: bounded, JSON read as JSON); errors name `what`."""
    return read_mapping(path, what)
