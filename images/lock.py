"""Lock the images' Python packages with hashes, and size them without a container builder.

    python images/lock.py            # rewrite images/train.lock and images/cpu.lock from the inputs below
    python images/lock.py --sizes    # also sum the locked wheels' sizes (HTTP HEAD of each locked file)

The images run python:3.11-slim-bookworm on linux/amd64 - the interpreter and glibc the test suite runs on - so
pip's resolver, run here with --dry-run --report and --isolated (PyPI only, no local config or constraints),
picks exactly the wheels the image build installs; each lock line carries that wheel's sha256 and the
Dockerfiles install with `pip install --require-hashes --no-deps -r <lock>`.

Inputs: the training image (GPU steps and data prep) gets images/requirements.txt plus torch/torchvision from
PyPI, whose Linux wheels bring their own CUDA libraries (nvidia-*-cu13), so the base needs no CUDA runtime.
The CPU image (configure, the canary rollout, the scheduled submitter) gets only the
clients in images/requirements-client.txt: no torch, no model libraries.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
TORCH = ("torch==2.14.1", "torchvision==0.29.1")
IMAGES = {"train": (HERE / "requirements.txt", TORCH), "cpu": (HERE / "requirements-client.txt", ())}


def resolve(requirements: Path, extra: tuple[str, ...] = ()) -> list[dict]:
    """[{name, version, url, sha256}] pip installs for `requirements` + `extra` into a fresh environment."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(report), "-r", str(requirements), *extra]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        items = json.loads(report.read_text())["install"]
    return sorted(({"name": i["metadata"]["name"].lower().replace("_", "-"), "version": i["metadata"]["version"],
                    "url": i["download_info"]["url"],
                    "sha256": i["download_info"]["archive_info"]["hashes"]["sha256"]} for i in items),
                  key=lambda x: x["name"])


def lock_text(image: str, locked: list[dict]) -> str:
    head = (f"# Locked by images/lock.py for the {image} image (python 3.11, linux/amd64); do not edit by hand.\n"
            "# Installed with: pip install --require-hashes --no-deps -r this file\n")
    return head + "".join(f"{p['name']}=={p['version']} \\\n    --hash=sha256:{p['sha256']}\n" for p in locked)


def size(url: str) -> int:
    """Bytes of one locked file (Content-Length of a HEAD request)."""
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=60) as resp:
        return int(resp.headers["Content-Length"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", action="store_true", help="print the summed wheel sizes of each lock")
    args = ap.parse_args(argv)
    for image, (requirements, extra) in IMAGES.items():
        locked = resolve(requirements, extra)
        (HERE / f"{image}.lock").write_text(lock_text(image, locked))
        line = f"{image}: {len(locked)} packages"
        if args.sizes:
            total = sum(size(p["url"]) for p in locked)
            line += f", wheels {total / 2**20:.0f} MiB"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
