"""The `rglcd` command. Each module of this package adds its subcommands with `register(subparsers)`.

Modules are discovered, so a new step adds a file here and touches nothing else. Conventions shared by
every command: --preset/--config/--set (`rglcd.config.args`), --device (`rglcd.devices`: auto, cpu, cuda,
cuda:N) and --json (one JSON object on stdout, logs on stderr; `rglcd.cli._common`).
Command modules import the library inside their command function, so `rglcd --help` and `rglcd config`
never import torch, diffusers or kfp (import time); tests/test_imports.py counts these imports like any other.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from importlib.metadata import PackageNotFoundError, version

from rglcd.cli._common import print_json, stdout_to_stderr
from rglcd.config import ConfigError


def package_version() -> str:
    """The installed rglcd distribution's version (importlib.metadata)."""
    try:
        return version("rglcd")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rglcd", description="Reward Guided Latent Consistency Distillation: distil Stable Diffusion "
        "into a few-step model, evaluate it, version it and register it.")
    parser.add_argument("--version", action="version", version=f"rglcd {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        with stdout_to_stderr(getattr(args, "json", False)):
            code = int(args.func(args) or 0)
    except ConfigError as err:
        print(f"rglcd: config error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, RuntimeError, ValueError) as err:
        if os.environ.get("RGLCD_DEBUG"):
            raise
        print(f"rglcd {args.command}: error: {err}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print_json(getattr(args, "json_result", {}))
    return code


if __name__ == "__main__":
    sys.exit(main())
