"""Is there new data? The pipeline's first decision (docs/operations.md 4.6).

`check_new_data(cfg, force)` compares the cheap version of `data.train` (rglcd.data.version) with the one
recorded on the registry's production model (`source_version`, set at registration; for a model trained on a
prep output the version is also its `data_version`). Unchanged and not forced: the run stops before prep and
no GPU is requested. The registry is read once; nothing is written.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rglcd.data.version import NoCheapVersion, source_version
from rglcd.registry.mlflow_registry import get_version
from rglcd.urls import redact_urls

PRODUCTION = "production"
NO_NEW_DATA = "no new data"


@dataclass(frozen=True)
class DataCheck:
    proceed: bool                   # False: end the run here ("no new data")
    source_version: str             # "" when the source cannot be versioned cheaply
    production_version: int | None  # the registry version compared with, if any
    production_source: str | None   # the source version recorded on it
    reason: str                     # one line for the run's log and summary

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _recorded(info: Any) -> str | None:
    """The source version a registered version was trained on (its data version for older records)."""
    return info.source_version or info.data_version


def check_new_data(cfg: Any, force: bool = False) -> DataCheck:
    """Whether the pipeline should train: the data changed since production, nothing to compare with,
    the source cannot be versioned cheaply, `data.skip_unchanged` is off, or `force`."""
    spec = redact_urls(cfg.data.train)
    try:
        version = source_version(cfg.data.train)
    except NoCheapVersion as err:
        return DataCheck(True, "", None, None, f"training: {err}")
    prod = get_version(cfg, alias=PRODUCTION)
    if prod is None:
        return DataCheck(True, version, None, None,
                         f"training: no {PRODUCTION} model of {cfg.registry.model_name} to compare {spec} with")
    recorded = _recorded(prod)
    same = recorded == version
    where = f"{spec} at {version[:12]}; {PRODUCTION} is version {prod.version}, trained on {(recorded or 'unknown')[:12]}"
    if not same:
        return DataCheck(True, version, prod.version, recorded, f"training: new data: {where}")
    if force:
        return DataCheck(True, version, prod.version, recorded, f"training: forced (--force), data unchanged: {where}")
    if not cfg.data.skip_unchanged:
        return DataCheck(True, version, prod.version, recorded,
                         f"training: data.skip_unchanged is off, data unchanged: {where}")
    return DataCheck(False, version, prod.version, recorded, f"{NO_NEW_DATA}: {where}")


__all__ = ["DataCheck", "check_new_data", "NO_NEW_DATA", "PRODUCTION"]
