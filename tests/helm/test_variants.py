"""The chart rendered with other values, and values it must refuse with a clear message."""

import re

import pytest
import yaml

from conftest import (CHART, CUSTOM_CONFIG, VARIANTS, container, csi_attrs, env, find, kinds,
                      mount_of, notes, render, template, volumes)

DEFAULT_CONFIG = yaml.safe_load((CHART / "values.yaml").read_text())["config"]


def test_persistence():
    objs = render(VARIANTS["persistence"])
    sts = find(objs, "StatefulSet")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert claim["spec"]["storageClassName"] == "gp3"
    assert "data" not in volumes(objs)  # the claim template supplies it
    assert mount_of(objs, "data")["mountPath"] == "/var/lib/netsy"


def test_persistence_storage_class_unset_and_empty():
    claim = find(render({"persistence": {"enabled": True}}), "StatefulSet")["spec"]["volumeClaimTemplates"][0]
    assert "storageClassName" not in claim["spec"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    claim = find(render(VARIANTS["persistence-empty-class"]), "StatefulSet")["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["storageClassName"] == ""


def test_irsa_annotations():
    objs = render(VARIANTS["irsa"])
    sa = find(objs, "ServiceAccount")
    assert sa["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/netsy"}
    annotations = find(objs, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["iam.amazonaws.com/role"] == "arn:aws:iam::123456789012:role/netsy"
    assert "checksum/config" in annotations


def test_workload_identity_annotation():
    sa = find(render(VARIANTS["workload-identity"]), "ServiceAccount")
    assert sa["metadata"]["annotations"] == {"iam.gke.io/gcp-service-account": "netsy@project.iam.gserviceaccount.com"}


def test_extra_env_comes_after_the_chart_env():
    default_env = container(render())["env"]
    got = container(render(VARIANTS["extra-env"]))["env"]
    assert got[: len(default_env)] == default_env
    assert got[len(default_env):] == VARIANTS["extra-env"]["extraEnv"]


def test_five_replicas():
    objs = render(VARIANTS["replicas-5"])
    assert find(objs, "StatefulSet")["spec"]["replicas"] == 5
    text = notes(VARIANTS["replicas-5"])
    servers = ",".join(f"https://netsy-{i}.netsy.default.svc.cluster.local:2378" for i in range(5))
    assert f"--etcd-servers={servers}\n" in text


def test_service_monitor():
    objs = render(VARIANTS["service-monitor"])
    sm = find(objs, "ServiceMonitor", "netsy")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    (endpoint,) = sm["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["scheme"]) == ("health", "/metrics", "http")
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("30s", "10s")
    svc = find(objs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert "health" in [p["name"] for p in svc["spec"]["ports"]]
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["default"]}


def test_custom_cluster_id_and_names():
    objs = render(VARIANTS["custom-cluster"])
    assert {name for _, name in kinds(objs)} == {"kv", "kv-selfsigned", "kv-ca", "kv-client-kube-apiserver"}
    sts = find(objs, "StatefulSet", "kv")
    assert sts["spec"]["serviceName"] == "kv"
    a = csi_attrs(objs, "server-tls")
    assert a["uri-sans"] == "netsy://prod-eu-1/peer/${POD_NAME}"
    assert a["dns-names"].split(",")[0] == "${POD_NAME}.kv.${POD_NAMESPACE}.svc.k8s.example"
    assert a["issuer-name"] == "kv-ca"
    assert csi_attrs(objs, "client-tls")["uri-sans"] == "netsy://prod-eu-1/peer/${POD_NAME}"
    assert find(objs, "Certificate", "kv-ca")["spec"]["commonName"] == "prod-eu-1-ca"
    assert find(objs, "Certificate", "kv-client-kube-apiserver")["spec"]["uris"] == [
        "netsy://prod-eu-1/client/kube-apiserver"]
    assert env(objs)["NETSY_ADVERTISE_PEER"]["value"] == "$(POD_NAME).kv.$(POD_NAMESPACE).svc.k8s.example:2381"
    assert find(objs, "ConfigMap", "kv")["data"]["config.jsonc"] == CUSTOM_CONFIG


def test_release_name_without_chart_name():
    objs = render(release="prod")
    sts = find(objs, "StatefulSet", "prod-netsy")
    assert sts["spec"]["serviceName"] == "prod-netsy"
    assert env(objs)["NETSY_ADVERTISE_CLIENT"]["value"] == "$(POD_NAME).prod-netsy.$(POD_NAMESPACE).svc.cluster.local:2378"


def test_minimal():
    objs = render(VARIANTS["minimal"])
    assert not [o for o in objs if o["kind"] in ("ServiceAccount", "PodDisruptionBudget")]
    assert [o["metadata"]["name"] for o in objs if o["kind"] == "Certificate"] == ["netsy-ca"]
    pod = find(objs, "StatefulSet")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "default"
    assert "securityContext" not in pod
    assert "fs-group" not in csi_attrs(objs, "server-tls")
    assert "clientCertificate.enabled is false" in notes(VARIANTS["minimal"])


def test_named_existing_service_account():
    pod = find(render({"serviceAccount": {"create": False, "name": "netsy-irsa"}}), "StatefulSet")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "netsy-irsa"
    objs = render({"serviceAccount": {"name": "custom"}})
    assert find(objs, "ServiceAccount")["metadata"]["name"] == "custom"


def test_client_certificate_name_and_secret():
    objs = render({"clientCertificate": {"name": "etcdctl", "secretName": "etcdctl-cert"}})
    c = find(objs, "Certificate", "etcdctl-cert")["spec"]
    assert c["secretName"] == "etcdctl-cert"
    assert c["uris"] == ["netsy://netsy/client/etcdctl"]


def test_scheduling_and_pod_metadata():
    objs = render(VARIANTS["scheduling"])
    pod = find(objs, "StatefulSet")["spec"]["template"]
    spec = pod["spec"]
    v = VARIANTS["scheduling"]
    assert container(objs)["resources"] == v["resources"]
    assert spec["nodeSelector"] == v["nodeSelector"]
    assert spec["tolerations"] == v["tolerations"]
    assert spec["affinity"] == v["affinity"]
    assert spec["imagePullSecrets"] == v["imagePullSecrets"]
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert pod["metadata"]["labels"]["team"] == "storage"
    assert container(objs)["image"] == "ghcr.io/netsy-dev/netsy:1.2.3"
    assert container(objs)["imagePullPolicy"] == "Always"


def test_probe_timing_from_values():
    c = container(render({"startupProbe": {"periodSeconds": 5, "failureThreshold": 1440, "timeoutSeconds": 2}}))
    assert c["startupProbe"] == {"httpGet": {"path": "/health", "port": "health"},
                                 "periodSeconds": 5, "failureThreshold": 1440, "timeoutSeconds": 2}


def test_jsonc_comment_markers_inside_strings_survive():
    """The check strips comments but not '//' or '/*' inside strings (the config is mounted verbatim anyway)."""
    config = '{\n  "cluster_id": "netsy", // trailing comment\n  "storage": {"endpoint": "http://x//y/*z*/"},\n}\n'
    assert find(render({"config": config}), "ConfigMap")["data"]["config.jsonc"] == config


def failure(values, release="netsy"):
    result = template(values, release=release)
    assert result.returncode != 0, f"helm template accepted {values}"
    return result.stderr


def test_mismatched_cluster_id_fails_naming_both_values():
    err = failure({"clusterID": "prod"})
    assert 'clusterID ("prod") does not match cluster_id in config ("netsy")' in err, err


def test_mismatched_cluster_id_in_config_fails():
    err = failure({"config": DEFAULT_CONFIG.replace('"cluster_id": "netsy"', '"cluster_id": "other"')})
    assert 'clusterID ("netsy") does not match cluster_id in config ("other")' in err, err


def test_commented_out_cluster_id_does_not_count():
    config = '{\n  // "cluster_id": "netsy",\n  /* "cluster_id": "netsy", */\n  "storage": {}\n}\n'
    err = failure({"config": config})
    assert 'config has no "cluster_id"; it must equal clusterID ("netsy")' in err, err


@pytest.mark.parametrize("config", ['{"cluster_id": "netsy" /* never closed\n}', '{"cluster_id": "netsy",,}',
                                    '["netsy"]', 'cluster_id: netsy'])
def test_invalid_jsonc_fails(config):
    err = failure({"config": config})
    assert "netsy: config is not valid JSONC" in err, err


@pytest.mark.parametrize("cluster_id", ["Netsy", "-netsy", "netsy-", "net--sy", "net_sy", "net.sy", "", "a" * 33])
def test_schema_rejects_invalid_cluster_id(cluster_id):
    config = DEFAULT_CONFIG.replace('"cluster_id": "netsy"', f'"cluster_id": "{cluster_id}"')
    err = failure({"clusterID": cluster_id, "config": config})
    assert "values don't meet the specifications of the schema" in err, err
    assert "clusterID" in err, err


def test_schema_accepts_longest_cluster_id():
    cluster_id = "a" * 15 + "-" + "b" * 16
    config = DEFAULT_CONFIG.replace('"cluster_id": "netsy"', f'"cluster_id": "{cluster_id}"')
    objs = render({"clusterID": cluster_id, "config": config})
    assert csi_attrs(objs, "server-tls")["uri-sans"] == f"netsy://{cluster_id}/peer/${{POD_NAME}}"


@pytest.mark.parametrize("values, field", [
    ({"clusterIDs": "netsy"}, "clusterIDs"),
    ({"replicas": 0}, "replicas"),
    ({"tls": {"duration": "90d"}}, "tls.duration"),
    ({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy"),
    ({"persistence": {"size": "lots"}}, "persistence.size"),
    ({"startupProbe": {"httpGet": {"path": "/"}}}, "startupProbe"),
    ({"clientCertificate": {"name": "Kube API"}}, "clientCertificate.name"),
])
def test_schema_rejects_bad_values(values, field):
    err = failure(values)
    assert "values don't meet the specifications of the schema" in err and field in err, err


def test_pod_names_must_be_valid_node_ids():
    err = failure({}, release="a-very-long-release-name-for-netsy")
    assert re.search(r'pod name "a-very-long-release-name-for-netsy-2" is not a valid node id', err), err
    err = failure({"fullnameOverride": "kv--store"})
    assert 'pod name "kv--store-2" is not a valid node id' in err, err
    # 30 characters plus "-9" fits; a tenth replica would not.
    name = "n" * 30
    assert find(render({"fullnameOverride": name, "replicas": 10}), "StatefulSet")["metadata"]["name"] == name
    assert 'is not a valid node id' in failure({"fullnameOverride": name, "replicas": 11})
