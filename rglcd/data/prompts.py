"""Prompt lists for validation images, evaluation and `rglcd sample` (`data.prompts`, `eval.prompts`, ...)."""
from __future__ import annotations

from pathlib import Path

from rglcd.plugins import source_handler
from rglcd.safeio import MAX_LIST_BYTES, parse_json, read_text

ALLOWED = "builtin:vbench, a .txt file (one prompt a line) or a .json list"


def load_prompts(spec: str | Path, field: str = "data.prompts") -> list[str]:
    """'builtin:vbench', a .txt file (one prompt a line) or a .json list (strings or {"prompt": ...}).

    `field` names the setting or flag the spec came from, in every error message."""
    spec = str(spec)
    handler = source_handler("prompts", spec)       # a registered scheme ("toy:captions", rglcd.plugins)
    if handler is not None:
        try:
            return handler(spec)
        except ValueError as err:
            raise ValueError(f"{field}: {err}") from None
    if spec == "builtin:vbench":
        from rglcd.data.builtin import vbench_prompts

        return vbench_prompts()
    if spec.startswith("builtin:"):
        raise ValueError(f"{field}: {spec!r} is not allowed; allowed: {ALLOWED}")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{field}: {spec!r} is not a file (allowed: {ALLOWED})")
    text = read_text(path, field, MAX_LIST_BYTES)
    prompts = _json_prompts(text, path, field) if path.suffix == ".json" else text.splitlines()
    prompts = [str(p).strip() for p in prompts if str(p).strip()]
    if not prompts:
        raise ValueError(f"{field}: {spec}: holds no prompts")
    return prompts


def _json_prompts(text: str, path: Path, field: str) -> list[str]:
    items = parse_json(text, field, path)
    if not isinstance(items, list) or not all(isinstance(i, str) or isinstance(i, dict) and
                                              isinstance(i.get("prompt"), str) for i in items):
        raise ValueError(f'{field}: {path}: expected a JSON list of strings (or {{"prompt": ...}} objects)')
    return [item["prompt"] if isinstance(item, dict) else item for item in items]
