"""The DVC pointer of a pushed artifact directory: the content of a `.dvc` file plus where it lives.

    outs:                                   # exactly what `dvc add` writes, so the file can be
    - md5: 3f1c...e9.dir                    # committed to a DVC-tracked git repo and `dvc pull`ed
      size: 104857600
      nfiles: 12
      hash: md5
      path: student
    meta:                                   # DVC keeps `meta` verbatim; rglcd reads the remote from it
      rglcd: {remote: s3://bucket/prefix, endpoint_url: http://minio:9000, region: us-east-1,
              url: s3://bucket/prefix/files/md5/3f/1c...e9.dir}

The pointer never holds credentials: they come from the AWS environment of whoever pulls.
JSON is valid YAML, so `POINTER.json` and `NAME.dvc` are both readable by rglcd and DVC.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rglcd.safeio import read_data, short

_DIR_MD5 = re.compile(r"^[0-9a-f]{32}\.dir$")


class PointerError(ValueError):
    """A pointer file or mapping that is not a valid rglcd/DVC pointer; the message names the field."""


@dataclass(frozen=True)
class Pointer:
    """One exact version of an artifact directory in a DVC remote."""

    md5: str                        # DVC directory hash "<32 hex>.dir"
    size: int                       # bytes of all files
    nfiles: int                     # number of files
    path: str                       # directory name the artifact had (the `.dvc` out path)
    remote: str                     # s3://bucket/prefix or an absolute local directory
    endpoint_url: str | None = None  # S3 endpoint (MinIO, Ceph); None: AWS
    region: str | None = None

    @property
    def url(self) -> str:
        """Location of the `.dir` object in the remote (DVC 3 layout: files/md5/xx/rest)."""
        return f"{self.remote.rstrip('/')}/files/md5/{self.md5[:2]}/{self.md5[2:]}"

    def to_dvc(self) -> dict[str, Any]:
        out = {"md5": self.md5, "size": self.size, "nfiles": self.nfiles, "hash": "md5", "path": self.path}
        meta = {"remote": self.remote, "endpoint_url": self.endpoint_url, "region": self.region, "url": self.url}
        return {"outs": [out], "meta": {"rglcd": meta}}

    def dumps(self, fmt: str = "json") -> str:
        data = self.to_dvc()
        return json.dumps(data, indent=2) + "\n" if fmt == "json" else yaml.safe_dump(data, sort_keys=False)

    @classmethod
    def from_dvc(cls, data: Any, source: str = "pointer") -> Pointer:
        """Parse `.dvc` content; errors name `source` and the field."""
        if not isinstance(data, dict) or not isinstance(data.get("outs"), list) or len(data["outs"]) != 1:
            raise PointerError(f"{source}: expected a .dvc mapping with exactly one entry under 'outs'")
        out = data["outs"][0]
        meta = (data.get("meta") or {}).get("rglcd") if isinstance(data.get("meta"), dict) else None
        if not isinstance(out, dict) or not isinstance(meta, dict):
            raise PointerError(f"{source}: needs 'outs[0]' and 'meta.rglcd' mappings (write it with `rglcd push`)")
        md5 = out.get("md5")
        if not isinstance(md5, str) or not _DIR_MD5.match(md5):
            raise PointerError(f"{source}: outs[0].md5 {short(repr(md5), 80)} is not a DVC directory hash; allowed: <32 hex>.dir")
        for key in ("size", "nfiles"):
            if not isinstance(out.get(key), int) or out[key] < 0:
                raise PointerError(f"{source}: outs[0].{key} {short(repr(out.get(key)), 80)} must be a non-negative integer")
        if not isinstance(meta.get("remote"), str) or not meta["remote"]:
            raise PointerError(f"{source}: meta.rglcd.remote is missing; allowed: s3://bucket/prefix or a directory")
        return cls(md5=md5, size=out["size"], nfiles=out["nfiles"], path=str(out.get("path") or "artifact"),
                   remote=meta["remote"], endpoint_url=meta.get("endpoint_url"), region=meta.get("region"))


def read_pointer(path: str | Path | Pointer) -> Pointer:
    """Read a pointer written by `write_pointer` (JSON) or any `.dvc` file with the rglcd meta (YAML);
    a `Pointer` is returned as it is."""
    if isinstance(path, Pointer):
        return path
    what = f"pointer file {str(path)!r}"
    return Pointer.from_dvc(read_data(path, "pointer file", error=PointerError), source=what)


def write_pointer(pointer: Pointer, path: str | Path) -> Path:
    """Write JSON when `path` ends in .json, else YAML (the usual `.dvc` form)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(pointer.dumps("json" if path.suffix == ".json" else "yaml"))
    return path
