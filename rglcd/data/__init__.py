"""Data: built-in real photos and prompts, readers (tar shards, tables, folders), the deterministic
training stream, and `prep` (validation, sharding, optional precomputed latents) (docs/architecture.md 2.6)."""
from rglcd.data.builtin import photo_record, photos, vbench_prompts
from rglcd.data.manifest import data_version, read_manifest
from rglcd.data.prep import prep
from rglcd.data.prompts import load_prompts
from rglcd.data.sources import Record, open_source
from rglcd.data.stream import StreamSpec, TrainStream, make_loader

__all__ = ["Record", "StreamSpec", "TrainStream", "data_version", "load_prompts", "make_loader", "open_source",
           "photo_record", "photos", "prep", "read_manifest", "vbench_prompts"]
