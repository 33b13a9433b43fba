#!/usr/bin/env python3
"""Writes the seed inputs of the `api` and `config` fuzz targets (committed; rerun after a change).

api: byte 0 = method index (see fuzz_targets/api.rs), then one protobuf message (unary) or a
sequence of [len: u8][message] (Watch, LeaseKeepAlive). Messages are encoded by hand below so
that no protobuf package is needed.
"""
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))


def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def f_int(field, n):
    return varint(field << 3) + varint(n)


def f_bytes(field, b):
    if isinstance(b, str):
        b = b.encode()
    return varint(field << 3 | 2) + varint(len(b)) + b


RANGE, PUT, DELETE, TXN, COMPACT, RANGE_STREAM, WATCH, GRANT, REVOKE, KEEPALIVE, TTL, LEASES = range(12)


def rng(key, end=b"", **kw):
    m = f_bytes(1, key) + (f_bytes(2, end) if end else b"")
    for field, name in [(3, "limit"), (4, "revision"), (5, "sort_order"), (6, "sort_target"),
                        (8, "keys_only"), (9, "count_only"), (10, "min_mod_revision")]:
        if name in kw:
            m += f_int(field, kw[name])
    return m


def put(key, value, lease=0, prev_kv=False, ignore_value=False, ignore_lease=False):
    m = f_bytes(1, key) + f_bytes(2, value)
    if lease:
        m += f_int(3, lease)
    if prev_kv:
        m += f_int(4, 1)
    if ignore_value:
        m += f_int(5, 1)
    if ignore_lease:
        m += f_int(6, 1)
    return m


def delete(key, end=b""):
    return f_bytes(1, key) + (f_bytes(2, end) if end else b"")


def op(kind, msg):
    return {"range": f_bytes(1, msg), "put": f_bytes(2, msg), "delete": f_bytes(3, msg),
            "txn": f_bytes(4, msg)}[kind]


def compare_mod(key, rev):
    # result EQUAL (0), target MOD (2), mod_revision = rev
    return f_int(2, 2) + f_bytes(3, key) + f_int(6, rev)


def txn(compare=(), success=(), failure=()):
    return (b"".join(f_bytes(1, c) for c in compare) + b"".join(f_bytes(2, o) for o in success)
            + b"".join(f_bytes(3, o) for o in failure))


def watch_create(key, end=b"", start=0, prev_kv=False, watch_id=0, filters=(), fragment=False):
    c = f_bytes(1, key) + (f_bytes(2, end) if end else b"")
    if start:
        c += f_int(3, start)
    if filters:
        c += f_bytes(5, b"".join(varint(x) for x in filters))
    if prev_kv:
        c += f_int(6, 1)
    if watch_id:
        c += f_int(7, watch_id)
    if fragment:
        c += f_int(8, 1)
    return f_bytes(1, c)


def stream(*msgs):
    out = b""
    for m in msgs:
        assert len(m) < 256
        out += bytes([len(m)]) + m
    return out


API = {
    "range-key": (RANGE, rng("a")),
    "range-prefix": (RANGE, rng("/registry/", "/registry0", limit=10, sort_order=2, sort_target=3)),
    "range-all-count": (RANGE, rng(b"\0", b"\0", count_only=1, revision=2)),
    "range-empty-key": (RANGE, rng(b"", "b")),
    "range-stream": (RANGE_STREAM, rng("a", "z", limit=3)),
    "put": (PUT, put("a", "1", prev_kv=True)),
    "put-ignore": (PUT, put("a", "", ignore_value=True, ignore_lease=True)),
    "put-lease": (PUT, put("b", "2", lease=7)),
    "delete": (DELETE, delete("a", "c")),
    "txn-cas": (TXN, txn([compare_mod("a", 0)], [op("put", put("a", "x"))], [op("range", rng("a"))])),
    "txn-nested": (TXN, txn([], [op("txn", txn([], [op("put", put("k", "v"))], [op("put", put("k", "w"))])),
                                 op("delete", delete("x", "y"))])),
    "txn-dup": (TXN, txn([], [op("put", put("a", "1")), op("put", put("a", "2"))])),
    "compact": (COMPACT, f_int(1, 3) + f_int(2, 1)),
    "watch": (WATCH, stream(watch_create("a", "z", start=1, prev_kv=True),
                            watch_create("b", watch_id=5, filters=[0, 1]),
                            f_bytes(2, f_int(1, 5)), f_bytes(3, b""))),
    "watch-dup-id": (WATCH, stream(watch_create("a", watch_id=3), watch_create("a", watch_id=3))),
    "watch-empty-range": (WATCH, stream(watch_create("z", "a"))),
    "grant": (GRANT, f_int(1, 60) + f_int(2, 7)),
    "grant-huge-ttl": (GRANT, f_int(1, 9_000_000_001)),
    "revoke": (REVOKE, f_int(1, 7)),
    "keepalive": (KEEPALIVE, stream(f_int(1, 7), f_int(1, 8))),
    "ttl": (TTL, f_int(1, 7) + f_int(2, 1)),
    "leases": (LEASES, b""),
}

CONFIG = {
    "minimal.jsonc": '{"cluster_id":"a","storage":{"bucket_name":"b"},"replication":{"quorum":0}}',
    "local.jsonc": '{"cluster_id":"dev","storage":{"provider":"local","path":"/tmp/x"},"replication":{"quorum":0}}',
    "full.jsonc": """{
  // every key
  "cluster_id": "dev-cluster",
  "storage": { "provider": "s3", "bucket_name": "netsy-dev", "key_prefix": "p/", "class": "STANDARD",
               "encryption": "customer-managed", "kms_key_id": "k", },
  "heartbeat_interval": "1s",
  "elector": { "degradation_count": 2, "deregistration_timeout": "3m", "primary_prior_timeout": "5s" },
  "replication": { "quorum": -1, "degradation_count": 2,
                   "chunk_buffer": { "threshold_size_mb": 4, "threshold_age_minutes": 1 } },
  /* snapshots */
  "snapshot": { "threshold_records": 10000, "threshold_size_mb": 10000, "threshold_age_minutes": 0,
                "cleanup_batch_size": 250, "cleanup_batch_interval": "1s", "cleanup_strategy": "auto" },
  "compaction_interval": "5m",
}""",
    "nanos.jsonc": '{"cluster_id":"a","storage":{"bucket_name":"b"},"heartbeat_interval":500000000,"replication":{"quorum":0},"compaction_interval":"1h30m"}',
    "unknown.jsonc": "{'cluster_id':'a',storage:{bucket_name:'b',colour:1},replication:{quorum:0},extra:[1,2,{}]}",
    "bad.jsonc": '{"cluster_id": "a", "storage": ',
}


def main():
    for sub, items in (("api", API), ("config", CONFIG)):
        d = os.path.join(HERE, sub)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for name, item in items.items():
            data = bytes([item[0]]) + item[1] if sub == "api" else item.encode()
            with open(os.path.join(d, name if sub == "config" else name + ".bin"), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
