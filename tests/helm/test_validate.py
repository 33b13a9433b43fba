"""helm lint, and every rendered object of every value set validated offline: core objects with
kubernetes-validate --strict against the Kubernetes OpenAPI schemas, custom resources against the
openAPIV3Schema of their CRD (cert-manager's, the Prometheus Operator's) made strict."""

import functools
import os
import pathlib
import re
import subprocess
import tempfile

import jsonschema
import pytest
import yaml

from conftest import CHART, VARIANTS, helm, render, render_text

K8S_VERSIONS = os.environ.get("K8S_VERSIONS", "1.26.0 1.37.0").split()
KUBERNETES_VALIDATE = os.environ.get("KUBERNETES_VALIDATE", "kubernetes-validate")
CRD_DIR = os.environ.get("CRD_DIR")

# Kinds whose schema comes from a CRD, not from Kubernetes itself.
CRD_KINDS = {
    ("cert-manager.io/v1", "Issuer"),
    ("cert-manager.io/v1", "Certificate"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}


def test_lint_strict():
    result = helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("variant", VARIANTS)
def test_lint_variant(variant):
    result = helm("lint", "--strict", str(CHART), values=VARIANTS[variant])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_core_objects_valid_for_kubernetes(variant):
    objects = render(VARIANTS[variant])
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / f"{variant}.yaml"
        path.write_text(render_text(VARIANTS[variant]))
        cmd = [KUBERNETES_VALIDATE, "--strict"]
        for version in K8S_VERSIONS:
            cmd += ["-k", version]
        result = subprocess.run(cmd + [str(path)], capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "ERROR" not in out and "FATAL" not in out, out
    # Every core object passed against every version; only CRD kinds lack a schema.
    for o in objects:
        key = (o["apiVersion"], o["kind"])
        name = f'{o["kind"].lower()}/{o["metadata"]["name"]}'
        if key in CRD_KINDS:
            continue
        for version in K8S_VERSIONS:
            minor = ".".join(version.split(".")[:2])
            assert f"passed for resource {name} against version {minor}" in out, (name, version, out)
    for line in out.splitlines():
        if line.startswith("WARN"):
            assert re.search(r"kind (Issuer|Certificate|ServiceMonitor) with api version "
                             r"(cert-manager\.io|monitoring\.coreos\.com)/v1 ", line), line


def _strict(schema):
    """A copy of a structural schema that rejects fields it does not declare, as the API server's
    strict field validation does."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: v for k, v in schema.items()}
    if "properties" in out:
        out["properties"] = {k: _strict(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("items"), dict):
        out["items"] = _strict(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(out["additionalProperties"])
    return out


@functools.lru_cache(maxsize=None)
def crd_schemas():
    assert CRD_DIR, "CRD_DIR is not set: run tests/helm/run.sh"
    schemas = {}
    for path in sorted(pathlib.Path(CRD_DIR).glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    schemas[(f'{group}/{version["name"]}', kind)] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


def test_crd_schemas_present():
    assert CRD_KINDS <= set(crd_schemas()), sorted(crd_schemas())


@pytest.mark.parametrize("variant", VARIANTS)
def test_custom_resources_valid_for_their_crds(variant):
    checked = 0
    for o in render(VARIANTS[variant]):
        key = (o["apiVersion"], o["kind"])
        if key not in CRD_KINDS:
            continue
        schema = crd_schemas()[key]
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(o), key=lambda e: list(e.path))
        assert not errors, "\n".join(f'{o["kind"]}/{o["metadata"]["name"]}: {"/".join(map(str, e.path))}: {e.message}'
                                     for e in errors)
        checked += 1
    assert checked >= 3  # the CA chain at least


def test_strict_crd_validation_rejects_unknown_fields():
    """The CRD check is not vacuous: a misspelt field and a wrong type fail it."""
    schema = crd_schemas()[("cert-manager.io/v1", "Certificate")]
    good = {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "x"},
            "spec": {"secretName": "x", "issuerRef": {"name": "ca"}, "uris": ["netsy://a/client/b"]}}
    assert not list(jsonschema.Draft7Validator(schema).iter_errors(good))
    typo = {**good, "spec": {**good["spec"], "usage": ["client auth"]}}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(typo))
    wrong = {**good, "spec": {**good["spec"], "usages": ["client-auth"]}}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(wrong))
