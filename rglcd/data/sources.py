"""Record sources: webdataset tar shards, tables, image folders and the built-in photos.

Every source is a list of *units* (a shard, a block of table rows, ...) with known record counts, read
unit by unit from any offset. That is all the deterministic training stream (`rglcd.data.stream`)
needs to place each process at an exact position, and all `rglcd prep` needs to ingest anything.
Records carry raw bytes (or a path/URL); decoding happens only in the process that uses the record.

A source with `random_access` also reads one record by its place, `read_record(unit, j)`, so each
(rank, loader worker) reads only the records it uses (docs/architecture.md 2.6.1): prep shards whose
manifest has byte offsets (one ranged read per record), tables, folders and the built-in photos. Tar
shards without offsets (plain webdataset shards, manifests from before offsets) are read whole, unit by
unit: every (rank, worker) then reads all their bytes each epoch and decodes only its own records.
"""
from __future__ import annotations

import io
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
import numpy.lib.format as npformat
from PIL import Image

from rglcd.data.dvcsource import is_dvc_url, materialize
from rglcd.data.images import IMAGE_EXTENSIONS
from rglcd.data.io import file_size, is_remote, list_tars, open_binary, read_ranges
from rglcd.data.manifest import read_manifest
from rglcd.data.refs import OUTSIDE, resolve_local, resolve_ref
from rglcd.data.tarindex import parse_records
from rglcd.plugins import source_handler
from rglcd.safeio import read_text, short
from rglcd.urls import redact_urls

TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
IMAGE_COLUMNS = ("image", "image_path", "path", "file", "url", "image_url")
CAPTION_COLUMNS = ("caption", "text", "prompt")
TABLE_UNIT = 1000  # rows per unit of a table
LATENT_KEY = "latent_moments.npy"
MAX_CAPTION_BYTES = 1 << 16  # a caption file larger than this is not a caption

DVC_CACHE = "~/.cache/rglcd/dvc"  # where dvc:// sources go when the caller names no cache (storage.cache_dir)

ErrorHook = Callable[[str, Exception], None]


@dataclass
class Record:
    index: int                                   # global index of the example in its data set
    caption: str | None
    image: bytes | str | Image.Image | None      # encoded bytes, a path/URL to read, or a decoded image
    latent_moments: np.ndarray | None = None     # (8, h, w) VAE mean and log-variance, when precomputed
    key: str = ""                                # where it came from (for messages)
    problem: str | None = None                   # why the source already knows it is unusable (a drop reason)


class Source(Protocol):
    name: str
    latents: bool          # records hold precomputed latent moments (only ever set from a manifest)

    def num_units(self) -> int: ...
    def unit_counts(self) -> list[int]: ...
    def read_unit(self, unit: int, skip: int = 0, on_error: ErrorHook | None = None) -> Iterator[Record]: ...


class RandomAccessSource(Source, Protocol):
    random_access: bool    # read_record works (else the stream reads whole units)

    def read_record(self, unit: int, j: int) -> Record: ...


def read_records(source: RandomAccessSource, places: list[tuple[int, int]]) -> list[Record]:
    """The records at (unit, j) places, read together when the source can (`read_records`: ranged reads sent
    at once), else one by one."""
    many = getattr(source, "read_records", None)
    return many(places) if many is not None else [source.read_record(u, j) for u, j in places]


# ---------------------------------------------------------------- tar shards

def iter_tar(url: str, on_error: ErrorHook | None = None, data: bytes | None = None) -> Iterator[dict]:
    """Samples {"__key__", ext: bytes} of one tar (webdataset layout: files grouped by key); with `data`,
    of those bytes of it (a ranged read of whole records).

    A truncated or unreadable tar stops the iteration; `on_error(url, err)` decides what happens
    (default: raise a ValueError naming the shard). A file cut short by the error is never yielded.
    """
    from webdataset.tariterators import base_plus_ext, tar_file_iterator

    errors: list[Exception] = []

    def stop(err: Exception) -> bool:  # webdataset handler: record the error, then stop reading
        errors.append(err)
        return False

    current: dict | None = None
    try:
        with (open_binary(url) if data is None else io.BytesIO(data)) as stream:
            for item in tar_file_iterator(stream, handler=stop):
                key, ext = base_plus_ext(item["fname"])
                if key is None:
                    continue
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                current = current or {"__key__": key}
                current[ext.lower()] = item["data"]
    except Exception as err:  # tarfile raises ReadError/EOFError/OSError for cut or corrupt archives
        errors.append(err)
    if errors and on_error is None:
        raise ValueError(f"shard {url}: unreadable or truncated ({errors[0]})") from None
    if current is not None:  # holds only fully read files; a sample missing a part fails validation later
        yield current
    if errors:
        on_error(url, errors[0])


def _caption(sample: dict) -> str | None:
    """The sample's caption (.txt, .caption or "caption" of .json); UnicodeError when it is not UTF-8/JSON."""
    caption = sample.get("txt", sample.get("caption"))
    if caption is None and "json" in sample:
        meta = json.loads(sample["json"].decode("utf-8"))  # JSONDecodeError is a ValueError
        caption = meta.get("caption") if isinstance(meta, dict) else None
    if isinstance(caption, bytes):
        caption = caption.decode("utf-8")
    return caption if isinstance(caption, str) else None


def _load_npy(data: bytes) -> np.ndarray:
    """A .npy array without pickles, its header checked against the bytes there are (no huge allocation)."""
    stream = io.BytesIO(data)
    version = npformat.read_magic(stream)
    readers = {(1, 0): npformat.read_array_header_1_0, (2, 0): npformat.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f".npy version {version} is not allowed; allowed: 1.0, 2.0")
    shape, _, dtype = readers[version](stream)
    if dtype.hasobject or math.prod(shape) * dtype.itemsize > len(data):
        raise ValueError("array header does not match its data")
    return np.load(io.BytesIO(data), allow_pickle=False)


def sample_to_record(sample: dict, index: int) -> Record:
    """A webdataset sample -> Record; a caption that is not UTF-8 or latents that do not load set `problem`."""
    image_ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    record = Record(index, None, sample[image_ext] if image_ext else None, None, sample["__key__"])
    try:
        record.caption = _caption(sample)
    except (ValueError, RecursionError):  # UnicodeDecodeError, JSONDecodeError, a JSON nested too deeply
        record.problem = "bad_caption_encoding"
    if LATENT_KEY in sample:
        try:
            record.latent_moments = _load_npy(sample[LATENT_KEY])
        except Exception:  # numpy's header parser raises ValueError, SyntaxError, tokenize.TokenError, EOFError...
            record.problem = record.problem or "corrupt_latents"
    return record


class ShardSource:
    """Tar shards. Counts come from the manifest, or from one scan of the shards when there is none.

    With per-record byte `offsets` (from a prep manifest, already checked by `check_manifest`) a record
    is one ranged read (`read_record`); each shard's size is checked against its offsets before its
    first one, and each read must hold exactly the record expected there."""

    def __init__(self, urls: list[str], counts: list[int] | None = None, latents: bool = False,
                 keyed_by_index: bool = False, name: str = "shards", manifest: dict | None = None,
                 offsets: list[list[int]] | None = None):
        if not urls:
            raise FileNotFoundError(f"{name}: no .tar shards found")
        self.urls, self.latents, self.keyed_by_index, self.name = urls, latents, keyed_by_index, name
        self.manifest = manifest  # the prep manifest the shards came with, if any
        self._counts = counts
        self.offsets = offsets if keyed_by_index and counts is not None else None
        self.random_access = self.offsets is not None
        self._sized: set[int] = set()  # units whose file size was checked against their offsets
        self._first = [0, *itertools.accumulate(counts or [])]  # global index of each unit's first record

    def num_units(self) -> int:
        return len(self.urls)

    def unit_counts(self) -> list[int]:
        if self._counts is None:
            # readable records per shard; a truncated shard is reported when it is read, not here
            self._counts = [sum(1 for _ in iter_tar(url, on_error=lambda *_: None)) for url in self.urls]
        return self._counts

    def read_unit(self, unit: int, skip: int = 0, on_error: ErrorHook | None = None) -> Iterator[Record]:
        offset = sum(self.unit_counts()[:unit]) if not self.keyed_by_index else 0
        for j, sample in enumerate(iter_tar(self.urls[unit], on_error)):
            if j >= skip:
                yield sample_to_record(sample, self._index(unit, sample["__key__"]) if self.keyed_by_index
                                       else offset + j)

    def read_record(self, unit: int, j: int) -> Record:
        """Record j of shard `unit`, by one ranged read of its bytes."""
        return self.read_records([(unit, j)])[0]

    def read_records(self, places: list[tuple[int, int]]) -> list[Record]:
        """The records at (unit, j) places: one ranged read each, sent together (rglcd.data.io.read_ranges)."""
        ranges = [(self.urls[u], self._checked_offsets(u)[j], self.offsets[u][j + 1]) for u, j in places]
        datas = read_ranges(*map(list, zip(*ranges))) if ranges else []
        return [self._record_in(u, j, start, end, data) for (u, j), (_, start, end), data in zip(places, ranges, datas)]

    def _record_in(self, unit: int, j: int, start: int, end: int, data: bytes) -> Record:
        """Record j of shard `unit` from the bytes [start, end) read for it, which must hold it alone."""
        url = self.urls[unit]
        where = f"shard {url}: bytes {start}-{end} (record {j})"
        try:
            samples = parse_records(data)
            samples = list(iter_tar(url, data=data)) if samples is None else samples
        except ValueError as err:
            raise ValueError(f"{where} are not whole records ({err}); the manifest's offsets do not match the "
                             "shard (shards changed after their manifest was written?)") from None
        expected = self._first[unit] + j
        if len(samples) != 1 or self._index(unit, samples[0]["__key__"]) != expected:
            found = ", ".join(short(s["__key__"], 40) for s in samples[:3]) or "none"
            raise ValueError(f"{where} hold record(s) {found}, expected record {expected:09d} alone; the manifest's "
                             "offsets do not match the shard (shards changed after their manifest was written?)")
        return sample_to_record(samples[0], expected)

    def _checked_offsets(self, unit: int) -> list[int]:
        offsets = self.offsets[unit]
        if unit not in self._sized:
            size = file_size(self.urls[unit])
            if offsets[-1] > size:
                raise ValueError(f"shard {self.urls[unit]}: the manifest's offsets end at byte {offsets[-1]}, the file "
                                 f"holds {size} bytes (shards changed after their manifest was written?)")
            self._sized.add(unit)
        return offsets

    def _index(self, unit: int, key: str) -> int:
        if not key.isdigit():
            raise ValueError(f"shard {self.urls[unit]}: record key {key[:40]!r} is not a record index "
                             "(shards changed after their manifest was written?)")
        return int(key)


# ---------------------------------------------------------------- tables, folders, built-in photos

def _pick(columns: list[str], candidates: tuple[str, ...], what: str, table: str) -> str:
    found = next((c for c in candidates if c in columns), None)
    if found is None:
        raise ValueError(f"table {table}: no {what} column; allowed names: {', '.join(candidates)} "
                         f"(columns present: {short(', '.join(columns), 200)})")
    return found


class TableSource:
    """A JSONL/JSON/CSV/TSV/parquet table of (image path or URL, caption).

    References resolve only inside the table's own folder or URL prefix, or under `remote_images`
    prefixes (rglcd.data.refs); others become records with the problem `outside_source`. CSV/TSV
    captions that are not UTF-8 become `bad_caption_encoding`; a table that does not parse is a
    ValueError naming it."""

    def __init__(self, table: str, remote_images: tuple[str, ...] = ()):
        frame = _read_table(table)
        image_col = _pick(list(frame.columns), IMAGE_COLUMNS, "image", table)
        caption_col = _pick(list(frame.columns), CAPTION_COLUMNS, "caption", table)
        remote = is_remote(table)
        base = table.rsplit("/", 1)[0] if remote else str(Path(table).expanduser().resolve().parent)
        self.refs = [v if isinstance(v, str) and v else None for v in frame[image_col]]
        self.images = [resolve_ref(v, base, remote, tuple(remote_images)) if v else None for v in self.refs]
        self.captions = [v if isinstance(v, str) else None for v in frame[caption_col]]
        self.name, self.latents = table, False

    def num_units(self) -> int:
        return len(self.unit_counts())

    def unit_counts(self) -> list[int]:
        n = len(self.images)
        return [min(TABLE_UNIT, n - s) for s in range(0, n, TABLE_UNIT)]

    def read_unit(self, unit: int, skip: int = 0, on_error: ErrorHook | None = None) -> Iterator[Record]:
        start = unit * TABLE_UNIT + skip
        for i in range(start, min((unit + 1) * TABLE_UNIT, len(self.images))):
            yield self._record(i)

    random_access = True  # rows are in memory; an image is read only by the process that uses it

    def read_record(self, unit: int, j: int) -> Record:
        return self._record(unit * TABLE_UNIT + j)

    def _record(self, i: int) -> Record:
        ref, caption = self.refs[i], self.captions[i]
        key = f"{self.name} row {i}: {short(redact_urls(ref or ''), 120)}"
        record = Record(i, caption, self.images[i], key=key)
        if ref is not None and self.images[i] is None:
            record.problem = OUTSIDE
        elif caption is not None and _SURROGATE.search(caption):
            record.caption, record.problem = None, "bad_caption_encoding"
        return record


_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (read with surrogateescape)


def _read_table(table: str):
    """The table as a DataFrame; anything that does not parse is a ValueError naming the table."""
    import pandas as pd

    suffix = Path(table).suffix.lower()
    text = {"encoding": "utf-8", "encoding_errors": "surrogateescape"}
    readers = {".jsonl": lambda f: pd.read_json(f, lines=True), ".json": pd.read_json,
               ".csv": lambda f: pd.read_csv(f, **text), ".tsv": lambda f: pd.read_csv(f, sep="\t", **text),
               ".parquet": pd.read_parquet}
    try:
        with open_binary(table) as handle:
            frame = readers[suffix](handle)
    except (FileNotFoundError, IsADirectoryError) as err:
        raise FileNotFoundError(f"table {table}: cannot be opened ({type(err).__name__})") from None
    except Exception as err:  # pandas/pyarrow raise many types for empty, garbage or non-UTF-8 tables
        raise ValueError(f"table {table}: cannot be read as {suffix[1:]} ({type(err).__name__}: "
                         f"{short(str(err), 160)})") from None
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"table {table}: expected rows of (image, caption), got a {type(frame).__name__}")
    frame.columns = [str(c) for c in frame.columns]
    return frame


class FolderSource:
    """A folder of images with same-named .txt captions (x.jpg + x.txt), recursive, in sorted order."""

    def __init__(self, folder: str):
        root = self.root = Path(folder).expanduser()
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)
        if not self.files:
            raise FileNotFoundError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
        self.name, self.latents = folder, False

    def num_units(self) -> int:
        return 1

    def unit_counts(self) -> list[int]:
        return [len(self.files)]

    def read_unit(self, unit: int, skip: int = 0, on_error: ErrorHook | None = None) -> Iterator[Record]:
        for i in range(skip, len(self.files)):
            yield self._record(i)

    random_access = True  # a record is its file and caption, read only by the process that uses it

    def read_record(self, unit: int, j: int) -> Record:
        return self._record(j)

    def _record(self, i: int) -> Record:
        """A file and its caption, when both resolve (symlinks followed) inside the folder."""
        file, txt = self.files[i], self.files[i].with_suffix(".txt")
        record = Record(i, None, None, key=str(file))
        if resolve_local(str(file), self.root) is None:
            record.problem = OUTSIDE
            return record
        record.image = str(file)  # read by the process that uses it (prep: bounded by the pixel limit)
        if not txt.is_file() or resolve_local(str(txt), self.root) is None:
            return record
        if txt.stat().st_size > MAX_CAPTION_BYTES:
            record.problem = "caption_too_long"
            return record
        try:
            record.caption = read_text(txt, "caption", MAX_CAPTION_BYTES)
        except ValueError:
            record.problem = "bad_caption_encoding"
        return record


class BuiltinPhotos:
    """`builtin:photos[:N]` (rglcd.data.builtin)."""

    def __init__(self, spec: str = "builtin:photos"):
        from rglcd.data.builtin import parse_photos_spec

        self.n, self.name, self.latents = parse_photos_spec(spec), spec, False

    def num_units(self) -> int:
        return 1

    def unit_counts(self) -> list[int]:
        return [self.n]

    def read_unit(self, unit: int, skip: int = 0, on_error: ErrorHook | None = None) -> Iterator[Record]:
        for i in range(skip, self.n):
            yield self.read_record(unit, i)

    random_access = True

    def read_record(self, unit: int, j: int) -> Record:
        from rglcd.data.builtin import photo_record

        image, caption = photo_record(j)
        return Record(j, caption, image, key=f"{self.name} #{j}")


# ---------------------------------------------------------------- choosing a source

def open_source(spec: str, remote_images: tuple[str, ...] | list[str] = (), cache_dir: str | None = None) -> Source:
    """A data spec -> its source. Shards hold latents only when their manifest says so (never guessed).
    `remote_images`: URL prefixes a table's rows may fetch images from (data.remote_images).
    `dvc://REPO[@REV]/PATH` is downloaded once into `cache_dir` (storage.cache_dir; rglcd.data.dvcsource),
    then opened as the local spec it is."""
    if is_dvc_url(spec):
        return open_source(str(materialize(spec, cache_dir or DVC_CACHE)), remote_images)
    handler = source_handler("data", spec)          # a registered scheme ("toy:shapes", rglcd.plugins)
    if handler is not None:
        return handler(spec)
    if spec.startswith("builtin:"):
        return BuiltinPhotos(spec)
    if spec.lower().endswith(TABLE_SUFFIXES):
        return TableSource(spec, tuple(remote_images))
    if "{" not in spec and not spec.endswith(".tar"):
        manifest = read_manifest(spec)
        if manifest is not None:
            root = spec.rstrip("/")
            shards = manifest["shards"]
            offsets = [s["offsets"] for s in shards] if all("offsets" in s for s in shards) else None
            return ShardSource([f"{root}/{s['name']}" for s in shards], [int(s["count"]) for s in shards],
                               latents=bool(manifest["latents"].get("precomputed")), keyed_by_index=True, name=spec,
                               manifest=manifest, offsets=offsets)
        if not is_remote(spec) and Path(spec).expanduser().is_dir() and not list_tars(spec):
            return FolderSource(spec)
    if not is_remote(spec) and "{" not in spec and not Path(spec).expanduser().exists():
        raise FileNotFoundError(f"data source {spec!r} does not exist (allowed: a prep output dir, .tar shards, "
                                f"a table ({', '.join(TABLE_SUFFIXES)}), an image folder, builtin:photos[:N], "
                                f"dvc://REPO[@REV]/PATH)")
    return ShardSource(list_tars(spec), name=spec)
