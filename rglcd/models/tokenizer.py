"""The real OpenAI CLIP BPE tokenizer, rebuilt offline from the vocabulary file open_clip ships.

HF's CLIP `vocab.json` / `merges.txt` follow from `bpe_simple_vocab_16e6.txt.gz` by a fixed rule:
256 byte-level symbols, the same with `</w>`, one token per merge (the first 48,894), then the two
special tokens: 49,408 ids in all, the ids every Stable Diffusion text encoder uses.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

CLIP_VOCAB_SIZE = 49408
_NUM_MERGES = 49152 - 256 - 2  # open_clip's SimpleTokenizer keeps this many merges


def write_clip_tokenizer(out_dir: str | Path, model_max_length: int = 77) -> Path:
    """Write vocab.json, merges.txt and tokenizer_config.json for `CLIPTokenizer.from_pretrained(out_dir)`."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:_NUM_MERGES + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == CLIP_VOCAB_SIZE, len(vocab)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    (out / "tokenizer_config.json").write_text(json.dumps({"model_max_length": model_max_length, **special}))
    return out


def check_tokenizer(tokenizer, source: str) -> None:
    """Refuse the broken tokenizer transformers returns for a hub id it could not reach (vocab of 2)."""
    size = len(tokenizer)
    if size < 1000:
        raise RuntimeError(
            f"tokenizer loaded from {source!r} has only {size} tokens: the files were not found "
            "(no network?). Point model.teacher at a local diffusers directory with a tokenizer/ folder.")
