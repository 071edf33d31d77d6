"""What subcommands share besides the config arguments (those are `rglcd.config.args`): reading a mapping file
a flag names."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


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
