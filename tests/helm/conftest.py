"""Shared helpers of the Helm chart tests: rendering the chart and picking objects out of it.

tests/helm/run.sh sets HELM (the pinned helm binary), CRD_DIR, K8S_VERSIONS and
KUBERNETES_VALIDATE; run through it.
"""

import functools
import json
import os
import pathlib
import shutil
import subprocess
import tempfile

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm"
HELM = os.environ.get("HELM") or shutil.which("helm") or "helm"
RELEASE = "netsy"
NAMESPACE = "default"

CUSTOM_CONFIG = """\
{
  // A config written by hand: comments, trailing commas, comment markers inside strings.
  "cluster_id": "prod-eu-1", /* the same as clusterID */
  "storage": {
    "provider": "s3",
    "bucket_name": "prod-eu-1-netsy",
    "key_prefix": "clusters//prod-eu-1/*x*/",
  },
  "heartbeat_interval": "1s",
  "replication": {"quorum": -1, "chunk_buffer": {"threshold_age_minutes": 1,},},
}
"""

# Value sets rendered by the validation and lint tests; each must render.
VARIANTS = {
    "default": {},
    "persistence": {"persistence": {"enabled": True, "size": "5Gi", "storageClass": "gp3"}},
    "persistence-empty-class": {"persistence": {"enabled": True, "storageClass": "-"}},
    "irsa": {
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/netsy"}},
        "podAnnotations": {"iam.amazonaws.com/role": "arn:aws:iam::123456789012:role/netsy"},
    },
    "workload-identity": {
        "serviceAccount": {"annotations": {"iam.gke.io/gcp-service-account": "netsy@project.iam.gserviceaccount.com"}},
    },
    "extra-env": {
        "extraEnv": [
            {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "aws", "key": "access-key-id"}}},
            {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "aws", "key": "secret-access-key"}}},
            {"name": "AWS_DEFAULT_REGION", "value": "us-east-1"},
            {"name": "NETSY_DEBUG", "value": "true"},
        ],
    },
    "replicas-5": {"replicas": 5},
    "service-monitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "custom-cluster": {"clusterID": "prod-eu-1", "config": CUSTOM_CONFIG, "fullnameOverride": "kv",
                       "clusterDomain": "k8s.example"},
    "minimal": {
        "serviceAccount": {"create": False},
        "clientCertificate": {"enabled": False},
        "podDisruptionBudget": {"enabled": False},
        "podSecurityContext": None,  # null removes a default map; {} would merge with it
        "securityContext": None,
    },
    "scheduling": {
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
        "nodeSelector": {"kubernetes.io/arch": "amd64"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "etcd", "effect": "NoSchedule"}],
        "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "kubernetes.io/hostname",
             "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "netsy"}}}]}},
        "imagePullSecrets": [{"name": "registry"}],
        "priorityClassName": "system-cluster-critical",
        "podLabels": {"team": "storage"},
        "image": {"tag": "1.2.3", "pullPolicy": "Always"},
    },
}


def values_file(values, directory):
    path = pathlib.Path(directory) / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def helm(*args, values=None):
    """Runs helm; values (a dict) is passed as a values file."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [HELM, *args]
        if values:
            cmd += ["-f", str(values_file(values, tmp))]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@functools.lru_cache(maxsize=None)
def _template(values_json, release, namespace):
    return helm("template", release, str(CHART), "--namespace", namespace,
                values=json.loads(values_json))


def template(values=None, release=RELEASE, namespace=NAMESPACE):
    """`helm template` result (CompletedProcess), cached per value set."""
    return _template(json.dumps(values or {}, sort_keys=True), release, namespace)


def render(values=None, release=RELEASE, namespace=NAMESPACE):
    """The rendered objects; fails the test when helm refuses the values."""
    result = template(values, release, namespace)
    if result.returncode != 0:
        pytest.fail(f"helm template failed:\n{result.stderr}")
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def render_text(values=None):
    result = template(values)
    assert result.returncode == 0, result.stderr
    return result.stdout


def find(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kinds(objects):
    return sorted((o["kind"], o["metadata"]["name"]) for o in objects)


def container(objects):
    sts = find(objects, "StatefulSet")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    return c


def env(objects):
    return {e["name"]: e for e in container(objects)["env"]}


def volumes(objects):
    return {v["name"]: v for v in find(objects, "StatefulSet")["spec"]["template"]["spec"]["volumes"]}


def mounts(objects):
    """{mountPath: mount} of the netsy container."""
    return {m["mountPath"]: m for m in container(objects)["volumeMounts"]}


def mount_of(objects, volume):
    """The one mount of a volume."""
    (m,) = [m for m in container(objects)["volumeMounts"] if m["name"] == volume]
    return m


def csi_attrs(objects, volume):
    v = volumes(objects)[volume]
    assert v["csi"]["driver"] == "csi.cert-manager.io"
    return {k.removeprefix("csi.cert-manager.io/"): val for k, val in v["csi"]["volumeAttributes"].items()}


def notes(values=None, release=RELEASE, namespace=NAMESPACE):
    """NOTES.txt rendered: `helm template` skips it and `helm install --dry-run` needs a cluster, so
    a copy of the chart carries it as a named template that a manifest prints."""
    with tempfile.TemporaryDirectory() as tmp:
        chart = pathlib.Path(tmp) / "netsy"
        shutil.copytree(CHART, chart)
        text = (chart / "templates" / "NOTES.txt").read_text()
        (chart / "templates" / "NOTES.txt").unlink()
        (chart / "templates" / "_notes_for_test.tpl").write_text(
            '{{- define "test.notes" -}}\n' + text + "\n{{- end }}\n")
        (chart / "templates" / "notes-for-test.yaml").write_text(
            'notes: {{ include "test.notes" . | toJson }}\n')
        result = helm("template", release, str(chart), "--namespace", namespace,
                      "--show-only", "templates/notes-for-test.yaml", values=values)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["notes"]
