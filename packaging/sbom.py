#!/usr/bin/env python3
"""Writes a CycloneDX 1.5 JSON SBOM of the netsy binary from Cargo.lock.

    packaging/sbom.py --binary dist/netsy --out dist/netsy_0.1.0_linux_amd64.sbom.cdx.json

Components are the crates compiled into (or used to build) the binary for
x86_64-unknown-linux-gnu, as `cargo metadata --locked` resolves them from Cargo.lock:
normal and build dependencies, not dev-dependencies. Each has its purl, its license
expression and the SHA-256 that Cargo.lock records for the crate archive; the dependency
graph is included. Deterministic: the timestamp is SOURCE_DATE_EPOCH and the serial number
is derived from the content.
"""
import argparse
import datetime
import hashlib
import json
import os
import subprocess
import tomllib
import uuid

TARGET = "x86_64-unknown-linux-gnu"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--manifest-path", default="Cargo.toml")
    a = ap.parse_args()

    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--offline",
         "--filter-platform", TARGET, "--manifest-path", a.manifest_path],
        check=True, capture_output=True).stdout)
    lock_path = os.path.join(os.path.dirname(os.path.abspath(a.manifest_path)), "Cargo.lock")
    with open(lock_path, "rb") as f:
        checksums = {(p["name"], p["version"]): p.get("checksum")
                     for p in tomllib.load(f)["package"]}

    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root_id = meta["resolve"]["root"]
    root = packages[root_id]

    # Walk from the root through normal and build edges only.
    def edges(node_id):
        for d in nodes[node_id]["deps"]:
            kinds = {k["kind"] for k in d["dep_kinds"]}
            if kinds - {"dev"}:
                yield d["pkg"]

    seen, stack = set(), [root_id]
    while stack:
        cur = stack.pop()
        if cur in seen:
            continue
        seen.add(cur)
        stack.extend(edges(cur))

    def ref(p):
        return f"pkg:cargo/{p['name']}@{p['version']}"

    def component(p, kind="library"):
        c = {"type": kind, "bom-ref": ref(p), "name": p["name"], "version": p["version"],
             "purl": ref(p)}
        if p.get("description"):
            c["description"] = " ".join(p["description"].split())
        if p.get("license"):
            c["licenses"] = [{"expression": p["license"]}]
        if (s := checksums.get((p["name"], p["version"]))):
            c["hashes"] = [{"alg": "SHA-256", "content": s}]
        src = p.get("source") or ""
        if src.startswith("registry+"):
            c["externalReferences"] = [{"type": "distribution",
                                        "url": f"https://crates.io/crates/{p['name']}/{p['version']}"}]
        return c

    with open(a.binary, "rb") as f:
        bin_hash = hashlib.sha256(f.read()).hexdigest()
    main_c = component(root, "application")
    main_c["hashes"] = [{"alg": "SHA-256", "content": bin_hash}]
    libs = sorted((component(packages[i]) for i in seen if i != root_id), key=lambda c: c["bom-ref"])
    deps = sorted(({"ref": ref(packages[i]),
                    "dependsOn": sorted({ref(packages[d]) for d in edges(i)})} for i in seen),
                  key=lambda d: d["ref"])

    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    bom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "timestamp": datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc)
                         .strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": [{"type": "application", "name": "packaging/sbom.py"}]},
            "component": main_c,
            "properties": [{"name": "cargo:target", "value": TARGET}],
        },
        "components": libs,
        "dependencies": deps,
    }
    body = json.dumps(bom, sort_keys=True).encode()
    bom["serialNumber"] = "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_URL, hashlib.sha256(body).hexdigest()))
    with open(a.out, "w") as f:
        json.dump(bom, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"{a.out}: {len(libs)} components")


if __name__ == "__main__":
    main()
