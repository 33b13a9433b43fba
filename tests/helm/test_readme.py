"""values.yaml against the product document's values table, and README.md against values.yaml."""

import json
import re
import subprocess
import sys

import yaml

from conftest import CHART

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())

# The values table of the product document (key: default), a requirement of the chart.
PRODUCT_TABLE = {
    "replicas": 3,
    "clusterID": "netsy",
    "image.repository": "ghcr.io/netsy-dev/netsy",
    "image.tag": "",  # empty: the Chart appVersion
    "image.pullPolicy": "IfNotPresent",
    "tls.caDuration": "87600h",
    "tls.duration": "2160h",
    "tls.renewBefore": "720h",
    "config": ...,  # checked below
    "persistence.enabled": False,
    "persistence.size": "1Gi",
    "persistence.storageClass": None,
    "resources": {},
    "serviceAccount.create": True,
    "serviceAccount.name": "",
    "serviceAccount.annotations": {},
    "extraEnv": [],
    "podAnnotations": {},
    "podLabels": {},
    "nodeSelector": {},
    "tolerations": [],
    "affinity": {},
    "nameOverride": "",
    "fullnameOverride": "",
}


def lookup(path):
    node = VALUES
    for part in path.split("."):
        assert isinstance(node, dict) and part in node, f"values.yaml lacks {path}"
        node = node[part]
    return node


def test_defaults_equal_the_product_document():
    for key, default in PRODUCT_TABLE.items():
        value = lookup(key)
        if default is not ...:
            assert value == default and type(value) is type(default), (key, value, default)


def jsonc(text):
    text = re.sub(r'("(?:[^"\\]|\\.)*")|//[^\n]*|/\*.*?\*/', lambda m: m.group(1) or "", text, flags=re.S)
    return json.loads(re.sub(r'("(?:[^"\\]|\\.)*")|,(\s*[\]}])', lambda m: m.group(1) or m.group(2), text))


def test_default_config():
    config = jsonc(VALUES["config"])
    assert config["cluster_id"] == VALUES["clusterID"] == "netsy"
    assert config["storage"]["provider"] == "s3" and config["storage"]["bucket_name"] == "netsy"
    assert config["heartbeat_interval"] == "1s"
    assert config["elector"] == {"degradation_count": 2, "deregistration_timeout": "3m", "primary_prior_timeout": "5s"}
    assert config["replication"] == {"quorum": -1, "degradation_count": 2,
                                     "chunk_buffer": {"threshold_size_mb": 4, "threshold_age_minutes": 1}}
    assert config["snapshot"] == {"threshold_records": 10000, "threshold_size_mb": 10000, "threshold_age_minutes": 0}
    assert config["compaction_interval"] == "5m"


def test_readme_is_up_to_date():
    result = subprocess.run([sys.executable, str(CHART / "gen-readme.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def readme_rows():
    text = (CHART / "README.md").read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `([^`]+)` \| (.*?) \| .* \|$", text, re.M)}


def test_readme_documents_every_product_value():
    rows = readme_rows()
    for key in PRODUCT_TABLE:
        assert key in rows, f"README.md values reference lacks {key}"
    assert rows["replicas"] == "`3`"
    assert rows["image.tag"] == "Chart appVersion"


def test_readme_documents_every_leaf_value():
    """Every key of values.yaml is in the reference, itself or through a documented parent."""
    rows = readme_rows()

    def walk(node, prefix):
        for key, value in node.items():
            path = prefix + key
            if path in rows:
                continue
            assert isinstance(value, dict) and value, f"{path} is not documented in README.md"
            walk(value, path + ".")

    walk(VALUES, "")


def test_schema_covers_every_value():
    schema = json.loads((CHART / "values.schema.json").read_text())
    for key in VALUES:
        assert key in schema["properties"], key
    assert schema["additionalProperties"] is False
