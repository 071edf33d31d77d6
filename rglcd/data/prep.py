"""`rglcd prep`: validate any image-caption source and write sharded tars plus `manifest.json`.

Each record is checked: the image decodes fully, its shorter side is >= data.min_image_size, the
caption is non-empty and at most data.max_caption_tokens tokens with the teacher's tokenizer, and its
decoded pixels are not an exact duplicate of an earlier record; images larger than the pixel limit
(data.max_image_pixels, derived from model.resolution) are refused from their header, before decoding.
Failures are dropped, counted by reason and listed (the first MAX_REJECTS) in the manifest. Optionally
the teacher's VAE latent moments (8 channels, centre crop at model.resolution) are stored with each
record (data.precompute_latents). Shards are staged inside the output folder (rglcd.outdir) and
installed at the end, the manifest last, so an interrupted prep leaves no half-written output, nothing
outside the folder, and no file of the user's touched.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image

from rglcd.data.images import (BadImage, ImageTooLarge, image_from_bytes, encode_image, pixel_hash, pixel_limit,
                               to_training_tensor)
from rglcd.data.io import TooLarge, is_remote, read_bytes
from rglcd.data.manifest import DROP_REASONS, FORMAT, MANIFEST, content_hash, read_manifest
from rglcd.data.merge import merge_into, write_partial
from rglcd.data.partition import read_partition
from rglcd.data.sources import LATENT_KEY, Record, Source, open_source
from rglcd.data.tally import Tally
from rglcd.data.tarindex import record_offsets
from rglcd.outdir import claim, install, journal, work_area
from rglcd.urls import redact_urls

ENCODE_BATCH = 16          # images per VAE encode call when precomputing latents
_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


# ---------------------------------------------------------------- validation

def _fetch(record: Record, max_bytes: int) -> bytes | Image.Image | None:
    """The record's encoded bytes (read from its path/URL if need be, at most `max_bytes`) or its decoded
    image; None if unreadable. TooLarge when the file is larger."""
    if not isinstance(record.image, str):
        return record.image
    if not is_remote(record.image) and not Path(record.image).is_file():  # no FIFOs or devices
        return None
    try:
        return read_bytes(record.image, max_bytes)
    except TooLarge:
        raise
    except Exception:  # missing file, HTTP/S3 error: fsspec and aiohttp raise various types
        return None


def check_record(record: Record, tokenizer, min_size: int, max_tokens: int, seen: set[str],
                 max_pixels: int) -> tuple[str | None, bytes | None, Image.Image | None, str | None]:
    """(drop reason or None, original bytes, decoded image, pixel hash). Adds the pixel hash to `seen`.

    Images with more than `max_pixels` pixels (or files larger than 4 bytes a pixel) are `too_large`,
    refused from their header before they are decoded (decompression bombs)."""
    if record.problem is not None:
        return record.problem, None, None, None
    try:
        data = _fetch(record, 4 * max_pixels + (1 << 20))
    except TooLarge:
        return "too_large", None, None, None
    if data is None:
        return "missing_image", None, None, None
    if isinstance(data, Image.Image):
        data, image = None, data.convert("RGB")
    else:
        try:
            image = image_from_bytes(data, max_pixels)
        except ImageTooLarge:
            return "too_large", None, None, None
        except BadImage:
            return "corrupt_image", None, None, None
    if min(image.size) < min_size:
        return "too_small", None, None, None
    caption = (record.caption or "").strip()
    if not caption:
        return "empty_caption", None, None, None
    if len(tokenizer(caption, truncation=False, verbose=False).input_ids) > max_tokens:
        return "caption_too_long", None, None, None
    digest = pixel_hash(image)
    if digest in seen:
        return "duplicate", None, None, None
    seen.add(digest)
    return None, data, image, digest


def _stored_image(data: bytes | None, image: Image.Image) -> tuple[str, bytes]:
    """Keep the original encoding when it is JPEG/PNG/WebP; otherwise store JPEG (quality 95)."""
    if data is not None:
        fmt = Image.open(io.BytesIO(data)).format
        if fmt in _FORMATS:
            return _FORMATS[fmt], data
    return "jpg", encode_image(image, "jpeg")


# ---------------------------------------------------------------- writing

class ShardSet:
    """Writes records into shard-000000.tar, shard-000001.tar, ... (reproducible tars: fixed mtime)."""

    def __init__(self, folder: Path, shard_size: int):
        self.folder, self.shard_size = folder, shard_size
        self.shards: list[dict[str, Any]] = []
        self._writer, self._file, self.count = None, None, 0

    def write(self, sample: dict[str, Any]) -> None:
        from webdataset import TarWriter

        if self._writer is None:
            name = f"shard-{len(self.shards):06d}.tar"
            self._file = open(self.folder / name, "wb")
            self._writer = TarWriter(self._file, encoder=False, mtime=0)
            self.shards.append({"name": name, "count": 0})
        self._writer.write(sample)
        self.shards[-1]["count"] += 1
        self.count += 1
        if self.shards[-1]["count"] == self.shard_size:
            self._close()

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._file.close()
            self._writer = self._file = None
            shard = self.shards[-1]
            shard["sha256"] = hashlib.sha256((self.folder / shard["name"]).read_bytes()).hexdigest()
            shard["offsets"] = record_offsets(self.folder / shard["name"])  # ranged reads in training

    def finish(self) -> list[dict[str, Any]]:
        self._close()
        return self.shards


def _sample(index: int, caption: str, data: bytes | None, image: Image.Image,
            extra: dict[str, Any] | None = None) -> tuple[dict[str, Any], Image.Image]:
    """The shard sample, and the image exactly as stored (what latents must be computed from).
    `extra`: more fields for the sample's json (a partition's merge information)."""
    ext, payload = _stored_image(data, image)
    meta = {"index": index, "width": image.size[0], "height": image.size[1], **(extra or {})}
    stored = image if payload is data else image_from_bytes(payload)  # re-encoded JPEG: use the decoded copy
    return {"__key__": f"{index:09d}", ext: payload, "txt": caption.encode("utf-8"),
            "json": json.dumps(meta, sort_keys=True).encode()}, stored


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


@torch.no_grad()
def encode_moments(vae: torch.nn.Module, images: list[Image.Image], resolution: int) -> np.ndarray:
    """Centre-cropped images -> VAE posterior moments (N, 8, h, w) float32 (mean and log-variance).

    Every encode call is a batch of exactly ENCODE_BATCH (padded with zeros), so kernels see the same
    shapes whichever records share a batch: a record's latents do not depend on how a parallel prep
    split the data (rglcd.data.partition)."""
    out = []
    for i in range(0, len(images), ENCODE_BATCH):
        chunk = [to_training_tensor(im, resolution) for im in images[i:i + ENCODE_BATCH]]
        pixels = torch.zeros(ENCODE_BATCH, *chunk[0].shape)                             # (B, 3, res, res)
        pixels[:len(chunk)] = torch.stack(chunk)
        params = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.parameters  # (B, 8, h, w)
        out.append(params[:len(chunk)].float().cpu().numpy())
    return np.concatenate(out)


# ---------------------------------------------------------------- the whole prep

def _load_teacher_parts(cfg, need_vae: bool):
    """The teacher's tokenizer (always) and VAE (for latents), without loading its UNet."""
    from transformers import CLIPTokenizer

    from rglcd.models.sources import resolve
    from rglcd.models.tokenizer import check_tokenizer

    path = resolve(cfg.model.teacher, cfg.model.cache_dir, cfg.model.revision,
                   allow_patterns=["tokenizer/*", "vae/*.json", "vae/diffusion_pytorch_model.safetensors"])
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    check_tokenizer(tokenizer, str(path / "tokenizer"))
    if not need_vae:
        return tokenizer, None
    from diffusers import AutoencoderKL

    device = "cuda" if torch.cuda.is_available() else "cpu"
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae").to(device).eval().requires_grad_(False)
    return tokenizer, vae


def _write_all(cfg, records: Iterable[Record], tokenizer, vae, shards: ShardSet, tally: Tally,
               partial: bool = False) -> None:
    """Validate `records` in order and write the kept ones. `partial` (a partition of a parallel prep):
    each sample's json also holds its pixel hash, its position among the records seen and its key, and
    each reject its position ("at"), for the merge (rglcd.data.merge)."""
    seen_hashes: set[str] = set()
    max_pixels = pixel_limit(cfg.model.resolution, cfg.data.max_image_pixels)
    pending: list[tuple[dict[str, Any], Image.Image]] = []

    def flush() -> None:
        if vae is not None and pending:
            moments = encode_moments(vae, [im for _, im in pending], cfg.model.resolution)
            for (sample, _), m in zip(pending, moments):
                sample[LATENT_KEY] = _npy(m)
        for sample, _ in pending:
            shards.write(sample)
        pending.clear()

    for record in records:
        at, tally.seen = tally.seen, tally.seen + 1
        reason, data, image, digest = check_record(record, tokenizer, cfg.data.min_image_size,
                                           cfg.data.max_caption_tokens, seen_hashes, max_pixels)
        if reason is not None:
            tally.drop(record.key, reason, at if partial else None)
            continue
        extra = {"pixel_sha256": digest, "at": at, "key": redact_urls(record.key)} if partial else {}
        pending.append(_sample(shards.count + len(pending), record.caption.strip(), data, image, extra))
        if len(pending) == ENCODE_BATCH:
            flush()
    flush()


def _owned(out: Path) -> set[str]:
    """Files an earlier prep wrote in `out`: its manifest, the shards the manifest lists, and the files a
    killed prep had started to install (its journal)."""
    owned = journal(out)
    try:
        manifest = read_manifest(str(out)) if (out / MANIFEST).is_file() else None
    except ValueError:
        manifest = None  # not a manifest prep can read: the folder is not (only) ours
    if manifest is not None:
        owned |= {MANIFEST} | {s["name"] for s in manifest["shards"]}
    return owned


def prep(cfg, source: str, out_dir: str | Path, overwrite: bool = False, workers: int = 1) -> dict[str, Any]:
    """Ingest `source` (image folder, table, shards or builtin:photos[:N]) into shards at `out_dir`.

    `out_dir` must be new, empty or an earlier prep output; with `overwrite` it may hold other files,
    which are left untouched (rglcd.outdir). Shards are staged in `out_dir/.rglcd-work` and installed
    at the end, the manifest last. `workers` > 1: that many processes each prep one partition of the
    source (rglcd.data.partition) and the partitions are merged (rglcd.data.merge); the output is the
    same as with one process. Returns the manifest (also written as out_dir/manifest.json).
    Raises ValueError when no record is valid; then nothing in `out_dir` has changed."""
    out = Path(out_dir).expanduser().resolve()
    open_checked(cfg, source)   # a dvc:// source is fetched into the cache here, once, before any worker
    owned = _owned(out)
    claim(out, owned, set(), overwrite)
    with work_area(out) as work:
        if workers <= 1:
            shards, tally, latents = _prep_into(cfg, source, work, 0, 1)
        else:
            shards = ShardSet(work, cfg.data.shard_size)
            tally, latents, _ = merge_into(_run_partitions(cfg, source, work, workers), shards)
        return _install(cfg, source, out, work, owned, overwrite, shards, tally, latents)


def open_checked(cfg, source: str) -> Source:
    """The source, refused when it already holds latents (prep reads image data sets)."""
    src = open_source(source, cfg.data.remote_images, cfg.storage.cache_dir)
    if getattr(src, "latents", False):
        raise ValueError(f"{source}: already holds precomputed latents; prep reads image data sets")
    return src


def _prep_into(cfg, source: str, folder: Path, part: int, parts: int,
               partial: bool = False) -> tuple[ShardSet, Tally, dict[str, Any]]:
    """Validate partition `part` of `parts` of `source` into shards in `folder`."""
    tokenizer, vae = _load_teacher_parts(cfg, cfg.data.precompute_latents)
    shards, tally = ShardSet(folder, cfg.data.shard_size), Tally()
    def truncated(url: str, err: Exception) -> None:
        tally.drop(url, "truncated", tally.seen if partial else None)

    records = read_partition(open_checked(cfg, source), part, parts, truncated)
    _write_all(cfg, records, tokenizer, vae, shards, tally, partial)
    shards.finish()
    return shards, tally, latents_info(cfg, vae)


def _install(cfg, source: str, out: Path, work: Path, owned: set[str], overwrite: bool, shards: ShardSet,
             tally: Tally, latents: dict[str, Any]) -> dict[str, Any]:
    """Write the manifest and install shards + manifest (last) from `work` into `out`."""
    if shards.count == 0:
        raise ValueError(f"{source}: no valid records among {tally.seen} seen "
                         f"(dropped: {dict(tally.dropped) or 'none'})")
    manifest = _manifest(cfg, source, shards.shards, tally, latents)
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    new = [s["name"] for s in shards.shards] + [MANIFEST]
    stale = claim(out, owned, set(new), overwrite)
    install(work, out, new, last=MANIFEST, stale=stale, journal_names=owned | set(new))
    return manifest


def prep_partition(cfg, source: str, out_dir: str | Path, part: int, parts: int) -> dict[str, Any]:
    """Prep partition `part` of `parts` of `source` into the new or empty folder `out_dir`: shards whose
    samples carry what the merge needs, and `partial.json` (rglcd.data.merge). Returns partial.json."""
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"prep partition: {str(out)!r} exists and is not an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    shards, tally, latents = _prep_into(cfg, source, out, part, parts, partial=True)
    return write_partial(out, source, part, parts, shards.shards, tally, latents)


def prep_merge(cfg, partitions: list[str | Path], out_dir: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Merge the folders of `prep_partition` (in partition order) into one prep output at `out_dir` (as
    `prep` writes it: staged, installed manifest last); the same output as a one-process prep."""
    out = Path(out_dir).expanduser().resolve()
    owned = _owned(out)
    claim(out, owned, set(), overwrite)
    with work_area(out) as work:
        shards = ShardSet(work, cfg.data.shard_size)
        tally, latents, source = merge_into([Path(p) for p in partitions], shards)
        if shards.count == 0:
            raise ValueError(f"partitions {partitions[0]}...: no valid records among {tally.seen} seen "
                             f"(dropped: {dict(tally.dropped) or 'none'})")
        return _install(cfg, source, out, work, owned, overwrite, shards, tally, latents)


def _partition_job(args: tuple) -> str:
    cfg, source, folder, part, parts = args
    prep_partition(cfg, source, folder, part, parts)
    return folder


def _run_partitions(cfg, source: str, work: Path, workers: int) -> list[Path]:
    """Prep `workers` partitions under `work`: partition 0 in this process, the others in as many spawned
    processes (no forked torch or CUDA state) at the same time."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    folders = [work / f"part-{i:05d}" for i in range(workers)]
    jobs = [(cfg, source, str(f), i, workers) for i, f in enumerate(folders)]
    with ProcessPoolExecutor(workers - 1, mp_context=multiprocessing.get_context("spawn")) as pool:
        others = [pool.submit(_partition_job, job) for job in jobs[1:]]
        _partition_job(jobs[0])
        for done in others:
            done.result()
    return folders


def latents_info(cfg, vae) -> dict[str, Any]:
    """The manifest's `latents` field for latents encoded with `vae` (None: not precomputed)."""
    latents: dict[str, Any] = {"precomputed": vae is not None}
    if vae is not None:
        from rglcd.models import vae_scale_factor

        side = cfg.model.resolution // vae_scale_factor(vae)
        latents.update(resolution=cfg.model.resolution, vae=cfg.model.teacher, crop="center", dtype="float32",
                       shape=[2 * vae.config.latent_channels, side, side], key=LATENT_KEY)
    return latents


def _manifest(cfg, source: str, shards: list[dict], tally: Tally, latents: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "source": source, "num_records": sum(s["count"] for s in shards),
            "seen": tally.seen, "dropped": {r: tally.dropped.get(r, 0) for r in DROP_REASONS},
            "rejects": tally.rejects, "shards": shards, "content_hash": content_hash(shards), "latents": latents,
            "filters": {"min_image_size": cfg.data.min_image_size, "max_caption_tokens": cfg.data.max_caption_tokens,
                        "max_image_pixels": pixel_limit(cfg.model.resolution, cfg.data.max_image_pixels),
                        "tokenizer": cfg.model.teacher, "dedup": "sha256 of decoded RGB pixels"}}
