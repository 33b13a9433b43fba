"""The chart uses exactly the ports, paths and environment variables of
docs/design/interfaces.md (parsed from its tables), so a change in one place fails here."""

import functools
import re
import tomllib

import yaml

from conftest import CHART, ROOT, container, env, find, mount_of, render

INTERFACES = ROOT / "docs" / "design" / "interfaces.md"


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


@functools.lru_cache(maxsize=None)
def doc_paths():
    """{variable: default path} from the Paths table; a row with two paths has two variables."""
    out = {}
    for row in table("Paths"):
        paths = [p for p in code(row["default"]) if p.startswith("/")]
        names = [n for n in code(row["variable / flag"]) if n.startswith("NETSY_")]
        if not names:
            continue
        assert len(paths) >= len(names), row
        out.update(zip(names, paths))
    return out


def doc_env_names():
    text = "\n".join(sections()["Environment variables"])
    return set(re.findall(r"`(NETSY_[A-Z_]+)`", text))


def objects():
    return render()


def test_interfaces_md_parses():
    assert doc_ports() == {"client": 2378, "peer": 2381, "health": 8080}, "update the chart with interfaces.md"
    assert {"NETSY_CONFIG", "NETSY_DATA_DIR", "NETSY_TLS_CA_CERT", "NETSY_TLS_SERVER_CERT", "NETSY_TLS_SERVER_KEY",
            "NETSY_TLS_CLIENT_CERT", "NETSY_TLS_CLIENT_KEY"} <= set(doc_paths())
    assert "NETSY_NODE_ID" in doc_env_names()


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
    """interfaces.md: there is no election port (the original's 8443)."""
    assert "election" not in doc_ports()
    assert "no election port" in INTERFACES.read_text().lower()
    objs = objects()
    assert 8443 not in [p["port"] for p in find(objs, "Service")["spec"]["ports"]]
    assert not [n for n in env(objs) if "ELECTION" in n]


def test_env_paths_equal_interfaces():
    e = env(objects())
    for name, path in doc_paths().items():
        assert e[name]["value"] == path, name


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
