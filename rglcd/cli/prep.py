"""`rglcd prep`: validate an image-caption source and write shards + manifest.json (rglcd.data.prep)."""
from __future__ import annotations

import argparse
import json

from rglcd.config import ConfigError
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
    parser.add_argument("--out", required=True,
                        help="output folder: new, empty or an earlier prep output (the manifest is installed last)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a folder that holds other files; they are left untouched")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="processes that validate (and encode latents) in parallel, each on one partition of "
                             "the source; the output is the same as with one (default: data.prep_workers)")
    parser.set_defaults(func=_prep)


def _prep(args: argparse.Namespace) -> int:
    from rglcd.data.prep import prep

    cfg = config_from_args(args)
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers: {args.workers}; allowed: an integer >= 1")
    workers = cfg.data.prep_workers if args.workers is None else args.workers
    manifest = prep(cfg, args.source or cfg.data.train, args.out, overwrite=args.overwrite, workers=workers)
    dropped = {k: v for k, v in manifest["dropped"].items() if v}
    print(f"prep: kept {manifest['num_records']} of {manifest['seen']} records in {len(manifest['shards'])} shards "
          f"at {args.out}; dropped {json.dumps(dropped) if dropped else 'none'}; "
          f"latents {'precomputed' if manifest['latents']['precomputed'] else 'not precomputed'}; "
          f"content hash {manifest['content_hash'][:16]}")
    return 0
