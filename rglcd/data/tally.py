"""What prep counted: records seen, drops by reason, the first rejects (rglcd.data.prep, rglcd.data.merge)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from rglcd.data.manifest import MAX_REJECTS
from rglcd.urls import redact_urls


@dataclass
class Tally:
    """What prep saw: records read, drops by reason, the first MAX_REJECTS drops ({key, reason[, at]})."""
    seen: int = 0
    dropped: Counter = field(default_factory=Counter)
    rejects: list[dict] = field(default_factory=list)

    def drop(self, key: str, reason: str, at: int | None = None) -> None:
        self.dropped[reason] += 1
        if len(self.rejects) < MAX_REJECTS:
            self.rejects.append({"key": redact_urls(key), "reason": reason, **({"at": at} if at is not None else {})})
