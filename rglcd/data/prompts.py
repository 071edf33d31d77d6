"""Prompt lists for validation images and evaluation (`data.prompts`)."""
from __future__ import annotations

import json
from pathlib import Path


def load_prompts(spec: str) -> list[str]:
    """'builtin:vbench', a .txt file (one prompt a line) or a .json list (strings or {"prompt": ...})."""
    if spec == "builtin:vbench":
        from rglcd.data.builtin import vbench_prompts

        return vbench_prompts()
    if spec.startswith("builtin:"):
        raise ValueError(f"data.prompts: {spec!r} is not allowed; allowed: builtin:vbench, a .txt or .json file")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data.prompts: {spec!r} is not a file (allowed: builtin:vbench, .txt, .json)")
    if path.suffix == ".json":
        items = json.loads(path.read_text())
        if not isinstance(items, list):
            raise ValueError(f"data.prompts: {spec}: expected a JSON list of prompts")
        prompts = [item["prompt"] if isinstance(item, dict) else item for item in items]
    else:
        prompts = path.read_text().splitlines()
    prompts = [str(p).strip() for p in prompts if str(p).strip()]
    if not prompts:
        raise ValueError(f"data.prompts: {spec}: holds no prompts")
    return prompts
