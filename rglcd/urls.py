"""URLs from configs, pointers and tables: credentials refused, and redacted wherever a URL is shown.

    has_credentials("http://KEY:SECRET@minio:9000")   # True: refused at config load (rglcd.config.check)
    redact_urls("postgresql://u:pw@db/mlflow")         # 'postgresql://***@db/mlflow'
    redact_urls("push to s3://a:b@bucket failed")      # every URL in free text, for log lines and records

Credentials belong in the environment (AWS_* variables, MLFLOW_TRACKING_USERNAME/PASSWORD, PGPASSWORD,
a Kubernetes Secret), never in a value that is printed, persisted in task outputs or cached by KFP
(docs/threat-model.md 3.3).
"""
from __future__ import annotations

import re

# scheme://userinfo@ : userinfo is everything up to the first '@' before any '/', '?' or '#'
_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)([^/?#@\s]*)@")


def has_credentials(url: str) -> bool:
    """True when `url` carries a user name or password (scheme://user[:password]@host)."""
    return bool(_USERINFO.search(url))


def redact_urls(text: str) -> str:
    """Free text with the credentials of every URL in it replaced by '***'."""
    return _USERINFO.sub(r"\1***@", text)


__all__ = ["has_credentials", "redact_urls"]
