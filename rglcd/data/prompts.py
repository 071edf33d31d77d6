"""Prompt lists for validation images, evaluation and `rglcd sample` (`data.prompts`, `eval.prompts`, ...)."""
from __future__ import annotations

import json
from pathlib import Path

ALLOWED = "builtin:vbench, a .txt file (one prompt a line) or a .json list"


def load_prompts(spec: str | Path, field: str = "data.prompts") -> list[str]:
    """'builtin:vbench', a .txt file (one prompt a line) or a .json list (strings or {"prompt": ...}).

    `field` names the setting or flag the spec came from, in every error message."""
    spec = str(spec)
    if spec == "builtin:vbench":
        from rglcd.data.builtin import vbench_prompts

        return vbench_prompts()
    if spec.startswith("builtin:"):
        raise ValueError(f"{field}: {spec!r} is not allowed; allowed: {ALLOWED}")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{field}: {spec!r} is not a file (allowed: {ALLOWED})")
    prompts = _json_prompts(path, field) if path.suffix == ".json" else path.read_text().splitlines()
    prompts = [str(p).strip() for p in prompts if str(p).strip()]
    if not prompts:
        raise ValueError(f"{field}: {spec}: holds no prompts")
    return prompts


def _json_prompts(path: Path, field: str) -> list:
    expected = f'{field}: {path}: expected a JSON list of strings (or {{"prompt": ...}} objects)'
    try:
        items = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{field}: {path}: not valid JSON ({err})") from None
    if not isinstance(items, list) or any(isinstance(i, dict) and "prompt" not in i for i in items):
        raise ValueError(expected)
    return [item["prompt"] if isinstance(item, dict) else item for item in items]
