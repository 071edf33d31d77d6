"""What subcommands share besides the config arguments (those are `rglcd.config.args`): the --device and
--json conventions, and reading a mapping file a flag names.

--json: the command prints one JSON object on stdout and nothing else; everything else it (or a child
process) would print goes to stderr. Commands call `emit(args, data, text)` once, at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from rglcd.devices import DEVICE_HELP


def add_device_arg(parser: argparse.ArgumentParser, default: str | None = "auto", help: str = DEVICE_HELP) -> None:
    """--device by the one convention of `rglcd.devices` (auto, cpu, cuda, cuda:N)."""
    parser.add_argument("--device", default=default, metavar="DEVICE", help=help)


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print the result as one JSON object on stdout (logs and progress go to stderr)")


def emit(args: argparse.Namespace, data: Any, text: str | Callable[[], str] | None) -> None:
    """The command's result: `text` for people (a function is called only then; None: nothing more to say),
    or with --json `data` (a JSON object; a list for listings), printed by `rglcd.cli.main` at the end."""
    if getattr(args, "json", False):
        args.json_result = data
    elif text is not None:
        print(text() if callable(text) else text)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


@contextlib.contextmanager
def stdout_to_stderr(active: bool) -> Iterator[None]:
    """While active, what this process and its children write to stdout goes to stderr (file descriptor 1
    pointed at 2, and Python's sys.stdout at sys.stderr); stdout is back when the block ends."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def read_mapping_file(path: str, what: str) -> dict[str, Any]:
    """A JSON or YAML file holding a mapping; errors name `what` (the flag) and the path."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{what}: {path!r} does not exist")
    try:
        data = yaml.safe_load(file.read_text())          # YAML reads JSON too
    except yaml.YAMLError as err:
        raise ValueError(f"{what}: {path!r} is not valid JSON or YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {path!r} must hold a mapping")
    return data
