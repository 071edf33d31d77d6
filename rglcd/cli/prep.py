"""`rglcd prep`: validate an image-caption source and write shards + manifest.json (rglcd.data.prep)."""
from __future__ import annotations

import argparse
import json

from rglcd.config.args import add_config_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "prep", help="validate image-caption data and write webdataset shards with a manifest",
        description="Ingest an image folder (x.jpg + x.txt), a table (.jsonl/.csv/.tsv/.parquet with image path or "
                    "URL and caption), existing .tar shards (local or s3://) or builtin:photos[:N]; drop corrupt, "
                    "tiny, uncaptioned, over-long and duplicate records (counted in manifest.json); optionally "
                    "store VAE latents (--set data.precompute_latents=true).")
    add_config_args(parser)
    parser.add_argument("--source", default=None, help="data to ingest (default: the config's data.train)")
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.set_defaults(func=_prep)


def _prep(args: argparse.Namespace) -> int:
    from rglcd.data.prep import prep

    cfg = config_from_args(args)
    manifest = prep(cfg, args.source or cfg.data.train, args.out)
    dropped = {k: v for k, v in manifest["dropped"].items() if v}
    print(f"prep: kept {manifest['num_records']} of {manifest['seen']} records in {len(manifest['shards'])} shards "
          f"at {args.out}; dropped {json.dumps(dropped) if dropped else 'none'}; "
          f"latents {'precomputed' if manifest['latents']['precomputed'] else 'not precomputed'}; "
          f"content hash {manifest['content_hash'][:16]}")
    return 0
