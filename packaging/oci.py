#!/usr/bin/env python3
"""Writes the netsy container image as an OCI image layout, without a container engine.

    packaging/oci.py --binary dist/netsy --version 0.1.0 --debs DIR --out dist/oci

One layer, in the spirit of a "distroless" C-runtime image: glibc and libgcc_s (from Debian's
libc6 and libgcc-s1 .debs, the same release the binary was linked against), Mozilla's CA
bundle (from ca-certificates, for HTTPS to object storage), /etc/passwd and /etc/group with
the unprivileged user 65532 ("nonroot"), and the binary at /usr/bin/netsy. No shell.

Config: User 65532:65532, Entrypoint ["/usr/bin/netsy"], exposed ports 2378 (client), 2381
(peer), 8080 (health), as docs/design/0001-interfaces.md specifies.

Deterministic: entries sorted, every mtime = SOURCE_DATE_EPOCH, numeric owners, gzip without
name or time, JSON with sorted keys. The same inputs give the same digests.
"""
import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile

PORTS = {"client": 2378, "peer": 2381, "health": 8080}
NONROOT = 65532
# usr-merged layout: the .debs still ship /lib and /lib64; they land under /usr.
MERGED = {"lib": "usr/lib", "lib64": "usr/lib64", "bin": "usr/bin", "sbin": "usr/sbin"}
# Parts of the .debs a static-ish Rust server never uses.
DROP_PREFIXES = ("usr/share/doc/", "usr/share/lintian/", "usr/share/locale/",
                 "usr/lib/x86_64-linux-gnu/gconv/", "usr/share/ca-certificates/",
                 "usr/sbin/", "etc/ld.so.conf.d/", "usr/share/man/")


def canonical(path: str) -> str:
    path = os.path.normpath(path.removeprefix("./").removeprefix("/") or ".")
    if path == ".":
        return ""
    head, _, rest = path.partition("/")
    if head in MERGED:
        return MERGED[head] + ("/" + rest if rest else "")
    return path


class Layer:
    def __init__(self, epoch: int):
        self.epoch = epoch
        self.entries: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}

    def _info(self, name, kind, mode, uid=0, gid=0):
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.uid, ti.gid = kind, mode, uid, gid
        ti.uname = ti.gname = ""
        ti.mtime = self.epoch
        return ti

    def dir(self, name, mode=0o755, uid=0, gid=0):
        parent = os.path.dirname(name)
        if parent and parent not in self.entries:
            self.dir(parent)
        if name not in self.entries or self.entries[name][0].type != tarfile.DIRTYPE or uid or gid:
            self.entries[name] = (self._info(name, tarfile.DIRTYPE, mode, uid, gid), None)

    def file(self, name, data: bytes, mode=0o644):
        self.dir(os.path.dirname(name))
        ti = self._info(name, tarfile.REGTYPE, mode)
        ti.size = len(data)
        self.entries[name] = (ti, data)

    def symlink(self, name, target):
        self.dir(os.path.dirname(name))
        ti = self._info(name, tarfile.SYMTYPE, 0o777)
        ti.linkname = target
        self.entries[name] = (ti, None)

    def add_deb(self, deb: str):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], check=True,
                           stdout=open(os.path.join(tmp, "data.tar"), "wb"))
            with tarfile.open(os.path.join(tmp, "data.tar")) as t:
                for m in t.getmembers():
                    name = canonical(m.name)
                    if not name or name.startswith(DROP_PREFIXES):
                        continue
                    if m.isdir():
                        self.dir(name, m.mode & 0o7777)
                    elif m.issym():
                        target = m.linkname
                        if target.startswith("/"):
                            target = "/" + canonical(target)
                        self.symlink(name, target)
                    elif m.isfile():
                        self.file(name, t.extractfile(m).read(), m.mode & 0o7777)
                    elif m.islnk():
                        src = canonical(m.linkname)
                        self.file(name, self.entries[src][1], m.mode & 0o7777)

    def tar(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            for name in sorted(self.entries):
                ti, data = self.entries[name]
                t.addfile(ti, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def ca_bundle(debs: list[str]) -> bytes:
    """Mozilla's CA certificates from the ca-certificates .deb, concatenated in name order
    (what update-ca-certificates writes to /etc/ssl/certs/ca-certificates.crt)."""
    deb = next(d for d in debs if os.path.basename(d).startswith("ca-certificates_"))
    out = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], check=True, capture_output=True).stdout
    certs = []
    with tarfile.open(fileobj=io.BytesIO(out)) as t:
        for m in sorted(t.getmembers(), key=lambda m: m.name):
            if m.isfile() and "/usr/share/ca-certificates/mozilla/" in m.name and m.name.endswith(".crt"):
                data = t.extractfile(m).read()
                certs.append(data if data.endswith(b"\n") else data + b"\n")
    if not certs:
        raise SystemExit("no certificates found in " + deb)
    return b"".join(certs)


def blob(layout: str, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(layout, "blobs", "sha256", digest)
    with open(path, "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def dumps(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--debs", required=True, help="directory with libc6, libgcc-s1, ca-certificates .debs")
    ap.add_argument("--out", required=True, help="OCI layout directory to (re)create")
    ap.add_argument("--repository", default="ghcr.io/netsy-dev/netsy")
    ap.add_argument("--revision", default="")
    a = ap.parse_args()

    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    created = datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    debs = sorted(os.path.join(a.debs, d) for d in os.listdir(a.debs) if d.endswith(".deb"))

    layer = Layer(epoch)
    for top, target in sorted(MERGED.items()):
        layer.dir(target)
        layer.symlink(top, target)
    for deb in debs:
        if not os.path.basename(deb).startswith("ca-certificates_"):
            layer.add_deb(deb)
        # dpkg status entries, as distroless images carry them, so scanners see the packages.
        control = subprocess.run(["dpkg-deb", "-f", deb], check=True, capture_output=True).stdout
        fields = dict(line.split(": ", 1) for line in control.decode().splitlines()
                      if ": " in line and not line.startswith(" "))
        keep = [f"{k}: {fields[k]}" for k in ("Package", "Version", "Architecture", "Source") if k in fields]
        keep.insert(1, "Status: install ok installed")
        layer.file(f"var/lib/dpkg/status.d/{fields['Package']}", ("\n".join(keep) + "\n").encode())
    layer.file("etc/ssl/certs/ca-certificates.crt", ca_bundle(debs))
    layer.file("etc/passwd", b"root:x:0:0:root:/root:/sbin/nologin\n"
               b"nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")
    layer.file("etc/group", b"root:x:0:\nnonroot:x:65532:\n")
    layer.file("etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files dns\n")
    layer.dir("root", 0o700)
    layer.dir("home/nonroot", 0o700, NONROOT, NONROOT)
    layer.dir("tmp", 0o1777)
    layer.dir("etc/netsy", 0o755)
    layer.dir("var/lib/netsy", 0o700, NONROOT, NONROOT)
    with open(a.binary, "rb") as f:
        layer.file("usr/bin/netsy", f.read(), 0o755)
    layer.file("usr/share/netsy/version.txt", f"{a.version}{'-' + a.revision if a.revision else ''}\n".encode())

    raw = layer.tar()
    gz = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=gz, mode="wb", compresslevel=9, mtime=0) as g:
        g.write(raw)
    gz = gz.getvalue()

    if os.path.exists(a.out):
        subprocess.run(["rm", "-rf", a.out], check=True)
    os.makedirs(os.path.join(a.out, "blobs", "sha256"))

    labels = {
        "org.opencontainers.image.title": "netsy",
        "org.opencontainers.image.description": "etcd-v3-compatible key-value server whose permanent store is object storage",
        "org.opencontainers.image.version": a.version,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.created": created,
    }
    if a.revision:
        labels["org.opencontainers.image.revision"] = a.revision
    config = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": f"{NONROOT}:{NONROOT}",
            "Entrypoint": ["/usr/bin/netsy"],
            "Env": ["PATH=/usr/bin"],
            "WorkingDir": "/",
            "ExposedPorts": {f"{p}/tcp": {} for p in PORTS.values()},
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
        "history": [{"created": created, "created_by": "packaging/oci.py"}],
    }
    cfg = blob(a.out, dumps(config))
    lay = blob(a.out, gz)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **lay}],
        "annotations": labels,
    }
    man = blob(a.out, dumps(manifest))
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", **man,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": a.version,
                            "io.containerd.image.name": f"{a.repository}:{a.version}"},
        }],
    }
    with open(os.path.join(a.out, "index.json"), "wb") as f:
        f.write(dumps(index))
    with open(os.path.join(a.out, "oci-layout"), "wb") as f:
        f.write(dumps({"imageLayoutVersion": "1.0.0"}))
    print(man["digest"])


if __name__ == "__main__":
    main()
