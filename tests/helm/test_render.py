"""Assertions on the chart rendered with its default values: identities, SANs, environment, ports,
volumes, probes, security context, PDB, labels."""

import pathlib
import re

import pytest
import yaml

from conftest import (CHART, NAMESPACE, RELEASE, VARIANTS, container, csi_attrs, env, find, kinds,
                      mount_of, mounts, notes, render, volumes)

FULL = "netsy"  # fullname for release "netsy"
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
HOST = f"$(POD_NAME).{FULL}.$(POD_NAMESPACE).svc.cluster.local"


def objects():
    return render()


def test_objects_and_names():
    assert kinds(objects()) == sorted([
        ("StatefulSet", FULL),
        ("Service", FULL),
        ("ConfigMap", FULL),
        ("ServiceAccount", FULL),
        ("Issuer", f"{FULL}-selfsigned"),
        ("Certificate", f"{FULL}-ca"),
        ("Issuer", f"{FULL}-ca"),
        ("Certificate", f"{FULL}-client-kube-apiserver"),
        ("PodDisruptionBudget", FULL),
    ])


LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def test_every_object_has_namespace_and_standard_labels():
    for o in objects():
        meta = o["metadata"]
        assert meta["namespace"] == NAMESPACE, meta
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta["name"]) and len(meta["name"]) <= 63
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "netsy"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == APP_VERSION
        assert labels["helm.sh/chart"] == f"netsy-{yaml.safe_load((CHART / 'Chart.yaml').read_text())['version']}"
        for k, v in labels.items():
            assert LABEL_KEY.match(k) and LABEL_VALUE.match(str(v)) and len(str(v)) <= 63, (k, v)


def test_selectors_agree():
    objs = objects()
    sts, svc, pdb = find(objs, "StatefulSet"), find(objs, "Service"), find(objs, "PodDisruptionBudget")
    selector = {"app.kubernetes.io/name": "netsy", "app.kubernetes.io/instance": RELEASE}
    assert sts["spec"]["selector"]["matchLabels"] == selector
    assert svc["spec"]["selector"] == selector
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()


def test_statefulset_identity():
    sts = find(objects(), "StatefulSet", FULL)
    spec = sts["spec"]
    assert spec["serviceName"] == FULL == find(objects(), "Service")["metadata"]["name"]
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["replicas"] == 3
    assert "volumeClaimTemplates" not in spec
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == FULL
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["terminationGracePeriodSeconds"] == 60
    assert [c["name"] for c in pod["containers"]] == ["netsy"]
    assert "initContainers" not in pod


def test_image():
    c = container(objects())
    assert c["image"] == f"ghcr.io/netsy-dev/netsy:{APP_VERSION}"
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert container(render({"image": {"tag": "9.9.9"}}))["image"] == "ghcr.io/netsy-dev/netsy:9.9.9"


def test_headless_service():
    svc = find(objects(), "Service", FULL)["spec"]
    assert svc["clusterIP"] == "None"
    assert svc["publishNotReadyAddresses"] is True
    assert [(p["name"], p["port"], p["targetPort"], p["protocol"]) for p in svc["ports"]] == [
        ("client", 2378, "client", "TCP"), ("peer", 2381, "peer", "TCP"), ("health", 8080, "health", "TCP")]


def test_container_ports():
    assert [(p["name"], p["containerPort"]) for p in container(objects())["ports"]] == [
        ("client", 2378), ("peer", 2381), ("health", 8080)]


EXPECTED_ENV = [
    ("POD_NAME", None),
    ("POD_NAMESPACE", None),
    ("NETSY_NODE_ID", "$(POD_NAME)"),
    ("NETSY_CONFIG", "/etc/netsy/config.jsonc"),
    ("NETSY_DATA_DIR", "/var/lib/netsy"),
    ("NETSY_BIND_CLIENT", "0.0.0.0:2378"),
    ("NETSY_ADVERTISE_CLIENT", f"{HOST}:2378"),
    ("NETSY_BIND_PEER", "0.0.0.0:2381"),
    ("NETSY_ADVERTISE_PEER", f"{HOST}:2381"),
    ("NETSY_BIND_HEALTH", "0.0.0.0:8080"),
    ("NETSY_TLS_CA_CERT", "/etc/netsy/certs/server/ca.crt"),
    ("NETSY_TLS_SERVER_CERT", "/etc/netsy/certs/server/server.crt"),
    ("NETSY_TLS_SERVER_KEY", "/etc/netsy/certs/server/server.key"),
    ("NETSY_TLS_CLIENT_CERT", "/etc/netsy/certs/client/peer.crt"),
    ("NETSY_TLS_CLIENT_KEY", "/etc/netsy/certs/client/peer.key"),
]


def test_env_exact():
    got = [(e["name"], e.get("value")) for e in container(objects())["env"]]
    assert got == EXPECTED_ENV
    e = env(objects())
    assert e["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert e["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert not any("ELECTION" in name for name in e)


def test_env_references_are_defined_before_use():
    """The kubelet expands $(VAR) only for variables defined earlier in the list."""
    defined = set()
    for e in container(objects())["env"]:
        for ref in re.findall(r"\$\(([A-Z_]+)\)", e.get("value", "")):
            assert ref in defined, (e["name"], ref)
        defined.add(e["name"])


def test_mounts_and_volumes():
    m, v = mounts(objects()), volumes(objects())
    assert {path: (x["name"], x.get("subPath"), x.get("readOnly", False)) for path, x in m.items()} == {
        "/etc/netsy/config.jsonc": ("config", "config.jsonc", True),
        "/etc/netsy/certs/server": ("server-tls", None, True),
        "/etc/netsy/certs/client": ("client-tls", None, True),
        "/var/lib/netsy": ("data", None, False),
        "/tmp": ("tmp", None, False),
    }
    assert set(v) == {x["name"] for x in m.values()}
    assert v["config"]["configMap"] == {"name": FULL, "items": [{"key": "config.jsonc", "path": "config.jsonc"}]}
    assert v["data"] == {"name": "data", "emptyDir": {}}
    assert v["tmp"] == {"name": "tmp", "emptyDir": {}}
    for name in ("server-tls", "client-tls"):
        assert v[name]["csi"]["driver"] == "csi.cert-manager.io"
        assert v[name]["csi"]["readOnly"] is True  # the driver refuses anything else


def test_nothing_is_mounted_inside_a_read_only_volume():
    """A CSI or ConfigMap volume is read-only on the node, so the runtime cannot create another
    mount's mount point inside it: the container would not start."""
    objs = objects()
    v = volumes(objs)
    read_only_dirs = [path for path, x in mounts(objs).items()
                      if "subPath" not in x and ("csi" in v[x["name"]] or "configMap" in v[x["name"]])]
    for path in mounts(objs):
        for parent in read_only_dirs:
            assert not path.startswith(parent.rstrip("/") + "/"), (path, parent)


def test_cert_volumes_are_whole_directories():
    """Renewed certificates reach the running process (which reloads them from disk) only through
    a directory mount: a subPath mount keeps the file the container started with."""
    objs = objects()
    v = volumes(objs)
    csi = {name for name, vol in v.items() if "csi" in vol}
    assert csi == {"server-tls", "client-tls"}
    cert_mounts = [x for x in container(objs)["volumeMounts"] if x["name"] in csi]
    assert [x for x in cert_mounts if "subPath" in x or "subPathExpr" in x] == []
    assert {x["name"]: x["mountPath"] for x in cert_mounts} == {
        "server-tls": "/etc/netsy/certs/server",
        "client-tls": "/etc/netsy/certs/client",
    }
    assert csi_attrs(objs, "server-tls")["ca-file"] == "ca.crt"
    assert (csi_attrs(objs, "server-tls")["certificate-file"], csi_attrs(objs, "server-tls")["privatekey-file"]) \
        == ("server.crt", "server.key")
    assert (csi_attrs(objs, "client-tls")["certificate-file"], csi_attrs(objs, "client-tls")["privatekey-file"]) \
        == ("peer.crt", "peer.key")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_no_subpath_on_cert_volumes_in_any_variant(variant):
    objs = render(VARIANTS[variant])
    csi = {name for name, vol in volumes(objs).items() if "csi" in vol}
    for x in container(objs)["volumeMounts"]:
        if x["name"] in csi:
            assert "subPath" not in x and "subPathExpr" not in x, (variant, x)
            assert x["mountPath"] in ("/etc/netsy/certs/server", "/etc/netsy/certs/client"), (variant, x)
    e = env(objs)
    assert [e[n]["value"] for n in ("NETSY_TLS_CA_CERT", "NETSY_TLS_SERVER_CERT", "NETSY_TLS_SERVER_KEY",
                                    "NETSY_TLS_CLIENT_CERT", "NETSY_TLS_CLIENT_KEY")] == [
        "/etc/netsy/certs/server/ca.crt", "/etc/netsy/certs/server/server.crt",
        "/etc/netsy/certs/server/server.key", "/etc/netsy/certs/client/peer.crt",
        "/etc/netsy/certs/client/peer.key"], variant


def test_env_paths_point_into_the_mounted_volumes():
    """Each NETSY_TLS_* file is the file its CSI volume writes, where the container sees it."""
    objs = objects()
    e = env(objs)
    files = {}
    for path, x in mounts(objs).items():
        if "csi" not in volumes(objs)[x["name"]]:
            continue
        a = csi_attrs(objs, x["name"])
        for attr in ("ca-file", "certificate-file", "privatekey-file"):
            if "subPath" in x:
                if x["subPath"] == a[attr]:
                    files[path] = (x["name"], attr)
            else:
                files[str(pathlib.PurePosixPath(path) / a[attr])] = (x["name"], attr)
    assert files[e["NETSY_TLS_CA_CERT"]["value"]] == ("server-tls", "ca-file")
    assert files[e["NETSY_TLS_SERVER_CERT"]["value"]] == ("server-tls", "certificate-file")
    assert files[e["NETSY_TLS_SERVER_KEY"]["value"]] == ("server-tls", "privatekey-file")
    assert files[e["NETSY_TLS_CLIENT_CERT"]["value"]] == ("client-tls", "certificate-file")
    assert files[e["NETSY_TLS_CLIENT_KEY"]["value"]] == ("client-tls", "privatekey-file")
    assert e["NETSY_CONFIG"]["value"] == mount_of(objs, "config")["mountPath"]
    assert e["NETSY_DATA_DIR"]["value"] == mount_of(objs, "data")["mountPath"]


# Volume attributes the cert-manager CSI driver understands (its pkg/apis/v1alpha1).
CSI_KNOWN = {
    "issuer-name", "issuer-kind", "issuer-group", "literal-subject", "common-name", "organizations",
    "organizationalunits", "countries", "provinces", "localities", "streetaddresses", "postalcodes",
    "serialnumber", "dns-names", "ip-sans", "uri-sans", "duration", "is-ca", "key-usages",
    "key-algorithm", "key-encoding", "key-size", "ca-file", "certificate-file", "privatekey-file",
    "fs-group", "renew-before", "reuse-private-key", "pkcs12-enable", "pkcs12-filename", "pkcs12-password",
}


def split(csv):
    return [s.strip() for s in csv.split(",")]


def test_server_certificate_identity():
    a = csi_attrs(objects(), "server-tls")
    assert set(a) <= CSI_KNOWN
    assert a["issuer-name"] == f"{FULL}-ca" and a["issuer-kind"] == "Issuer" and a["issuer-group"] == "cert-manager.io"
    assert a["common-name"] == "${POD_NAME}"
    assert split(a["uri-sans"]) == ["netsy://netsy/peer/${POD_NAME}"]
    assert split(a["dns-names"]) == [f"${{POD_NAME}}.{FULL}.${{POD_NAMESPACE}}.svc.cluster.local", "localhost"]
    assert split(a["ip-sans"]) == ["127.0.0.1", "::1"]
    assert "server auth" in split(a["key-usages"])
    assert set(split(a["key-usages"])) <= {"digital signature", "key encipherment", "server auth", "client auth"}
    assert (a["ca-file"], a["certificate-file"], a["privatekey-file"]) == ("ca.crt", "server.crt", "server.key")
    assert (a["duration"], a["renew-before"]) == ("2160h", "720h")
    assert (a["key-algorithm"], a["key-size"], a["key-encoding"]) == ("ECDSA", "256", "PKCS8")


def test_peer_client_certificate_identity():
    a = csi_attrs(objects(), "client-tls")
    assert set(a) <= CSI_KNOWN
    assert a["issuer-name"] == f"{FULL}-ca" and a["issuer-kind"] == "Issuer"
    assert a["common-name"] == "${POD_NAME}"
    assert split(a["uri-sans"]) == ["netsy://netsy/peer/${POD_NAME}"]
    assert split(a["key-usages"]) == ["digital signature", "client auth"]
    assert (a["certificate-file"], a["privatekey-file"]) == ("peer.crt", "peer.key")
    assert (a["duration"], a["renew-before"]) == ("2160h", "720h")


def test_advertised_host_is_in_the_server_certificate():
    """The host of every advertise address, with the kubelet's $(X) as the CSI driver's ${X}."""
    dns = split(csi_attrs(objects(), "server-tls")["dns-names"])
    for name in ("NETSY_ADVERTISE_CLIENT", "NETSY_ADVERTISE_PEER"):
        host = env(objects())[name]["value"].rsplit(":", 1)[0]
        assert re.sub(r"\$\((\w+)\)", r"${\1}", host) in dns


def test_node_id_equals_certificate_common_name():
    assert env(objects())["NETSY_NODE_ID"]["value"] == "$(POD_NAME)"
    for vol in ("server-tls", "client-tls"):
        a = csi_attrs(objects(), vol)
        assert a["common-name"] == "${POD_NAME}"
        assert a["uri-sans"].endswith("/${POD_NAME}")


def test_certificate_files_readable_by_the_pod_group():
    pod = find(objects(), "StatefulSet")["spec"]["template"]["spec"]
    for vol in ("server-tls", "client-tls"):
        assert csi_attrs(objects(), vol)["fs-group"] == str(pod["securityContext"]["fsGroup"]) == "65532"


def test_ca_chain():
    objs = objects()
    selfsigned = find(objs, "Issuer", f"{FULL}-selfsigned")
    assert selfsigned["spec"] == {"selfSigned": {}}
    ca = find(objs, "Certificate", f"{FULL}-ca")["spec"]
    assert ca["isCA"] is True
    assert ca["commonName"] == "netsy-ca"
    assert ca["duration"] == "87600h"
    assert ca["issuerRef"] == {"name": f"{FULL}-selfsigned", "kind": "Issuer", "group": "cert-manager.io"}
    ca_issuer = find(objs, "Issuer", f"{FULL}-ca")
    assert ca_issuer["spec"] == {"ca": {"secretName": ca["secretName"]}}


def test_client_role_certificate():
    c = find(objects(), "Certificate", f"{FULL}-client-kube-apiserver")["spec"]
    assert c["secretName"] == f"{FULL}-client-kube-apiserver"
    assert c["uris"] == ["netsy://netsy/client/kube-apiserver"]
    assert c["commonName"] == "kube-apiserver"
    assert "client auth" in c["usages"] and "server auth" not in c["usages"]
    assert not c.get("isCA", False)
    assert c["issuerRef"] == {"name": f"{FULL}-ca", "kind": "Issuer", "group": "cert-manager.io"}
    assert (c["duration"], c["renewBefore"]) == ("2160h", "720h")
    assert "dnsNames" not in c and "ipAddresses" not in c


GO_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")


def hours(d):
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", d)) / 3600


def test_durations_parse_and_renewal_comes_before_expiry():
    objs = objects()
    ca = find(objs, "Certificate", f"{FULL}-ca")["spec"]
    client = find(objs, "Certificate", f"{FULL}-client-kube-apiserver")["spec"]
    for d in (ca["duration"], client["duration"], client["renewBefore"]):
        assert GO_DURATION.match(d), d
    assert hours(client["renewBefore"]) < hours(client["duration"]) < hours(ca["duration"])
    a = csi_attrs(objs, "server-tls")
    assert hours(a["renew-before"]) < hours(a["duration"])


def test_probes():
    c = container(objects())
    s, l, r = c["startupProbe"], c["livenessProbe"], c["readinessProbe"]
    assert s["httpGet"] == {"path": "/health", "port": "health"}
    assert l["httpGet"] == {"path": "/livez", "port": "health"}
    assert r["httpGet"] == {"path": "/health", "port": "health"}
    # A long backfill from the bucket must not get the pod killed: an hour at least.
    assert s["periodSeconds"] * s["failureThreshold"] >= 3600
    assert "initialDelaySeconds" not in l  # the startup probe holds liveness back
    assert r["periodSeconds"] <= 10


def test_security_context():
    pod = find(objects(), "StatefulSet")["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (65532, 65532, 65532)
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container(objects())["securityContext"]
    assert c["runAsNonRoot"] is True and c["runAsUser"] == 65532 and c["runAsGroup"] == 65532
    assert c["readOnlyRootFilesystem"] is True
    assert c["allowPrivilegeEscalation"] is False
    assert c["capabilities"] == {"drop": ["ALL"]}
    assert c["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in c or c["privileged"] is False


def test_pdb():
    pdb = find(objects(), "PodDisruptionBudget", FULL)
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]


def test_service_account():
    sa = find(objects(), "ServiceAccount", FULL)
    assert "annotations" not in sa["metadata"]
    assert sa["automountServiceAccountToken"] is False


def test_configmap_carries_config_verbatim():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    cm = find(objects(), "ConfigMap", FULL)
    assert cm["data"] == {"config.jsonc": values["config"]}


def test_config_checksum_annotation():
    sts = find(objects(), "StatefulSet")
    checksum = sts["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert re.fullmatch(r"[0-9a-f]{64}", checksum)
    other_cfg = yaml.safe_load((CHART / "values.yaml").read_text())["config"].replace('"5m"', '"10m"')
    changed = find(render({"config": other_cfg}), "StatefulSet")
    assert changed["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != checksum
    unrelated = find(render({"replicas": 4}), "StatefulSet")
    assert unrelated["spec"]["template"]["metadata"]["annotations"]["checksum/config"] == checksum


def test_no_servicemonitor_by_default():
    assert not [o for o in objects() if o["kind"] == "ServiceMonitor"]


def test_notes_print_etcd_servers_and_etcdctl_flags():
    text = notes()
    servers = ",".join(f"https://{FULL}-{i}.{FULL}.{NAMESPACE}.svc.cluster.local:2378" for i in range(3))
    assert f"--etcd-servers={servers}\n" in text
    assert "--etcd-cafile=" in text and "--etcd-certfile=" in text and "--etcd-keyfile=" in text
    assert "--cacert=ca.crt --cert=tls.crt --key=tls.key" in text
    assert f"{FULL}-client-kube-apiserver" in text
    assert "netsy://netsy/client/kube-apiserver" in text


def test_notes_other_namespace_and_release():
    text = notes(release="etcd", namespace="kube-system")
    assert "--etcd-servers=https://etcd-netsy-0.etcd-netsy.kube-system.svc.cluster.local:2378," in text
