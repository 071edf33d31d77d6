#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager and kube-scheduler v1.20.2 offline from Debian bookworm's
# own source package (kubernetes 1.20.5+really1.20.2-1.1+deb12u1 = full upstream tree incl. vendor/),
# and install Debian's etcd-server. Only Debian's registry is used. See docs/architecture.md 9.3.
#
#   OUT=/var/cache/rglcd-k8s/v1.20.2 tests/k8s/build-k8s-from-debian.sh     # ~7 min on 2 cores; no-op when cached
#
# Output: $OUT/{kube-apiserver,kube-controller-manager,kube-scheduler}. Needs root (apt-get).
set -euo pipefail
OUT=${OUT:-/var/cache/rglcd-k8s/v1.20.2}
PKG_VERSION=1.20.5+really1.20.2-1.1+deb12u1
BINS="kube-apiserver kube-controller-manager kube-scheduler"
export DEBIAN_FRONTEND=noninteractive

apt_install() {  # only when something is missing, so a cached run costs nothing
  if ! command -v etcd >/dev/null || { [ -n "${NEED_GO:-}" ] && [ ! -x /usr/lib/go/bin/go ]; } \
     || { [ -n "${NEED_GO:-}" ] && [ ! -d /usr/share/gocode/src/github.com/modern-go/reflect2 ]; }; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  fi
}

cached=1
for b in $BINS; do [ -x "$OUT/$b" ] || cached=0; done
if [ "$cached" = 1 ]; then
  apt_install etcd-server
  echo "cached: $OUT"; exit 0
fi

NEED_GO=1 apt_install golang-go etcd-server rsync golang-github-modern-go-reflect2-dev
WORK=${WORK:-$(mktemp -d /tmp/rglcd-k8s-build.XXXXXX)}
trap 'rm -rf "$WORK"' EXIT
# deb-src list kept out of /etc/apt: a private sources list and state dir
mkdir -p "$WORK/apt/lists/partial"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" \
  > "$WORK/apt/src.list"
APTOPT="-o Dir::Etc::SourceList=$WORK/apt/src.list -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=$WORK/apt/lists"
apt-get $APTOPT update -qq
(cd "$WORK" && apt-get $APTOPT source --download-only "kubernetes=$PKG_VERSION" >/dev/null 2>&1)
cd "$WORK" && tar xzf kubernetes_1.20.5+really1.20.2.orig.tar.gz && cd kubernetes-1.20.2
# vendored reflect2 v1.0.1 segfaults (mapiterinit) under Go >= 1.18 on the first CRD OpenAPI encode:
# swap in Debian's reflect2 1.0.2.
rm -rf vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
rm -f vendor/github.com/modern-go/reflect2/go.mod
echo "building $BINS (log: $WORK/make.log) ..."
PATH=/usr/lib/go/bin:$PATH HOME="$WORK/home" nice -n 5 \
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler" >"$WORK/make.log" 2>&1 \
  || { tail -50 "$WORK/make.log"; exit 1; }
mkdir -p "$OUT.tmp"
for b in $BINS; do cp "_output/bin/$b" "$OUT.tmp/"; done
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"   # appears atomically: a half-copied cache never counts as built
echo "built: $OUT ($(./_output/bin/kube-apiserver --version))"
