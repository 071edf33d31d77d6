"""A stand-in for the Kubeflow Pipelines v2beta1 REST API, for tests of `rglcd pipeline submit|schedule`.

A real HTTP server (stdlib `ThreadingHTTPServer`) on a free 127.0.0.1 port, in a thread, holding
experiments, runs, recurring runs and pipelines in memory, speaking the snake_case JSON that
`kfp.Client` (kfp-server-api) reads and writes. What it checks, like the real API server would:
the posted pipeline spec parses as a PipelineSpec (and PlatformSpec) proto, run parameters exist in
the pipeline's root inputs, a recurring run has a 6-field cron, referenced experiments exist.
Every request is recorded (`.requests`). Runs advance one state per GET through `run_states`.

    with FakeKFP(run_states=("RUNNING", "SUCCEEDED")) as kfp_api:
        kfp.Client(host=kfp_api.url).create_run_from_pipeline_package(...)
        kfp_api.requests[-1]["json"]
"""
from __future__ import annotations

import datetime
import json
import re
import threading
import uuid
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

API = "/apis/v2beta1"


class BadRequest(Exception):
    """-> HTTP 400 with the message, as the API server answers invalid input."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def split_spec(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """kfp.Client posts a bare PipelineSpec, or {"pipeline_spec": ..., "platform_spec": ...} with a platform."""
    if "pipeline_spec" in spec and "root" not in spec:
        return spec["pipeline_spec"], spec.get("platform_spec")
    return spec, None


def check_spec(spec: dict[str, Any], parameters: dict[str, Any] | None = None) -> None:
    """Parse the spec into the KFP protos; check run parameters against the root's input definitions."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    pipeline, platform = split_spec(spec)
    try:
        json_format.ParseDict(pipeline, pipeline_spec_pb2.PipelineSpec())
        if platform:
            json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
    except json_format.ParseError as err:
        raise BadRequest(f"invalid pipeline spec: {err}") from None
    known = set(pipeline.get("root", {}).get("inputDefinitions", {}).get("parameters", {}))
    unknown = set(parameters or {}) - known
    if unknown:
        raise BadRequest(f"unknown pipeline parameters {sorted(unknown)}; the pipeline takes {sorted(known)}")


def _matches(obj: dict[str, Any], filter_json: str | None) -> bool:
    """The EQUALS predicates of a v2beta1 `filter` query parameter."""
    if not filter_json:
        return True
    for pred in json.loads(filter_json).get("predicates", []):
        want = pred.get("string_value", pred.get("stringValue"))
        if pred.get("operation") in ("EQUALS", 1) and obj.get(pred["key"]) != want:
            return False
    return True


class FakeKFP:
    """The fake API server; `start()`/`stop()` or use as a context manager."""

    def __init__(self, run_states: tuple[str, ...] = ("SUCCEEDED",), multi_user: bool = False,
                 tokens: tuple[str, ...] = ()):
        """`tokens`: when given, every request must carry `Authorization: Bearer <one of them>` (HTTP 401
        otherwise), as multi-user KFP requires of in-cluster callers."""
        self.run_states, self.multi_user, self.tokens = tuple(run_states), multi_user, tuple(tokens)
        self.requests: list[dict[str, Any]] = []
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.recurring_runs: dict[str, dict] = {}
        self.pipelines: dict[str, dict] = {}
        self._polls: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeKFP:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self) -> FakeKFP:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def posted(self, path_end: str) -> list[dict[str, Any]]:
        """JSON bodies of the POSTs whose path ends with `path_end` (e.g. "/runs")."""
        return [r["json"] for r in self.requests if r["method"] == "POST" and r["path"].endswith(path_end)]

    # ---- API ------------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, str], body: Any, raw: bytes,
               ctype: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        headers = headers or {}
        with self._lock:
            self.requests.append({"method": method, "path": path, "query": query, "json": body,
                                  "authorization": headers.get("Authorization")})
            if self.tokens and headers.get("Authorization") not in [f"Bearer {t}" for t in self.tokens]:
                return 401, {"error": "Unauthenticated: no valid bearer token", "code": 16}
            if path == f"{API}/healthz":
                return 200, {"multi_user": self.multi_user, "pipeline_store": "database"}
            for pattern, func in self._routes():
                m = re.fullmatch(pattern, f"{method} {path}")
                if m:
                    return func(query, body, raw, ctype, *m.groups())
            return 404, {"error": f"fake KFP: {method} {path} not implemented", "code": 12}

    def _routes(self):
        return ((rf"POST {API}/experiments", self._create_experiment),
                (rf"GET {API}/experiments", self._list_experiments),
                (rf"GET {API}/experiments/([^/]+)", self._get_experiment),
                (rf"POST {API}/runs", self._create_run),
                (rf"GET {API}/runs", self._list_runs),
                (rf"GET {API}/runs/([^/:]+)", self._get_run),
                (rf"POST {API}/recurringruns", self._create_recurring_run),
                (rf"GET {API}/recurringruns", self._list_recurring_runs),
                (rf"POST {API}/pipelines/upload", self._upload_pipeline),
                (rf"GET {API}/pipelines", self._list_pipelines))

    def _create_experiment(self, query, body, *_):
        if not (body or {}).get("display_name"):
            return 400, {"error": "experiment display_name is required", "code": 3}
        exp = dict(body, experiment_id=str(uuid.uuid4()), created_at=_now(), storage_state="AVAILABLE")
        self.experiments[exp["experiment_id"]] = exp
        return 200, exp

    def _list_experiments(self, query, *_):
        found = [e for e in self.experiments.values() if _matches(e, query.get("filter"))]
        return 200, {"experiments": found, "total_size": len(found)}

    def _get_experiment(self, query, body, raw, ctype, exp_id):
        exp = self.experiments.get(exp_id)
        return (200, exp) if exp else (404, {"error": f"experiment {exp_id} not found", "code": 5})

    def _check_job(self, body: dict[str, Any]) -> None:
        if not body.get("pipeline_spec") and not body.get("pipeline_version_reference"):
            raise BadRequest("pipeline_spec or pipeline_version_reference is required")
        if body.get("pipeline_spec"):
            check_spec(body["pipeline_spec"], (body.get("runtime_config") or {}).get("parameters"))
        if body.get("experiment_id") not in self.experiments:
            raise BadRequest(f"experiment {body.get('experiment_id')!r} does not exist")

    def _create_run(self, query, body, *_):
        self._check_job(body or {})
        run = dict(body, run_id=str(uuid.uuid4()), created_at=_now(), state="PENDING", storage_state="AVAILABLE")
        self.runs[run["run_id"]] = run
        self._polls[run["run_id"]] = 0
        return 200, run

    def _list_runs(self, query, *_):
        found = [r for r in self.runs.values()
                 if not query.get("experiment_id") or r.get("experiment_id") == query["experiment_id"]]
        return 200, {"runs": found, "total_size": len(found)}

    def _get_run(self, query, body, raw, ctype, run_id):
        run = self.runs.get(run_id)
        if run is None:
            return 404, {"error": f"run {run_id} not found", "code": 5}
        i = min(self._polls[run_id], len(self.run_states) - 1)
        self._polls[run_id] += 1
        run["state"] = self.run_states[i]
        tasks = [{"task_id": "t-train", "display_name": "RG-LCD training", "state": self.run_states[i]}]
        run["run_details"] = {"task_details": tasks}
        if run["state"] in ("SUCCEEDED", "FAILED"):
            run["finished_at"] = _now()
        return 200, run

    def _create_recurring_run(self, query, body, *_):
        body = body or {}
        self._check_job(body)
        cron = ((body.get("trigger") or {}).get("cron_schedule") or {}).get("cron", "")
        if len(cron.split()) != 6:
            raise BadRequest(f"cron {cron!r}: expected 6 fields (seconds first)")
        rec = dict(body, recurring_run_id=str(uuid.uuid4()), created_at=_now(),
                   status="ENABLED" if body.get("mode", "ENABLE") == "ENABLE" else "DISABLED")
        self.recurring_runs[rec["recurring_run_id"]] = rec
        return 200, rec

    def _list_recurring_runs(self, query, *_):
        found = list(self.recurring_runs.values())
        return 200, {"recurringRuns": found, "total_size": len(found)}

    def _upload_pipeline(self, query, body, raw, ctype):
        msg = BytesParser(policy=email_policy).parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw)
        content = next(part.get_payload(decode=True) for part in msg.iter_parts())
        docs = [d for d in yaml.safe_load_all(content) if d]
        check_spec(docs[0] if len(docs) == 1 else {"pipeline_spec": docs[0], "platform_spec": docs[1]})
        pid = str(uuid.uuid4())
        name = query.get("name") or docs[0].get("pipelineInfo", {}).get("name")
        self.pipelines[pid] = {"pipeline_id": pid, "display_name": name, "created_at": _now()}
        return 200, self.pipelines[pid]

    def _list_pipelines(self, query, *_):
        found = [p for p in self.pipelines.values() if _matches(p, query.get("filter"))]
        return 200, {"pipelines": found, "total_size": len(found)}


def _handler(api: FakeKFP) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _serve(self, method: str) -> None:
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            size = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(size) if size else b""
            ctype = self.headers.get("Content-Type", "")
            try:
                body = json.loads(raw) if raw and "json" in ctype else None
                code, obj = api.handle(method, url.path, query, body, raw, ctype,
                                       {"Authorization": self.headers.get("Authorization")})  # any case
            except (BadRequest, ValueError) as err:
                code, obj = 400, {"error": str(err), "code": 3}
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

    return Handler
