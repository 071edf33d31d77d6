"""A real Kubernetes control plane on loopback for tests: etcd + kube-apiserver + kube-controller-manager +
kube-scheduler (v1.20.2, built by build-k8s-from-debian.sh), with the fake kubelet and fake training operator
of this folder standing in for nodes and the Kubeflow operator. See docs/architecture.md 9.3.

    python tests/k8s/cluster.py start RUN_DIR     # prints KUBECONFIG=...; leaves it running
    python tests/k8s/cluster.py stop RUN_DIR      # stops exactly the processes it started (by PID)

Everything listens on 127.0.0.1 on free ports; processes are stopped apiserver before etcd.
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_BIN_DIR = Path("/var/cache/rglcd-k8s/v1.20.2")       # = the Makefile's K8S_BIN
BIN_DIR = Path(os.environ.get("RGLCD_K8S_BIN") or DEFAULT_BIN_DIR)
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
MISSING_HINT = (f"Kubernetes control-plane binaries are not built in {BIN_DIR} (or etcd is missing): "
                "run `make k8s-bins` (tests/k8s/build-k8s-from-debian.sh, ~7 min once)")
STOP_ORDER = ("fake-operator", "fake-kubelet", "scheduler", "controller-manager", "apiserver", "etcd")


def missing() -> str | None:
    """None when everything needed to start the control plane is installed, else what to run."""
    absent = [b for b in BINARIES if not os.access(BIN_DIR / b, os.X_OK)]
    etcd = subprocess.run(["sh", "-c", "command -v etcd"], capture_output=True).returncode
    return MISSING_HINT if absent or etcd else None


def require_binaries() -> None:
    """Skip the calling test (fail it under CI=true, where the binaries must be there) when `missing()`."""
    import pytest

    problem = missing()
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(problem)
        pytest.skip(problem)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pki(run: Path) -> None:
    """Self-signed serving cert for 127.0.0.1 and the service-account signing key pair."""
    pki = run / "pki"
    pki.mkdir(parents=True)
    quiet = {"check": True, "capture_output": True}
    subprocess.run(["openssl", "genrsa", "-out", pki / "sa.key", "2048"], **quiet)
    subprocess.run(["openssl", "rsa", "-in", pki / "sa.key", "-pubout", "-out", pki / "sa.pub"], **quiet)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", pki / "apiserver.key",
                    "-out", pki / "apiserver.crt"], **quiet)


class ControlPlane:
    def __init__(self, run: Path):
        self.run = Path(run)
        self.kubeconfig = self.run / "kubeconfig"
        self._procs: dict[str, subprocess.Popen] = {}

    # -- processes ------------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list, env: dict | None = None) -> None:
        with open(self.run / f"{name}.log", "wb") as log:
            proc = subprocess.Popen([str(a) for a in argv], stdout=log, stderr=subprocess.STDOUT, cwd=self.run,
                                    env={**os.environ, **(env or {})}, start_new_session=True)
        self._procs[name] = proc
        (self.run / f"{name}.pid").write_text(str(proc.pid))

    def _alive(self, name: str, pid: int | None = None) -> bool:
        if name in self._procs:
            return self._procs[name].poll() is None
        pid_file = self.run / f"{name}.pid"      # started by another process (`cluster.py start`): probe it
        if pid is None and not pid_file.exists():
            return False
        try:
            os.kill(pid or int(pid_file.read_text()), 0)
            return True
        except ProcessLookupError:
            return False

    def start(self, crds: Path | None = None, timeout: float = 60.0) -> "ControlPlane":
        """Start etcd and the apiserver, install `crds` (a file or folder) while the controllers are not yet
        running (so the garbage collector knows the custom resources from its first sync, as on a cluster
        where the operator was installed first), then start controller-manager and scheduler."""
        if missing():
            raise RuntimeError(missing())
        self.run.mkdir(parents=True, exist_ok=True)
        _pki(self.run)
        token = secrets.token_hex(16)
        (self.run / "pki" / "tokens.csv").write_text(f"{token},admin,admin-uid,system:masters\n")
        etcd, peer, api = _free_port(), _free_port(), _free_port()
        self.server = f"https://127.0.0.1:{api}"
        self._spawn("etcd", ["etcd", "--name", "test", "--data-dir", self.run / "etcd",
                             "--listen-client-urls", f"http://127.0.0.1:{etcd}",
                             "--advertise-client-urls", f"http://127.0.0.1:{etcd}",
                             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                             "--initial-cluster", f"test=http://127.0.0.1:{peer}"])
        pki = self.run / "pki"
        self._spawn("apiserver", [
            BIN_DIR / "kube-apiserver", f"--etcd-servers=http://127.0.0.1:{etcd}", "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1", f"--secure-port={api}", f"--tls-cert-file={pki}/apiserver.crt",
            f"--tls-private-key-file={pki}/apiserver.key", f"--token-auth-file={pki}/tokens.csv",
            "--authorization-mode=RBAC", "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki}/sa.pub", f"--service-account-signing-key-file={pki}/sa.key",
            "--api-audiences=https://kubernetes.default.svc", "--service-cluster-ip-range=10.96.0.0/24"])
        self._write_kubeconfig(token)
        self._wait_ready(token, timeout)
        if crds is not None:
            self.kubectl("apply", "-f", crds)
            self._wait_served(crds, timeout)
        kubeconfig = f"--kubeconfig={self.kubeconfig}"
        # no kubelet heartbeats: the node-lifecycle controllers would evict everything
        self._spawn("controller-manager", [
            BIN_DIR / "kube-controller-manager", kubeconfig, "--leader-elect=false", "--bind-address=127.0.0.1",
            "--port=0", "--secure-port=0", "--controllers=*,-nodelifecycle,-cloud-node-lifecycle",
            "--use-service-account-credentials=false", f"--service-account-private-key-file={pki}/sa.key",
            f"--root-ca-file={pki}/apiserver.crt", "--enable-hostpath-provisioner"])
        self._spawn("scheduler", [BIN_DIR / "kube-scheduler", kubeconfig, "--leader-elect=false",
                                  "--bind-address=127.0.0.1", "--port=0", "--secure-port=0"])
        self.kubectl("apply", "-f", HERE / "storageclass.yaml")
        return self

    def _write_kubeconfig(self, token: str) -> None:
        self.kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {{server: "{self.server}", certificate-authority: "{self.run}/pki/apiserver.crt"}}
users:
- name: admin
  user: {{token: "{token}"}}
contexts:
- name: local
  context: {{cluster: local, user: admin, namespace: default}}
current-context: local
""")

    def _wait_ready(self, token: str, timeout: float) -> None:
        ctx = ssl.create_default_context(cafile=str(self.run / "pki" / "apiserver.crt"))
        request = urllib.request.Request(f"{self.server}/readyz", headers={"Authorization": f"Bearer {token}"})
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for name in ("etcd", "apiserver"):
                if not self._alive(name):
                    raise RuntimeError(f"{name} exited:\n{self.logs(name)}")
            try:
                if urllib.request.urlopen(request, context=ctx, timeout=2).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"kube-apiserver not ready in {timeout} s:\n{self.logs('apiserver')}")

    def _wait_served(self, crds: Path, timeout: float) -> None:
        import yaml
        files = sorted(Path(crds).glob("*.yaml")) if Path(crds).is_dir() else [Path(crds)]
        plurals = [yaml.safe_load(f.read_text())["metadata"]["name"] for f in files]
        end = time.monotonic() + timeout
        while subprocess.run(["kubectl", f"--kubeconfig={self.kubeconfig}", "get", ",".join(plurals), "-A"],
                             capture_output=True).returncode:
            if time.monotonic() > end:
                raise RuntimeError(f"CRDs {plurals} not served after {timeout} s")
            time.sleep(0.2)

    def start_fakes(self, pool: Path, gpu_nodes: int = 2, gpus: int = 8, cpu_nodes: int = 1,
                    run_seconds: float = 2.0) -> None:
        """The fake kubelet (nodes of `pool`, pods' phases) and the fake training operator."""
        self._spawn("fake-kubelet", [sys.executable, HERE / "fake_kubelet.py", "--kubeconfig", self.kubeconfig,
                                     "--pool", pool, "--gpu-nodes", gpu_nodes, "--gpus", gpus,
                                     "--cpu-nodes", cpu_nodes, "--run-seconds", run_seconds])
        self._spawn("fake-operator", [sys.executable, HERE / "fake_training_operator.py",
                                      "--kubeconfig", self.kubeconfig])
        end = time.monotonic() + 30
        while "nodes ready" not in (self.run / "fake-kubelet.log").read_text():
            if not self._alive("fake-kubelet") or time.monotonic() > end:
                raise RuntimeError(f"fake kubelet did not register nodes:\n{self.logs('fake-kubelet')}")
            time.sleep(0.2)

    def kubectl(self, *args, input: str | None = None) -> str:
        out = subprocess.run(["kubectl", f"--kubeconfig={self.kubeconfig}", *map(str, args)], input=input,
                             capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"kubectl {' '.join(map(str, args))}: {out.stderr}")
        return out.stdout

    def logs(self, name: str, tail: int = 40) -> str:
        path = self.run / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-tail:]) if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM the recorded processes (each one's process group), clients first, then the apiserver, then
        etcd; wait for each stage to exit, SIGKILL what lingers after 15 s."""
        for stage in (STOP_ORDER[:4], STOP_ORDER[4:5], STOP_ORDER[5:]):
            pids = {}
            for name in stage:
                pid_file = self.run / f"{name}.pid"
                if pid_file.exists():
                    pids[name] = int(pid_file.read_text())
                    pid_file.unlink()
                    try:
                        os.killpg(pids[name], signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            end = time.monotonic() + 15
            while any(self._alive(n, pids[n]) for n in pids) and time.monotonic() < end:
                time.sleep(0.05)
            for name, pid in pids.items():
                if self._alive(name, pid):
                    os.killpg(pid, signal.SIGKILL)

if __name__ == "__main__":
    action, run_dir = sys.argv[1], Path(sys.argv[2])
    cp = ControlPlane(run_dir)
    if action == "start":
        cp.start(crds=HERE / "crds")
        cp.start_fakes(Path(os.environ.get("POOL", HERE.parents[1] / "manifests/overlays/standalone/pipeline.yaml")))
        print(f"KUBECONFIG={cp.kubeconfig}")
    elif action == "stop":
        cp.stop()
    else:
        sys.exit(f"usage: {sys.argv[0]} start|stop RUN_DIR")
