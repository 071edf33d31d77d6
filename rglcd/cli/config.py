"""`rglcd config show|explain|presets`."""
from __future__ import annotations

import argparse

from rglcd.config.args import DEFAULT_PRESET, PRESET_ENV, add_config_args, config_from_args
from rglcd.config import ENV_PREFIX, ENV_SEP, LOAD_ORDER, dump_config, explain, list_presets


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("config", help="show, explain and list configs")
    cmds = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = cmds.add_parser("show", help="print the resolved config (preset + file + overrides)")
    add_config_args(show)
    show.add_argument("--format", choices=["yaml", "json"], default="yaml", help="output format")
    show.set_defaults(func=lambda a: print(dump_config(config_from_args(a), a.format), end=""))
    cmds.add_parser("explain", help="every config key with its type and meaning, and the load order").set_defaults(func=_explain)
    cmds.add_parser("presets", help="list the presets shipped with rglcd").set_defaults(
        func=lambda a: print("\n".join(list_presets())))


def _explain(args: argparse.Namespace) -> None:
    print(f"# load order, each over the one before: {' < '.join(LOAD_ORDER)}")
    print(f"# environment: {ENV_PREFIX}<SECTION>{ENV_SEP}<KEY>=<YAML value> sets section.key, e.g. "
          f"{ENV_PREFIX}STORAGE{ENV_SEP}REMOTE=s3://bucket/dvc sets storage.remote")
    print(f"# preset: --preset, else the --config file's `preset` key, else ${PRESET_ENV}, else {DEFAULT_PRESET}; "
          f"presets: {', '.join(list_presets())}, custom")
    rows = explain()
    width = max(len(key) for key, _, _ in rows)
    for key, typ, text in rows:
        print(f"{key:<{width}}  {text}  [{typ}]")
