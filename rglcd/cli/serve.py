"""`rglcd serve`: a KServe model server for a registered version or an exported student (rglcd.serve)."""
from __future__ import annotations

import argparse

from rglcd.config.args import add_config_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve", help="serve the student over HTTP (KServe v1/v2 protocol, batching, Prometheus metrics)",
        description="Load the student (models:/NAME@ALIAS, models:/NAME/VERSION from registry.tracking_uri, or "
                    "an exported directory), warm it up and serve POST /v1/models/NAME:predict and "
                    "/v2/models/NAME/infer, /v2/health/live|ready and /metrics until SIGTERM.")
    parser.add_argument("--model", required=True, metavar="REF",
                        help="models:/NAME@ALIAS, models:/NAME/VERSION or an exported student directory")
    parser.add_argument("--port", type=int, default=None, help="HTTP port (default: serve.port)")
    add_config_args(parser)
    parser.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> None:
    from rglcd.serve.server import serve

    if args.port is not None:
        args.overrides = [*args.overrides, f"serve.port={args.port}"]
    serve(config_from_args(args), args.model)
