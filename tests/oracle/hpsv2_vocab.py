"""Give the installed `hpsv2` package the BPE vocabulary its wheel lacks (docs/method.md 9.4).

hpsv2 vendors an old open_clip whose tokenizer opens `hpsv2/src/open_clip/bpe_simple_vocab_16e6.txt.gz`
at import time (hpsv2/src/open_clip/tokenizer.py `default_bpe`); the 1.2.0 wheel does not ship that file.
It is the CLIP BPE vocabulary that open_clip itself ships, so the set-up copies open_clip's file there
(no network). Run by `make install` after `pip install --no-deps hpsv2`; idempotent.
"""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path


def hpsv2_vocab_path() -> Path:
    """Where hpsv2's tokenizer looks for the vocabulary (found without importing hpsv2, which needs it)."""
    spec = importlib.util.find_spec("hpsv2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("hpsv2 is not installed: pip install --no-deps hpsv2 (see the Makefile)")
    return Path(list(spec.submodule_search_locations)[0]) / "src" / "open_clip" / "bpe_simple_vocab_16e6.txt.gz"


def main() -> int:
    from open_clip.tokenizer import default_bpe

    source, target = Path(default_bpe()), hpsv2_vocab_path()
    if not target.is_file() or target.read_bytes() != source.read_bytes():
        shutil.copyfile(source, target)
    print(f"hpsv2 vocabulary: {target} (copied from {source})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
