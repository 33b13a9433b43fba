"""The chart uses exactly the ports, paths and environment variables of
docs/design/0001-interfaces.md (parsed from its tables), so a change in one place fails here. The
certificate paths are the Paths rows marked "Helm chart:" (one directory per CSI volume), the
others the binary's defaults.

When a built binary exists (NETSY_BIN, target/release/netsy or target/debug/netsy), the chart and
0001-interfaces.md are also compared with `netsy config defaults`; without one those tests skip."""

import functools
import json
import os
import pathlib
import re
import subprocess
import tomllib

import pytest
import yaml

from conftest import CHART, ROOT, container, env, find, mount_of, render

INTERFACES = ROOT / "docs" / "design" / "0001-interfaces.md"


def sections():
    out, current = {}, None
    for line in INTERFACES.read_text().splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            out[current] = []
        elif current:
            out[current].append(line)
    return out


def table(section):
    """Rows of the first Markdown table in a section, as dicts keyed by the header cells."""
    lines = [l for l in sections()[section] if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "").strip()) <= set("-: "), lines[1]
    return [dict(zip(header, (c.strip() for c in l.strip("|").split("|")))) for l in lines[2:]]


def code(cell):
    return re.findall(r"`([^`]+)`", cell)


@functools.lru_cache(maxsize=None)
def doc_ports():
    return {row["name"]: int(row["port"]) for row in table("Ports")}


HELM_ROW = "Helm chart:"


def _paths(helm):
    out = {}
    for row in table("Paths"):
        if row["what"].startswith(HELM_ROW) != helm:
            continue
        paths = [p for p in code(row["default"]) if p.startswith("/")]
        names = [n for n in code(row["variable / flag"]) if n.startswith("NETSY_")]
        if not names:
            continue
        assert len(paths) >= len(names), row
        for name, path in zip(names, paths):
            assert name not in out, f"two {'Helm chart' if helm else 'default'} rows set {name}"
            out[name] = path
    return out


@functools.lru_cache(maxsize=None)
def doc_paths():
    """{variable: the binary's default path} from the Paths table; a row with two paths has two
    variables. Rows marked "Helm chart:" are left out."""
    return _paths(helm=False)


@functools.lru_cache(maxsize=None)
def doc_helm_paths():
    """{variable: path the Helm chart sets} from the Paths rows marked "Helm chart:"."""
    return _paths(helm=True)


def doc_chart_paths():
    """What the chart must set: the Helm chart rows over the binary's defaults."""
    return {**doc_paths(), **doc_helm_paths()}


def doc_env_names():
    text = "\n".join(sections()["Environment variables"])
    return set(re.findall(r"`(NETSY_[A-Z_]+)`", text))


def objects():
    return render()


TLS_VARS = ("NETSY_TLS_CA_CERT", "NETSY_TLS_SERVER_CERT", "NETSY_TLS_SERVER_KEY",
            "NETSY_TLS_CLIENT_CERT", "NETSY_TLS_CLIENT_KEY")


def test_interfaces_md_parses():
    assert doc_ports() == {"client": 2378, "peer": 2381, "health": 8080}, "update the chart with 0001-interfaces.md"
    assert {"NETSY_CONFIG", "NETSY_DATA_DIR", *TLS_VARS} <= set(doc_paths())
    assert "NETSY_NODE_ID" in doc_env_names()


def test_interfaces_md_default_paths_are_the_flat_layout():
    """The binary's defaults (used by the systemd unit and the image) keep the flat layout."""
    assert [doc_paths()[n] for n in TLS_VARS] == [
        "/etc/netsy/certs/ca.crt", "/etc/netsy/certs/server.crt", "/etc/netsy/certs/server.key",
        "/etc/netsy/certs/client/peer.crt", "/etc/netsy/certs/client/peer.key"]


def test_interfaces_md_documents_the_chart_cert_directories():
    """0001-interfaces.md names the chart's per-volume directories, for all five TLS variables, and says
    why (renewals reach the process)."""
    assert set(doc_helm_paths()) == set(TLS_VARS)
    assert [doc_helm_paths()[n] for n in TLS_VARS] == [
        "/etc/netsy/certs/server/ca.crt", "/etc/netsy/certs/server/server.crt",
        "/etc/netsy/certs/server/server.key", "/etc/netsy/certs/client/peer.crt",
        "/etc/netsy/certs/client/peer.key"]
    text = " ".join(" ".join(sections()["Paths"]).split())
    assert "`/etc/netsy/certs/server/`" in text and "`/etc/netsy/certs/client/`" in text
    assert "`subPath`" in text and "renewal" in text and "without a restart" in text


def test_service_ports_equal_interfaces():
    svc = find(objects(), "Service")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == doc_ports()


def test_container_ports_equal_interfaces():
    assert {p["name"]: p["containerPort"] for p in container(objects())["ports"]} == doc_ports()


def test_bind_and_advertise_ports_equal_interfaces():
    e = env(objects())
    for name, port in doc_ports().items():
        bind = f"NETSY_BIND_{name.upper()}"
        assert e[bind]["value"] == f"0.0.0.0:{port}"
        advertise = f"NETSY_ADVERTISE_{name.upper()}"
        if advertise in doc_env_names():
            assert e[advertise]["value"].endswith(f":{port}")


def test_no_election_port():
    """0001-interfaces.md: there is no election port (the original's 8443)."""
    assert "election" not in doc_ports()
    assert "no election port" in INTERFACES.read_text().lower()
    objs = objects()
    assert 8443 not in [p["port"] for p in find(objs, "Service")["spec"]["ports"]]
    assert not [n for n in env(objs) if "ELECTION" in n]


def test_env_paths_equal_interfaces():
    e = env(objects())
    for name, path in doc_chart_paths().items():
        assert e[name]["value"] == path, name


def test_chart_cert_paths_lie_in_their_volume_directories():
    """Each Helm chart path sits directly in the directory its CSI volume is mounted at."""
    objs = objects()
    dirs = {m["mountPath"] for m in container(objs)["volumeMounts"] if m["name"] in ("server-tls", "client-tls")}
    for name, path in doc_helm_paths().items():
        assert path.rsplit("/", 1)[0] in dirs, (name, path, dirs)


def test_config_and_data_mounts_equal_interfaces():
    assert mount_of(objects(), "config")["mountPath"] == doc_paths()["NETSY_CONFIG"]
    assert mount_of(objects(), "data")["mountPath"] == doc_paths()["NETSY_DATA_DIR"]


def test_chart_env_names_are_documented():
    documented = doc_env_names()
    chart = [n for n in env(objects()) if n.startswith("NETSY_")]
    assert set(chart) <= documented, set(chart) - documented
    # Everything a node needs; the rest (debug, log format, plaintext) is optional.
    optional = {"NETSY_DEBUG", "NETSY_LOG_FORMAT", "NETSY_INSECURE_PLAINTEXT"}
    assert documented - optional == set(chart), (documented - optional) ^ set(chart)


def test_probe_endpoints_are_documented():
    text = "\n".join(sections()["HTTP endpoints (health port)"])
    endpoints = set(re.findall(r"`(/[a-z]+)`", text))
    c = container(objects())
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez" and "/livez" in endpoints
    for probe in ("readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] in endpoints
        assert c[probe]["httpGet"]["port"] == "health"
    bullets = [" ".join(b.split()) for b in ("\n" + text).split("\n- ")[1:]]
    assert "Liveness probe" in next(b for b in bullets if b.startswith("`/livez`"))
    assert "Readiness probe" in next(b for b in bullets if b.startswith("`/health`"))


def test_identity_uri_format():
    text = "\n".join(sections()["Identity"])
    assert "`netsy://{cluster_id}/{role}/{name}`" in text
    uri = re.compile(r"^netsy://(?P<cluster>[a-z0-9-]+)/(?P<role>peer|client)/(?P<name>.+)$")
    objs = objects()
    sts = find(objs, "StatefulSet")
    for v in sts["spec"]["template"]["spec"]["volumes"]:
        if "csi" in v:
            m = uri.match(v["csi"]["volumeAttributes"]["csi.cert-manager.io/uri-sans"])
            assert m and m["role"] == "peer" and m["name"] == "${POD_NAME}", v
    client = find(objs, "Certificate", "netsy-client-kube-apiserver")
    m = uri.match(client["spec"]["uris"][0])
    assert m and m["role"] == "client" and m["cluster"] == "netsy"


def test_chart_app_version_equals_crate_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    crate = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
    assert chart["appVersion"] == crate


# ---- The chart against the built binary's own defaults (`netsy config defaults`). ----

# paths.* keys of `netsy config defaults` and the variables that override them.
BINARY_PATH_VARS = {
    "config": "NETSY_CONFIG",
    "data_dir": "NETSY_DATA_DIR",
    "ca_cert": "NETSY_TLS_CA_CERT",
    "server_cert": "NETSY_TLS_SERVER_CERT",
    "server_key": "NETSY_TLS_SERVER_KEY",
    "client_cert": "NETSY_TLS_CLIENT_CERT",
    "client_key": "NETSY_TLS_CLIENT_KEY",
}


def netsy_binary():
    """NETSY_BIN, else target/release/netsy, else target/debug/netsy in the repository root."""
    if os.environ.get("NETSY_BIN"):
        path = pathlib.Path(os.environ["NETSY_BIN"])
        assert path.is_file() and os.access(path, os.X_OK), f"NETSY_BIN={path} is not an executable file"
        return path
    for profile in ("release", "debug"):
        path = ROOT / "target" / profile / "netsy"
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


@functools.lru_cache(maxsize=None)
def binary_defaults():
    path = netsy_binary()
    if path is None:
        pytest.skip("no netsy binary: set NETSY_BIN, or build one (cargo build [--release]) so that "
                    "target/release/netsy or target/debug/netsy exists")
    result = subprocess.run([str(path), "config", "defaults"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{path} config defaults: exit {result.returncode}\n{result.stderr}"
    return json.loads(result.stdout)


def test_binary_ports_equal_chart():
    ports = binary_defaults()["ports"]
    assert set(ports) == {"client", "peer", "health"}, ports
    objs = objects()
    assert {p["name"]: p["containerPort"] for p in container(objs)["ports"]} == ports
    assert {p["name"]: p["port"] for p in find(objs, "Service")["spec"]["ports"]} == ports
    e = env(objs)
    for name, port in ports.items():
        assert e[f"NETSY_BIND_{name.upper()}"]["value"] == f"0.0.0.0:{port}"
    assert ports == doc_ports()


def test_binary_env_names_equal_chart():
    binary = binary_defaults()["env"]
    assert len(binary) == len(set(binary)), binary
    chart = {n for n in env(objects()) if n.startswith("NETSY_")}
    assert chart <= set(binary), f"the chart sets variables the binary does not read: {chart - set(binary)}"
    optional = {"NETSY_DEBUG", "NETSY_LOG_FORMAT", "NETSY_INSECURE_PLAINTEXT"}
    assert set(binary) - optional == chart, (set(binary) - optional) ^ chart
    assert set(binary) == doc_env_names(), set(binary) ^ doc_env_names()


def test_binary_paths_equal_interfaces_and_chart():
    """Every paths.* default of the binary is the 0001-interfaces.md default; the chart sets each
    variable to that default, or (the certificates) to its documented Helm chart path."""
    paths = binary_defaults()["paths"]
    assert set(paths) == set(BINARY_PATH_VARS) | {"binary"}, set(paths) ^ (set(BINARY_PATH_VARS) | {"binary"})
    binary_row = next(r for r in table("Paths") if r["what"] == "binary")
    assert code(binary_row["default"]) == [paths["binary"]]
    e = env(objects())
    for key, var in BINARY_PATH_VARS.items():
        assert paths[key] == doc_paths()[var], (key, paths[key], doc_paths()[var])
        expected = doc_helm_paths().get(var, paths[key])
        assert e[var]["value"] == expected, (var, e[var]["value"], expected)
    assert mount_of(objects(), "config")["mountPath"] == paths["config"]
    assert mount_of(objects(), "data")["mountPath"] == paths["data_dir"]
