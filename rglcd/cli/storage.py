"""`rglcd push DIR [--out POINTER]` and `rglcd pull POINTER DEST`: versioned artifacts in the DVC remote."""
from __future__ import annotations

import argparse
import sys

from rglcd.cli._common import add_json_arg, emit
from rglcd.config.args import add_config_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    push = sub.add_parser("push", help="version a directory in the DVC remote (storage.*) and print its pointer",
                          description="Hash DIR with DVC, upload what the remote lacks, verify every object "
                          "is there, and write the pointer (.dvc content + remote) to --out or stdout.")
    push.add_argument("dir", metavar="DIR", help="artifact directory (model, shards, eval outputs)")
    push.add_argument("--out", metavar="POINTER", help="write the pointer here (.json: JSON, else YAML .dvc)")
    push.add_argument("--jobs", type=int, help="parallel uploads (default: DVC's)")
    add_json_arg(push)
    add_config_args(push)
    push.set_defaults(func=_push)
    pull = sub.add_parser("pull", help="materialise the exact version a pointer names",
                          description="Fetch the objects of POINTER from its remote and write them to DEST "
                          "(a new or empty directory). Credentials come from the AWS env/profile.")
    pull.add_argument("pointer", metavar="POINTER", help="pointer file from `rglcd push` (or a .dvc with rglcd meta)")
    pull.add_argument("dest", metavar="DEST", help="destination directory (new or empty)")
    pull.add_argument("--cache-dir", help="keep a local DVC cache here for later pulls (default: a temporary one)")
    pull.add_argument("--remote", help="reach the remote by this URL instead (e.g. a mirror)")
    pull.add_argument("--endpoint-url", help="reach the S3 remote through this endpoint instead")
    pull.add_argument("--jobs", type=int, help="parallel downloads (default: DVC's)")
    add_json_arg(pull)
    pull.set_defaults(func=_pull)


def _push(args: argparse.Namespace) -> None:
    from rglcd.storage import push, write_pointer

    result = push(config_from_args(args), args.dir, jobs=args.jobs)
    if args.out:
        write_pointer(result.pointer, args.out)
    data = {"pointer": result.pointer.to_dvc(), "pointer_file": args.out, "objects_uploaded": result.objects_uploaded,
            "objects_present": result.objects_present, "bytes_uploaded": result.bytes_uploaded,
            "seconds": result.seconds, "summary": result.summary()}
    if args.out or args.json:
        emit(args, data, f"{result.summary()}\npointer: {args.out}")
    else:                               # no --out: the pointer itself is the output (summary on stderr)
        print(result.summary(), file=sys.stderr)
        print(result.pointer.dumps("json"), end="")


def _pull(args: argparse.Namespace) -> None:
    from rglcd.storage import pull, read_pointer, remote_from_pointer

    pointer = read_pointer(args.pointer)
    remote = remote_from_pointer(pointer, args.remote, args.endpoint_url) if args.remote or args.endpoint_url else None
    result = pull(pointer, args.dest, cache_dir=args.cache_dir, remote=remote, jobs=args.jobs)
    emit(args, {"path": str(result.path), "pointer": result.pointer.to_dvc(), "objects_fetched": result.objects_fetched,
                "seconds": result.seconds, "summary": result.summary()}, result.summary())
