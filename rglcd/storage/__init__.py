"""Versioned artifacts in a DVC remote (docs/architecture.md 2.10): push, verify, pull by pointer.

    result = push(cfg, "runs/latest/student")        # cfg.storage: remote, endpoint_url, region
    write_pointer(result.pointer, "student.json")    # the `.dvc` content + remote, no credentials
    pull("student.json", "elsewhere/student")        # on any machine, from the pointer alone

Remotes: s3://bucket/prefix on any S3 endpoint (AWS, MinIO, Ceph; credentials from the AWS env chain)
or a local directory (the embedded default). No git repository is involved: DVC's data layer hashes,
uploads and checks out, with the object layout of `dvc push`, so a pointer file committed to a
DVC-tracked git repo (with the same remote) also works with plain `dvc pull`.
"""
from rglcd.storage.pointer import Pointer, PointerError, read_pointer, write_pointer
from rglcd.storage.remote import RemoteSpec, StorageError, make_remote, redact
from rglcd.storage.transfer import (PullResult, PushResult, pull, push, remote_from_config, remote_from_pointer,
                                    verify)

__all__ = ["Pointer", "PointerError", "read_pointer", "write_pointer", "RemoteSpec", "StorageError", "make_remote",
           "redact", "PushResult", "PullResult", "push", "pull", "verify", "remote_from_config",
           "remote_from_pointer"]
