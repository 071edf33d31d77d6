"""Reading small untrusted files: configs, metrics, prompt lists, pointers (docs/threat-model.md 3.1).

One reader for every such file, so each gets the same limits:

    data = read_mapping("run.yaml", "--config", error=ConfigError)   # JSON or YAML holding a mapping
    text = read_text("prompts.txt", "data.prompts")                   # bounded, strict UTF-8

- size: at most `max_bytes` are read (a FIFO or /dev/zero cannot hang or exhaust memory);
- text: strict UTF-8; a bad byte is an error naming the file and the offset;
- JSON is read as JSON (by suffix, or when the text parses as JSON), so `1e-07` is a float, not
  YAML 1.1's string; YAML is read with a safe loader that refuses duplicate keys, recursive aliases
  and alias expansion beyond `MAX_NODES` nodes (the "billion laughs" file of a few hundred bytes);
- errors name the input and never echo a whole value: every message is cut to `MAX_MESSAGE` chars.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

MAX_FILE_BYTES = 4 << 20     # config, metrics and pointer files: far above any real one
MAX_LIST_BYTES = 64 << 20    # prompt lists (COCO/PartiPrompts-size caption files are a few MB)
MAX_NODES = 100_000          # YAML nodes after alias expansion
MAX_DEPTH = 100              # nesting of mappings/lists (JSON and YAML)
MAX_MESSAGE = 300            # characters of an error message taken from a parser


def short(text: Any, limit: int = 80) -> str:
    """`repr`-like text cut to `limit` characters (a value or message echoed in an error)."""
    text = text if isinstance(text, str) else repr(text)
    return text if len(text) <= limit else f"{text[:limit - 20]}... ({len(text)} chars)"


def _fail(error: type[Exception], what: str, path: Path, problem: str) -> Exception:
    return error(f"{what}: {short(repr(str(path)), 200)} {short(problem, MAX_MESSAGE)}")


def read_bytes_bounded(path: str | Path, what: str, max_bytes: int = MAX_FILE_BYTES,
                       error: type[Exception] = ValueError) -> bytes:
    """The bytes of a regular file, at most `max_bytes`; a missing file is FileNotFoundError
    (or `error` when `error` is not ValueError's default), a folder or oversize file is `error`."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise _fail(error, what, path, "is a directory; expected a file")
    if not path.exists():
        exc = FileNotFoundError if error is ValueError else error
        raise _fail(exc, what, path, "does not exist")
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as err:
        raise _fail(error, what, path, f"cannot be read ({err.strerror or type(err).__name__})") from None
    if len(data) > max_bytes:
        raise _fail(error, what, path, f"is larger than the {max_bytes} bytes allowed")
    return data


def decode_text(data: bytes, what: str, path: str | Path, error: type[Exception] = ValueError) -> str:
    """Strict UTF-8 (a leading BOM is dropped); a bad byte is `error` naming the file and the offset."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _fail(error, what, Path(path), f"is not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
                                             f"{err.start})") from None


def read_text(path: str | Path, what: str, max_bytes: int = MAX_FILE_BYTES,
              error: type[Exception] = ValueError) -> str:
    """A bounded, strictly UTF-8 text file."""
    return decode_text(read_bytes_bounded(path, what, max_bytes, error), what, path, error)


# ---------------------------------------------------------------- parsing

class _Refused(Exception):
    """A structure the safe readers do not accept (duplicate key, alias bomb, too deep)."""


class SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys, recursive aliases and oversized alias expansion."""

    def construct_document(self, node: yaml.Node) -> Any:
        _expanded_size(node, {}, set(), 0)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (list, dict)):
                raise _Refused(f"line {key_node.start_mark.line + 1}: a mapping key must be a plain value")
            if key in seen:
                raise _Refused(f"line {key_node.start_mark.line + 1}: duplicate key {short(repr(key), 60)}")
            seen.add(key)
        return super().construct_mapping(node, deep)


def _expanded_size(node: yaml.Node, sizes: dict[int, int], path: set[int], depth: int) -> int:
    """Nodes under `node` with every alias expanded (memoised per node; a cycle is refused)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in path:
        raise _Refused(f"line {node.start_mark.line + 1}: recursive alias")
    if depth > MAX_DEPTH:
        raise _Refused(f"nested deeper than {MAX_DEPTH} levels")
    total = 1
    if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
        path.add(id(node))
        children = node.value if isinstance(node, yaml.SequenceNode) else [n for kv in node.value for n in kv]
        for child in children:
            total += _expanded_size(child, sizes, path, depth + 1)
            if total > MAX_NODES:
                raise _Refused(f"expands to more than {MAX_NODES} values (nested aliases)")
        path.discard(id(node))
    sizes[id(node)] = total
    return total


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"duplicate key {short(repr(key), 60)}")
        out[key] = value
    return out


def _too_deep(obj: Any) -> bool:
    """True when lists/dicts nest deeper than MAX_DEPTH (checked without recursion)."""
    stack = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > MAX_DEPTH:
                return True
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return False


def _json(text: str) -> Any:
    """json.loads with duplicate keys refused and nesting bounded (the C parser stops near the recursion
    limit with RecursionError; MAX_DEPTH is checked on the result)."""
    data = json.loads(text, object_pairs_hook=_no_duplicates)
    if _too_deep(data):
        raise _Refused(f"nested deeper than {MAX_DEPTH} levels")
    return data


def parse_json(text: str, what: str, path: str | Path, error: type[Exception] = ValueError) -> Any:
    """JSON with duplicate keys and nesting beyond MAX_DEPTH refused; errors name `what` and `path`."""
    try:
        return _json(text)
    except json.JSONDecodeError as err:
        raise _fail(error, what, Path(path), f"is not valid JSON ({err.msg} at line {err.lineno} column "
                                             f"{err.colno})") from None
    except _Refused as err:
        raise _fail(error, what, Path(path), f"is not accepted: {err}") from None
    except RecursionError:
        raise _fail(error, what, Path(path), f"is not accepted: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise _fail(error, what, Path(path), f"is not valid JSON ({err})") from None


def parse_yaml(text: str, what: str, path: str | Path, error: type[Exception] = ValueError) -> Any:
    """YAML through `SafeLoader`; errors name `what` and `path` and are short."""
    try:
        return yaml.load(text, Loader=SafeLoader)  # noqa: S506 - SafeLoader subclass
    except _Refused as err:
        raise _fail(error, what, Path(path), f"is not accepted: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise _fail(error, what, Path(path), f"is not valid YAML{where} ({problem})") from None
    except RecursionError:
        raise _fail(error, what, Path(path), "is not accepted: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as err:  # constructors: bad dates, unhashable keys, ...
        raise _fail(error, what, Path(path), f"is not valid YAML ({type(err).__name__}: {err})") from None


def parse_data(text: str, what: str, path: str | Path, error: type[Exception] = ValueError) -> Any:
    """JSON when the file is named .json or its text parses as JSON; YAML otherwise."""
    if Path(path).suffix.lower() == ".json":
        return parse_json(text, what, path, error)
    if text.lstrip()[:1] in ("{", "["):
        try:
            return _json(text)
        except (ValueError, _Refused, RecursionError):
            pass  # YAML flow style, or a JSON problem the YAML reader reports with its line
    return parse_yaml(text, what, path, error)


def read_data(path: str | Path, what: str, max_bytes: int = MAX_FILE_BYTES,
              error: type[Exception] = ValueError) -> Any:
    """A bounded JSON or YAML file, parsed safely (see the module docstring)."""
    return parse_data(read_text(path, what, max_bytes, error), what, path, error)


def read_mapping(path: str | Path, what: str, max_bytes: int = MAX_FILE_BYTES,
                 error: type[Exception] = ValueError) -> dict[str, Any]:
    """`read_data` that must give a mapping (an empty file is an empty mapping)."""
    data = read_data(path, what, max_bytes, error)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise _fail(error, what, Path(path), f"must hold a mapping, got {type(data).__name__}")
    return data


__all__ = ["MAX_FILE_BYTES", "MAX_LIST_BYTES", "SafeLoader", "decode_text", "parse_data", "parse_json",
           "parse_yaml", "read_bytes_bounded", "read_data", "read_mapping", "read_text", "short"]
