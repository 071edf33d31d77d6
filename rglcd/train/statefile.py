"""State dicts as single safetensors files: tensors in the body, everything else as JSON in the header.

A checkpoint is read from a shared volume, so nothing in it may execute code when it is loaded
(docs/threat-model.md). Pickle-based formats (torch.save, accelerate's `*.pkl`/`*.bin`) can; this
format cannot: safetensors holds only raw tensors, and the rest of a state dict (optimizer hyper-
parameters, LR-schedule counters, RNG states, the loss scaler) is plain JSON with a few tagged forms:

    {"$t": "state.0.exp_avg"}        that tensor of the file's body (named by its place in the state, so
                                     a module's weights keep their parameter names)
    {"$np": "numpy.1", "dtype": "uint32"}  a numpy array (numpy's RNG key), stored as int64/float64
    {"$tuple": [...]}                a tuple (python's RNG state)
    {"$dict": [[key, value], ...]}   a dict with non-string keys (optimizer state is keyed by int)

Decoding is strict: an unknown tag, a missing tensor or a header that is not this format is an error
that names the file. Floats round-trip exactly (JSON writes repr), NaN/inf included.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

HEADER_KEY = "rglcd.state"
NUMPY_DTYPES = ("uint32", "int64", "int32", "uint8", "float64", "float32")


class StateFileError(ValueError):
    """A state file that cannot be read back: the message names the file."""


def save_state(obj: Any, path: str | Path) -> Path:
    """Write `obj` (nested dicts/lists/tuples of tensors, arrays and JSON scalars) to `path`."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(obj, tensors, "")
    save_file(tensors, str(path), metadata={HEADER_KEY: json.dumps(skeleton)})
    return Path(path)


def load_state(path: str | Path, device: str | torch.device = "cpu") -> Any:
    """Read what `save_state` wrote; tensors land on `device`. Never unpickles anything."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            header = (f.metadata() or {}).get(HEADER_KEY)
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:  # noqa: BLE001 - OSError, or safetensors' SafetensorError for a bad header/body
        raise StateFileError(f"{path}: not a readable safetensors state file ({type(err).__name__}: {err})") from None
    if header is None:
        raise StateFileError(f"{path}: no {HEADER_KEY!r} entry in its header (not an rglcd state file)")
    try:
        return _decode(json.loads(header), tensors)
    except (ValueError, TypeError, KeyError, RecursionError) as err:
        raise StateFileError(f"{path}: malformed state ({err})") from None


def _encode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = _new_key(where, tensors)
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()   # one copy each: no shared storage
        return {"$t": key}
    if isinstance(obj, np.ndarray):
        if obj.dtype.name not in NUMPY_DTYPES:
            raise TypeError(f"{where}: numpy dtype {obj.dtype} is not storable; allowed: {list(NUMPY_DTYPES)}")
        key = _new_key(where, tensors)
        wide = np.int64 if np.issubdtype(obj.dtype, np.integer) else np.float64   # exact for every allowed dtype
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj, dtype=wide))
        return {"$np": key, "dtype": obj.dtype.name}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, tensors, _join(where, i)) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, _join(where, i)) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        plain = all(isinstance(k, str) and not k.startswith("$") for k in obj)
        if plain:
            return {k: _encode(v, tensors, _join(where, k)) for k, v in obj.items()}
        if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in obj):
            raise TypeError(f"{where or 'state'}: dict keys must be str or int")
        return {"$dict": [[k, _encode(v, tensors, _join(where, k))] for k, v in obj.items()]}
    raise TypeError(f"{where or 'state'}: {type(obj).__name__} is not storable in a state file")


def _join(where: str, key: str | int) -> str:
    return f"{where}.{key}" if where else str(key)


def _new_key(where: str, tensors: dict[str, torch.Tensor]) -> str:
    key, n = where or "tensor", 1
    while key in tensors:             # {"a.b": x} and {"a": {"b": y}} would share a name
        key, n = f"{where}#{n}", n + 1
    return key


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        raise TypeError(f"unexpected JSON value of type {type(node).__name__}")
    tags = [k for k in node if k.startswith("$")]
    if not tags:
        return {k: _decode(v, tensors) for k, v in node.items()}
    if tags == ["$t"] and len(node) == 1:
        return tensors[_tensor_key(node["$t"], tensors)]
    if tags == ["$np"] and set(node) == {"$np", "dtype"} and node["dtype"] in NUMPY_DTYPES:
        return tensors[_tensor_key(node["$np"], tensors)].numpy().astype(node["dtype"])
    if tags == ["$tuple"] and len(node) == 1 and isinstance(node["$tuple"], list):
        return tuple(_decode(v, tensors) for v in node["$tuple"])
    if tags == ["$dict"] and len(node) == 1 and isinstance(node["$dict"], list):
        pairs = node["$dict"]
        if not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], (str, int)) for p in pairs):
            raise ValueError("a $dict entry is not a [key, value] pair")
        return {k: _decode(v, tensors) for k, v in pairs}
    raise ValueError(f"unknown tagged value with keys {sorted(node)[:5]}")


def _tensor_key(key: Any, tensors: dict[str, torch.Tensor]) -> str:
    if not isinstance(key, str) or key not in tensors:
        raise KeyError(f"tensor {str(key)[:40]!r} is not in the file")
    return key
