"""Fuzzing every reader of untrusted input (issue 14; docs/threat-model.md 4).

Each reader gets seeded random mutations of valid inputs (bit flips, inserted structure tokens, cut,
duplicated and spliced ranges) and pure random bytes for a bounded time (RGLCD_FUZZ_SECONDS, default
1.5 s per reader; at least MIN_CASES cases). Only clear, named errors may come out: the reader's own
error types, with the input's name in a short message. Anything
else fails the test with the input that caused it. Inputs carry harmless code-execution payloads
(YAML python tags, a pickle in a .npy) that would leave a marker file; no marker and no file outside
the test's input and output folders may appear.
"""
from __future__ import annotations

import io
import json
import os
import random
import tarfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rglcd.cli._common import read_mapping_file
from rglcd.config import ConfigError, load_config
from rglcd.data import prep
from rglcd.data.images import BadImage, image_from_bytes
from rglcd.data.manifest import read_manifest
from rglcd.data.prompts import load_prompts
from rglcd.data.sources import FolderSource, Record, TableSource, iter_tar, open_source, sample_to_record
from rglcd.data.stream import materialize
from rglcd.storage.pointer import PointerError, read_pointer

SECONDS = float(os.environ.get("RGLCD_FUZZ_SECONDS", "1.5"))
MIN_CASES = 30
MARKER = "PWNED-MARKER"
TOKENS = [b"&a ", b"*a", b"<<: *a\n", b"{", b"}", b"[", b"]", b": ", b"\n", b"- ", b",", b'"', b"'", b"\x00",
          b"\xff", b"\xc3", b"1e400", b".nan", b"-.inf", b"null", b"2001-13-45", b"!!binary AAA=",
          f"!!python/object/apply:os.system ['touch {MARKER}']".encode(), b"9" * 5000, b"[" * 300,
          b"../", b"/etc/passwd", b"http://127.0.0.1:9/x", b"s3://KEY:SECRET@bucket/x"]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """1-4 random edits of `data`."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op, at = rng.randrange(6), rng.randint(0, len(buf))
        end = min(len(buf), at + rng.randint(1, 64))
        if op == 0 and buf:
            for _ in range(rng.randint(1, 8)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 1:
            buf[at:at] = rng.choice(TOKENS)
        elif op == 2:
            del buf[at:end]
        elif op == 3:
            buf[at:at] = buf[at:end] * rng.randint(1, 50)
        elif op == 4:
            del buf[at:]
        else:
            buf[at:at] = rng.randbytes(rng.randint(1, 32))
    return bytes(buf)


def fuzz(seeds: list[bytes], check: Callable[[bytes], None], seed: int) -> int:
    """Run `check` on mutated seeds and random bytes until the time is up; returns the number of cases."""
    rng, cases = random.Random(seed), 0
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline or cases < MIN_CASES:
        data = mutate(rng.choice(seeds), rng) if rng.random() < 0.9 else rng.randbytes(rng.randint(0, 300))
        try:
            check(data)
        except Exception as err:  # report the input that broke the reader
            raise AssertionError(f"case {cases} (seed {seed}) input {data[:300]!r}...: "
                                 f"{type(err).__name__}: {str(err)[:500]}") from err
        cases += 1
    return cases


def named(call: Callable[[], object], name: str, errors: tuple[type[Exception], ...]) -> None:
    """`call()` succeeds, or raises one of `errors` with `name` in a short message."""
    try:
        call()
    except errors as err:
        text = str(err)
        assert name in text, f"{type(err).__name__} does not name {name}: {text[:300]}"
        assert len(text) < 1000, f"message of {len(text)} chars"


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """(input folder, check) where check() asserts nothing was written outside the input/output folders."""
    inputs, cwd = tmp_path / "in", tmp_path / "cwd"
    inputs.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    def check(allowed: tuple[str, ...] = ("in",)) -> None:
        stray = [p for p in tmp_path.rglob("*") if p.relative_to(tmp_path).parts[0] not in allowed + ("cwd",)]
        assert not stray, f"written outside the input/output folders: {stray[:5]}"
        assert not list(cwd.iterdir()) and not list(Path.home().glob(MARKER)), "a payload ran"

    yield inputs, check
    check(("in", "out"))


def _png(seed: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(_png(seed, 16))).save(buf, "JPEG")
    return buf.getvalue()


def _npy(array: np.ndarray, pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=pickle)
    return buf.getvalue()


def _tar(samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


# ---------------------------------------------------------------- config, metrics, prompt and pointer files

CONFIG_SEEDS = [b"preset: tiny-random\ntrain: {lr: 1.0e-4, max_steps: 3}\neval: {steps: [1, 4]}\n",
                json.dumps({"train": {"lr": 1e-07}, "pipeline": {"shm_size": "1Gi"}}).encode(),
                b"base: &b {lr: 0.1}\ntrain: {<<: *b, seed: 3}\n",
                f"train: !!python/object/apply:os.system ['touch {MARKER}']\n".encode()]


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_fuzz_config_files(sandbox, suffix):
    inputs, check = sandbox
    path = inputs / f"run{suffix}"

    def one(data: bytes) -> None:
        path.write_bytes(data)
        named(lambda: load_config(path=path), path.name, (ConfigError,))

    assert fuzz(CONFIG_SEEDS, one, seed=1) >= MIN_CASES
    check()


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_fuzz_metrics_files(sandbox, suffix):
    inputs, check = sandbox
    path = inputs / f"metrics{suffix}"
    seeds = [json.dumps({"hps": {"mean": 27.1, "steps": {"4": 1e-07}}, "fid": 12.5}).encode(),
             b"hps: {mean: 27.1}\nfid: 12.5\nlatency: [1, 2]\n"]

    def one(data: bytes) -> None:
        path.write_bytes(data)
        named(lambda: read_mapping_file(str(path), "--metrics"), path.name, (ValueError,))

    assert fuzz(seeds, one, seed=2) >= MIN_CASES
    check()


@pytest.mark.parametrize("suffix", [".txt", ".json"])
def test_fuzz_prompt_files(sandbox, suffix):
    inputs, check = sandbox
    path = inputs / f"prompts{suffix}"
    seeds = [b"a photo of a cat\na red car\n", json.dumps(["a cat", {"prompt": "a dog"}]).encode()]

    def one(data: bytes) -> None:
        path.write_bytes(data)
        named(lambda: load_prompts(path), path.name, (ValueError,))

    assert fuzz(seeds, one, seed=3) >= MIN_CASES
    check()


def test_fuzz_pointer_files(sandbox):
    inputs, check = sandbox
    path = inputs / "model.dvc"
    pointer = {"outs": [{"md5": "ab" * 16 + ".dir", "size": 10, "nfiles": 2, "hash": "md5", "path": "student"}],
               "meta": {"rglcd": {"remote": "s3://bucket/prefix", "endpoint_url": "http://minio:9000"}}}
    seeds = [json.dumps(pointer).encode(), b"outs:\n- md5: " + b"ab" * 16 + b".dir\n  size: 1\n  nfiles: 1\n"]

    def one(data: bytes) -> None:
        path.write_bytes(data)
        named(lambda: read_pointer(path), path.name, (PointerError,))

    assert fuzz(seeds, one, seed=4) >= MIN_CASES
    check()


# ---------------------------------------------------------------- data: images, captions, shards, tables, manifests

def test_fuzz_images(sandbox):
    _, check = sandbox
    seeds = [_png(1), _jpeg(2), _png(3, 40)]

    def one(data: bytes) -> None:
        try:
            image = image_from_bytes(data, max_pixels=64 * 64)
            assert image.mode == "RGB" and image.width * image.height <= 64 * 64
        except BadImage:
            pass
        record = Record(7, "a caption", data, key="image-under-test")
        named(lambda: materialize(record, latents=False, resolution=8, generator=None), "image-under-test",
              (ValueError,))

    assert fuzz(seeds, one, seed=5) >= MIN_CASES
    check()


def test_fuzz_captions_and_sidecars(sandbox):
    inputs, check = sandbox
    folder = inputs / "folder"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png(1))
    seeds = ["a photo of a café".encode(), json.dumps({"caption": "a cat", "width": 8}).encode()]

    def one(data: bytes) -> None:
        for part in ("txt", "json"):
            record = sample_to_record({"__key__": "k", "png": _png(1), part: data}, 0)
            assert record.problem in (None, "bad_caption_encoding")
            assert record.caption is None or isinstance(record.caption, str) and record.problem is None
            if part == "txt" and record.problem is None:
                assert record.caption == data.decode("utf-8")     # kept only when it is exactly UTF-8 text
        (folder / "a.txt").write_bytes(data)
        (record,) = FolderSource(str(folder)).read_unit(0)
        assert record.problem in (None, "bad_caption_encoding", "caption_too_long")
        assert record.problem is not None or record.caption == data.decode("utf-8-sig")

    assert fuzz(seeds, one, seed=6) >= MIN_CASES
    check()


def test_fuzz_tar_shards(sandbox):
    inputs, check = sandbox
    path = inputs / "shard.tar"
    moments = np.zeros((8, 2, 2), np.float32)
    seeds = [_tar([("000000001", {"png": _png(1), "txt": b"a cat", "latent_moments.npy": _npy(moments)}),
                   ("000000002", {"jpg": _jpeg(2), "json": b'{"caption": "a dog"}'})]),
             _tar([("x", {"png": _png(3), "latent_moments.npy": _npy(np.array([_Payload()], dtype=object), True)})])]

    def one(data: bytes) -> None:
        path.write_bytes(data)

        def read() -> None:
            for sample in iter_tar(str(path)):
                record = sample_to_record(sample, 0)
                assert record.problem in (None, "bad_caption_encoding", "corrupt_latents")
                assert record.latent_moments is None or record.latent_moments.dtype != object

        named(read, path.name, (ValueError,))

    assert fuzz(seeds, one, seed=7) >= MIN_CASES
    check()


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_fuzz_tables(sandbox, fmt):
    inputs, check = sandbox
    path = inputs / f"table.{fmt}"
    frame = pd.DataFrame({"image": ["a.png", "../x.png", "/etc/passwd", "http://127.0.0.1:9/y.png"],
                          "caption": ["a cat", "a dog", "café", None]})
    buf = io.BytesIO()
    {"csv": lambda: frame.to_csv(buf, index=False), "parquet": lambda: frame.to_parquet(buf),
     "jsonl": lambda: buf.write(frame.to_json(orient="records", lines=True).encode())}[fmt]()
    (inputs / "a.png").write_bytes(_png(1))

    def one(data: bytes) -> None:
        path.write_bytes(data)

        def read() -> None:
            source = TableSource(str(path))
            for unit in range(source.num_units()):
                for record in source.read_unit(unit):
                    assert record.image is None or str(record.image).startswith(str(inputs))

        named(read, path.name, (ValueError, FileNotFoundError))

    assert fuzz([buf.getvalue()], one, seed=8) >= MIN_CASES
    check()


def test_fuzz_manifests(sandbox):
    inputs, check = sandbox
    folder = inputs / "data"
    folder.mkdir()
    manifest = {"format": "rglcd-shards/1", "source": "x", "num_records": 3, "seen": 3, "dropped": {},
                "shards": [{"name": "shard-000000.tar", "count": 3, "sha256": "0" * 64}],
                "content_hash": "0" * 64, "latents": {"precomputed": False}}

    def one(data: bytes) -> None:
        (folder / "manifest.json").write_bytes(data)
        named(lambda: read_manifest(str(folder)), "manifest.json", (ValueError,))
        named(lambda: open_source(str(folder)), str(folder), (ValueError, FileNotFoundError))

    assert fuzz([json.dumps(manifest).encode()], one, seed=9) >= MIN_CASES
    check()


def test_fuzz_prep_writes_only_its_output_folder(sandbox, model_cache, tmp_path):
    """End to end: prep on a folder and a table of mutated images and captions; it keeps or drops each
    record (or says no record is valid, naming the source) and writes nothing but its --out folder."""
    inputs, check = sandbox
    cfg = load_config("tiny-random", overrides=[f"model.cache_dir={model_cache}", "data.min_image_size=8"])
    folder, out = inputs / "imgs", tmp_path / "out"
    folder.mkdir()
    seeds = [_png(1, 16), _jpeg(2), b"a cat", "café".encode()]
    rng = random.Random(10)
    deadline, runs = time.monotonic() + 2 * SECONDS, 0
    while time.monotonic() < deadline or runs < 3:
        for i in range(4):
            (folder / f"{i}.png").write_bytes(mutate(seeds[i % 2], rng) if rng.random() < 0.7 else seeds[i % 2])
            (folder / f"{i}.txt").write_bytes(mutate(seeds[2 + i % 2], rng))
        (folder / "t.csv").write_bytes(b"image,caption\n0.png,a\n../../etc/passwd,b\n" + mutate(b"1.png,c\n", rng))
        for source in (str(folder), str(folder / "t.csv")):
            try:
                manifest = prep(cfg, source, out)
                assert manifest["num_records"] + sum(manifest["dropped"].values()) == manifest["seen"]
            except ValueError as err:
                assert source in str(err) and "no valid records" in str(err) or "table" in str(err), str(err)
        runs += 1
    check(("in", "out"))


@pytest.mark.parametrize("target", ["partial.json", "shard-000000.tar"])
def test_fuzz_prep_partitions_merged(sandbox, model_cache, tmp_path, target):
    """A parallel prep's partition (another pod's output): mutated partial.json or partition shard. The merge
    writes a prep output or raises a short error naming the partition, and writes only its --out folder."""
    from rglcd.data.prep import prep_merge, prep_partition

    inputs, check = sandbox
    cfg = load_config("tiny-random", overrides=[f"model.cache_dir={model_cache}", "data.min_image_size=8"])
    part, out = inputs / "part", tmp_path / "out"
    prep_partition(cfg, "builtin:photos:3", part, 0, 1)
    seed = (part / target).read_bytes()

    def one(data: bytes) -> None:
        (part / target).write_bytes(data)
        named(lambda: prep_merge(cfg, [part], out), str(part), (ValueError, FileNotFoundError))

    assert fuzz([seed], one, seed=11) >= MIN_CASES
    check(("in", "out"))
