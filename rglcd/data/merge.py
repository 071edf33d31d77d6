"""Merging the partitions of a parallel prep into one prep output, equal to a one-process prep.

A partition (rglcd.data.prep.prep_partition) writes shards whose samples' json also holds the record's
pixel hash, its position among the partition's records ("at") and its key, plus `partial.json`: format,
source, partition, partitions, seen, dropped, rejects [{key, reason, at}], shards, latents. Each partition
dropped the duplicates inside itself; the merge reads the partitions in order and drops a record whose
pixels a record of an earlier partition already has, exactly what one process reading the whole source
would have done. It then renumbers the kept records 0, 1, ... and writes them into shards of
data.shard_size exactly as one process does, so the shards, their per-file sha256s and the content hash
are the same whatever the number of partitions (docs/architecture.md "Prep in parallel"). Drops are added
up, and the first MAX_REJECTS rejects are listed in source order. Latents are copied, not re-encoded
(their encode batches are padded to one shape: rglcd.data.prep.encode_moments).

Partition folders are untrusted input (another pod wrote them): partial.json is size-bounded and checked,
shard names are plain file names inside the folder, sample fields are checked before use.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from rglcd.data.manifest import DROP_REASONS, MAX_MANIFEST_BYTES, MAX_REJECTS, check_manifest
from rglcd.data.tally import Tally
from rglcd.data.sources import LATENT_KEY, iter_tar
from rglcd.safeio import decode_text, parse_json, read_text, short

PARTIAL = "partial.json"
PARTIAL_FORMAT = "rglcd-prep-partition/1"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_IMAGE_KEYS = ("jpg", "png", "webp")
MAX_KEY_CHARS = 4096   # a source spec or a record key (file path, table row) in a partition


def write_partial(folder: Path, source: str, part: int, parts: int, shards: list[dict], tally: Tally,
                  latents: dict[str, Any]) -> dict[str, Any]:
    """Write `partial.json` for a partition prepped into `folder`; returns it."""
    partial = {"format": PARTIAL_FORMAT, "source": source, "partition": part, "partitions": parts,
               "seen": tally.seen, "dropped": {r: tally.dropped.get(r, 0) for r in DROP_REASONS},
               "rejects": tally.rejects, "shards": shards, "latents": latents,
               "num_records": sum(s["count"] for s in shards)}
    (folder / PARTIAL).write_text(json.dumps(partial, indent=2) + "\n")
    return partial


def read_partial(folder: Path, part: int, parts: int) -> dict[str, Any]:
    """partial.json of partition `part` of `parts` in `folder`, checked."""
    where = str(folder / PARTIAL)
    text = read_text(folder / PARTIAL, "partition summary", MAX_MANIFEST_BYTES)
    partial = parse_json(text, "partition summary", where)
    if not isinstance(partial, dict) or partial.get("format") != PARTIAL_FORMAT:
        raise ValueError(f"{where}: not a prep partition (format {PARTIAL_FORMAT!r} expected)")
    if (partial.get("partition"), partial.get("partitions")) != (part, parts):
        raise ValueError(f"{where}: partition {short(partial.get('partition'))} of {short(partial.get('partitions'))}; "
                         f"expected {part} of {parts} (partitions are merged in order)")
    check_manifest({**partial, "format": "rglcd-shards/1"}, where)   # shards, counts, latents
    dropped, rejects = partial.get("dropped"), partial.get("rejects")
    if not (isinstance(partial.get("seen"), int) and isinstance(dropped, dict) and isinstance(rejects, list)
            and _short_text(partial.get("source"))
            and all(r in DROP_REASONS and isinstance(n, int) and n >= 0 for r, n in dropped.items())
            and all(isinstance(r, dict) and _short_text(r.get("key")) and r.get("reason") in DROP_REASONS
                    and isinstance(r.get("at"), int) for r in rejects)):
        raise ValueError(f"{where}: fields source, seen, dropped {{reason: count}} or rejects "
                         "[{key, reason, at}] are not valid")
    return partial


def _short_text(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_KEY_CHARS


def merge_into(folders: list[Path], shards: Any) -> tuple[Tally, dict[str, Any], str]:
    """Merge the partition folders (in partition order) into `shards` (rglcd.data.prep.ShardSet, finished
    here): (tally, latents, source)."""
    partials = [read_partial(Path(f), i, len(folders)) for i, f in enumerate(folders)]
    for p in partials[1:]:
        if (p["source"], p["latents"]) != (partials[0]["source"], partials[0]["latents"]):
            raise ValueError(f"partitions differ in source or latents: {short(partials[0]['source'])} "
                             f"vs {short(p['source'])}; merge partitions of one prep")
    tally, digests = Tally(), set()
    for folder, partial in zip(folders, partials):
        duplicates = _copy_partition(Path(folder), partial, shards, digests)
        tally.seen += partial["seen"]
        tally.dropped.update(Counter(partial["dropped"]) + Counter(duplicate=len(duplicates)))
        for reject in sorted(partial["rejects"] + duplicates, key=lambda r: r["at"]):   # stable: own first
            if len(tally.rejects) < MAX_REJECTS:
                tally.rejects.append({"key": reject["key"], "reason": reject["reason"]})
    shards.finish()
    return tally, partials[0]["latents"], partials[0]["source"]


def _copy_partition(folder: Path, partial: dict[str, Any], shards: Any, digests: set[str]) -> list[dict]:
    """Append the partition's records that no earlier record duplicates; returns the duplicates' rejects."""
    duplicates, read = [], 0
    for shard in partial["shards"]:
        for sample in iter_tar(str(folder / shard["name"])):   # a cut partition shard is an error
            read += 1
            meta, fields = _check_sample(sample, str(folder / shard["name"]))
            if meta["pixel_sha256"] in digests:
                duplicates.append({"key": meta["key"], "reason": "duplicate", "at": meta["at"]})
                continue
            digests.add(meta["pixel_sha256"])
            index = shards.count
            final = {"index": index, "width": meta["width"], "height": meta["height"]}
            shards.write({"__key__": f"{index:09d}", **fields, "json": json.dumps(final, sort_keys=True).encode()})
    if read != partial["num_records"]:
        raise ValueError(f"{folder}: partition shards hold {read} records, {PARTIAL} says {partial['num_records']}")
    return duplicates


def _check_sample(sample: dict, where: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(json meta, the other fields) of a partition sample, checked."""
    allowed = {"txt", "json", LATENT_KEY, *_IMAGE_KEYS}
    fields = {k: v for k, v in sample.items() if k not in ("__key__", "json")}
    try:
        meta = parse_json(decode_text(sample.get("json", b""), "sample json", where), "sample json", where)
    except ValueError:
        meta = None
    ok = (isinstance(meta, dict) and set(sample) - {"__key__"} <= allowed and "txt" in fields
          and sum(k in fields for k in _IMAGE_KEYS) == 1
          and isinstance(meta.get("pixel_sha256"), str) and _SHA256.fullmatch(meta["pixel_sha256"])
          and all(isinstance(meta.get(k), int) for k in ("at", "width", "height")) and _short_text(meta.get("key")))
    if not ok:
        raise ValueError(f"{where}: sample {short(sample.get('__key__'), 40)} is not a prep partition sample "
                         f"(fields {short(sorted(sample), 120)})")
    return meta, fields
