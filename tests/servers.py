"""Real local servers for tests, on loopback and free ports, started and stopped by the tests.

`tests/conftest.py` registers this module as a plugin (`pytest_plugins = ["servers"]`), so every
test module can ask for these fixtures by name:

- `moto_s3` (session): an S3 HTTP endpoint (moto's ThreadedMotoServer, in-process). `.stop()` and
  `.start()` simulate an outage (the stored objects survive: moto keeps them in process memory);
  `.require_auth()` makes it check signatures against its IAM users.
- `s3_remote` (function): a fresh bucket, test credentials in the AWS env (and no real AWS profile),
  and `.overrides` for `tiny_cfg` (storage.remote/endpoint_url/region).
- `mlflow_db` (function): the `tiny_cfg` SQLite tracking DB pre-initialised from a session template
  (MLflow's schema migrations take ~5 s; a copy takes milliseconds).
- `mlflow_server` (session): a real `mlflow server` subprocess (SQLite backend, proxied artifacts),
  ready when /health answers, killed at teardown.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

TEST_KEY_ID, TEST_SECRET = "testing", "testing"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, data: bytes) -> None:
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(request, timeout=10).read()


class MotoS3:
    """An in-process moto S3 server on 127.0.0.1 that can be stopped and restarted on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._server = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)   # one log line per request otherwise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self, service: str = "s3", key: str = TEST_KEY_ID, secret: str = TEST_SECRET):
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=REGION,
                            aws_access_key_id=key, aws_secret_access_key=secret)

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"rglcd-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    @contextmanager
    def require_auth(self) -> Iterator[tuple[str, str]]:
        """Yield (key id, secret) of an IAM user allowed everything; meanwhile any other key is refused."""
        iam = self.client("iam")
        user = f"u{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        _post(f"{self.endpoint_url}/moto-api/reset-auth", b"0")
        try:
            yield key["AccessKeyId"], key["SecretAccessKey"]
        finally:
            _post(f"{self.endpoint_url}/moto-api/reset-auth", b"inf")


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    server = MotoS3()
    server.start()
    yield server
    server.stop()


@dataclass
class S3Remote:
    server: MotoS3
    bucket: str
    url: str
    overrides: list[str] = field(default_factory=list)


def isolate_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: str = TEST_KEY_ID,
                    secret: str = TEST_SECRET) -> None:
    """Test credentials only: no real ~/.aws profile, no instance-metadata lookups."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3_remote(moto_s3, monkeypatch, tmp_path) -> S3Remote:
    isolate_aws_env(monkeypatch, tmp_path)
    bucket = moto_s3.create_bucket()
    url = f"s3://{bucket}/rglcd"
    return S3Remote(moto_s3, bucket, url, [f"storage.remote={url}", f"storage.endpoint_url={moto_s3.endpoint_url}",
                                           f"storage.region={REGION}"])


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An MLflow SQLite DB with the schema already migrated (done once per session)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_db(mlflow_template, tmp_path) -> str:
    """Copy the template to the path `tiny_cfg` uses (tmp_path/mlflow.db); returns its URI."""
    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode} before answering {url}")
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"mlflow server did not answer {url} within {timeout} s")


@pytest.fixture(scope="session")
def mlflow_server(mlflow_template, tmp_path_factory) -> Iterator[str]:
    """URL of a real MLflow tracking + registry server (subprocess, one worker, loopback)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    shutil.copy(mlflow_template, root / "mlflow.db")
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/health", proc, timeout=90)
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
