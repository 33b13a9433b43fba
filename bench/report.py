#!/usr/bin/env python3
"""Turns the JSON lines of bench/run-all.sh into markdown (and, with --doc, docs/benchmarks.md
plus PNG latency plots).

    report.py RESULTS.jsonl META.json                 # tables to stdout, then "N passed, M failed"
    report.py RESULTS.jsonl META.json --doc DOC.md --plots DIR

A cell passes when it ran and its numbers are sane: ops > 0, p50 <= p99 <= p999, errors
(failed requests, lost watch events) at most 1 % of ops, and the server's CPU was measured.
A cell the server refuses by design (kine has no plain Put) is listed as unsupported, not failed.
A bucket-latency cell also needs a p50 at least the delay added to the bucket's responses.
The history phase's "history sizes" line (Maintenance.Status around a Defragment) has no latency;
it passes when every size it reports is positive.
"""
import argparse
import json
import os
import sys

SYSTEM_ORDER = ["netsy-local", "netsy-s3", "netsy-ha3", "etcd-1", "etcd-3", "kine-sqlite", "netsy-go"]
UNSUPPORTED_MARKERS = ("not supported", "unsupported", "Unimplemented", "unimplemented")


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return rows


def is_history(r):
    return str(r.get("workload", "")).startswith("history ")


def is_latency(r):
    return str(r.get("workload", "")).startswith("latency ")


def is_side_phase(r):
    """Rows of the history and bucket-latency phases, kept out of the cross-system tables."""
    return is_history(r) or is_latency(r)


def verdict(r):
    """'pass', 'fail: why', 'unsupported: why' or 'skipped: why'."""
    if r.get("skipped"):
        return "skipped: " + r["skipped"]
    if r.get("failed"):
        return "fail: " + r["failed"]
    if r.get("kind") == "sizes":
        fields = ("db_size_before_defrag", "db_size_after_defrag", "live_bytes")
        bad = [f for f in fields if not (r.get(f) or 0) > 0]
        return "fail: no " + ", ".join(bad) if bad else "pass"
    err = r.get("first_error") or ""
    if r.get("ops", 0) == 0 and any(m in err for m in UNSUPPORTED_MARKERS):
        return "unsupported: " + err
    if r.get("tool_failed"):
        return "fail: " + r["tool_failed"]
    ops = r.get("ops", 0)
    if not ops or not r.get("ops_per_sec"):
        return "fail: no operations"
    p50, p99, p999 = r.get("p50_ms", 0), r.get("p99_ms", 0), r.get("p999_ms", 0)
    if not (0 < p50 <= p99 <= p999):
        return "fail: latency percentiles not ordered (%s, %s, %s)" % (p50, p99, p999)
    if r.get("errors", 0) > 0.01 * ops:
        return "fail: %d errors for %d ops" % (r["errors"], ops)
    if "cpu_us_per_op" not in r:
        return "fail: server CPU not measured"
    # On the synchronous path (quorum 0) a write through the delay proxy waits for at least one
    # delayed bucket response; on the quorum path it waits for a Replica's receipt instead.
    delay = added_delay_ms(r)
    if delay and " q=0 " in " %s " % r.get("system", "") and p50 < delay:
        return "fail: p50 %.2f ms below the bucket's added %d ms (is the delay proxy in the path?)" % (p50, delay)
    return "pass"


def added_delay_ms(r):
    """The delay the bucket-latency phase added ("netsy-ha3 q=0 +100ms" → 100), else 0."""
    if not is_latency(r):
        return 0
    last = str(r.get("system", "")).split()[-1]
    return int(last[1:-2]) if last.startswith("+") and last.endswith("ms") and last[1:-2].isdigit() else 0


def order_key(r):
    s = r.get("system", "")
    return (SYSTEM_ORDER.index(s) if s in SYSTEM_ORDER else 99)


def fmt(v, digits=0):
    if v is None or v == "":
        return ""
    if isinstance(v, (int, float)):
        return f"{v:,.{digits}f}"
    return str(v)


def cell_name(r):
    return f'{r.get("workload")} ×{r.get("clients")}'


def detail_table(rows):
    out = ["| system | workload | clients | ops/s | p50 ms | p99 ms | p99.9 ms | server CPU µs/op | server cores | RSS MiB (peak) | obj-store req/s | errors | verdict |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        v = verdict(r)
        if v.startswith("skipped"):
            continue
        rss = ""
        if "rss_mib" in r:
            rss = f'{r["rss_mib"]:.0f} ({r.get("hwm_mib", 0):.0f})'
        cpu = fmt(r.get("cpu_us_per_op"), 0)
        if "aux_cpu_us_per_op" in r:
            cpu += f' (+{r["aux_cpu_us_per_op"]:.0f} S3)'
        out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r.get("system"), r.get("workload"), r.get("clients"), fmt(r.get("ops_per_sec")),
            fmt(r.get("p50_ms"), 2), fmt(r.get("p99_ms"), 2), fmt(r.get("p999_ms"), 2), cpu,
            fmt(r.get("server_cores"), 2), rss, fmt(r.get("objstore_req_per_sec"), 0),
            r.get("errors", ""), v if v == "pass" else v[:90]))
    return "\n".join(out)


def systems_of(rows):
    present = {r.get("system") for r in rows}
    return [s for s in SYSTEM_ORDER if s in present] + sorted(present - set(SYSTEM_ORDER))


def comparison_table(rows, field="ops_per_sec", digits=0):
    rows = [r for r in rows if not is_side_phase(r)]
    systems = [s for s in systems_of(rows) if any(r.get("system") == s and not r.get("skipped") for r in rows)]
    cells = []
    for r in rows:
        if r.get("skipped"):
            continue
        key = (r.get("workload"), r.get("clients"))
        if key not in cells:
            cells.append(key)
    by = {(r.get("system"), r.get("workload"), r.get("clients")): r for r in rows}
    out = ["| workload | clients | " + " | ".join(systems) + " |",
           "|---|---:|" + "---:|" * len(systems)]
    for w, c in cells:
        vals = []
        for s in systems:
            r = by.get((s, w, c))
            if r is None:
                vals.append("")
            elif verdict(r) == "pass":
                vals.append(fmt(r.get(field), digits))
            else:
                vals.append(verdict(r).split(":")[0])
        out.append(f"| {w} | {c} | " + " | ".join(vals) + " |")
    return "\n".join(out)


def ratios(rows, num, den):
    """Geometric mean and range of num/den throughput over the cells both passed."""
    # Watch throughput is set by the writer's fixed rate, so it is left out (compare its latency).
    by = {(r.get("system"), r.get("workload"), r.get("clients")): r for r in rows
          if verdict(r) == "pass" and r.get("workload") != "watch" and not is_side_phase(r)}
    rs = []
    for (s, w, c), r in by.items():
        if s != num:
            continue
        d = by.get((den, w, c))
        if d and d.get("ops_per_sec"):
            rs.append((r["ops_per_sec"] / d["ops_per_sec"], w, c))
    if not rs:
        return None
    g = 1.0
    for x, _, _ in rs:
        g *= x
    g **= 1.0 / len(rs)
    return g, min(rs), max(rs), len(rs)


def ratio_lines(rows):
    lines = []
    pairs = [("netsy-local", "etcd-1"), ("netsy-s3", "etcd-1"), ("netsy-local", "etcd-3"),
             ("netsy-s3", "etcd-3"), ("netsy-local", "kine-sqlite"), ("netsy-s3", "kine-sqlite"),
             ("netsy-local", "netsy-go"), ("netsy-s3", "netsy-go"), ("netsy-ha3", "etcd-3")]
    for a, b in pairs:
        r = ratios(rows, a, b)
        if r is None:
            lines.append(f"- {a} ÷ {b}: no cells in common")
            continue
        g, lo, hi, n = r
        lines.append(f"- {a} ÷ {b} (throughput): geometric mean **{g:.2f}×** over {n} cells "
                     f"(lowest {lo[0]:.2f}× at {lo[1]} ×{lo[2]}, highest {hi[0]:.2f}× at {hi[1]} ×{hi[2]})")
    return "\n".join(lines)


def plots(rows, outdir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(outdir, exist_ok=True)
    made = []
    groups = {}
    for r in rows:
        if verdict(r) != "pass" or "cdf_ms" not in r:
            continue
        groups.setdefault(r["workload"], []).append(r)
    for workload, rs in sorted(groups.items()):
        clients = sorted({r["clients"] for r in rs})
        fig, axes = plt.subplots(1, len(clients), figsize=(5.2 * len(clients), 4.2), squeeze=False)
        for ax, c in zip(axes[0], clients):
            for r in sorted((r for r in rs if r["clients"] == c), key=order_key):
                pct = r["cdf_pct"]
                ms = [max(v, 1e-3) for v in r["cdf_ms"]]
                ax.plot(ms, pct, marker=".", label=r["system"])
            ax.set_xscale("log")
            ax.set_xlabel("latency (ms, log scale)")
            ax.set_ylabel("percentile")
            ax.set_ylim(0, 100.5)
            label = "watchers" if workload == "watch" else ("client" if c == 1 else "clients")
            ax.set_title(f"{workload}, {c} {label}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"latency-{workload.replace(' ', '-')}.png"
        fig.savefig(os.path.join(outdir, name), dpi=90)
        plt.close(fig)
        made.append((workload, name))
    return made


def latency_table(rows):
    """The bucket-latency phase (issue #15): netsy-ha3 with delayed object-store responses."""
    lat = [r for r in rows if is_latency(r)]
    if not lat:
        return "(not run)"
    etcd3 = {(r.get("workload"), r.get("clients")): r for r in rows
             if r.get("system") == "etcd-3" and verdict(r) == "pass"}
    out = ["| system | workload | clients | ops/s | p50 ms | p99 ms | object-store writes per write "
           "| chunk PUTs per write | etcd-3 ops/s | ÷ etcd-3 |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(lat, key=lambda r: (r.get("system", ""), r.get("clients", 0), r.get("workload", ""))):
        v = verdict(r)
        if v != "pass":
            out.append(f"| {r.get('system')} | {r.get('workload')} | {r.get('clients')} | {v[:60]} "
                       "|  |  |  |  |  |  |")
            continue
        e = etcd3.get((r["workload"].removeprefix("latency "), r.get("clients")))
        ratio = f"{r['ops_per_sec'] / e['ops_per_sec']:.2f}×" if e else ""
        out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r.get("system"), r["workload"].removeprefix("latency "), r.get("clients"),
            fmt(r.get("ops_per_sec")), fmt(r.get("p50_ms"), 2), fmt(r.get("p99_ms"), 2),
            fmt(r.get("objstore_writes_per_op"), 3), fmt(r.get("chunk_puts_per_op"), 3),
            fmt(e.get("ops_per_sec")) if e else "", ratio))
    return "\n".join(out)


LATENCY_PROSE = """Issue #15: what a far-away bucket costs. `bench/run-all.sh` puts `netsy-bench delay-proxy`
in front of seaweedfs, adding 5 ms (S3 Express One Zone-like) or 100 ms (S3 Standard-like) to
every object-store response, and runs a fresh 3-node netsy cell on it (heartbeat 500 ms, load
spread over the three nodes) with `replication.quorum` 0 and -1: the create/update/delete cells
of the first phase at 1, 16 and 100 clients. *Object-store writes per write* counts every write
request (chunks, heartbeats, the writer lock's renewals, and each chunk key deleted after a
snapshot, although S3 deletes them in bulk requests) over the cell; *chunk PUTs per write* only
the chunk objects created. etcd-3 is the first phase's 3-member etcd on loopback, which pays no
bucket. Only the phase: `BENCH_PHASES=latency BENCH_SYSTEMS="netsy-ha3 etcd-3" bench/run-all.sh`
(add `cells` for etcd-3's column); `BENCH_LATENCIES="100"` for one delay.
"""


def history_tables(rows):
    """The history phase (issue #17): reads before/after the churn, then writes and sizes."""
    hist = [r for r in rows if is_history(r)]
    if not hist:
        return "(not run)"
    by = {(r.get("system"), r.get("workload"), r.get("clients")): r for r in hist}
    systems = [s for s in systems_of(hist)]

    def ok(s, w, c):
        r = by.get((s, w, c))
        return r if r is not None and verdict(r) == "pass" else None

    def val(s, w, c, field):
        r = ok(s, w, c)
        return r.get(field) if r else None

    def ratio(a, b, digits=2):
        return f"{a / b:.{digits}f}×" if a and b else ""

    def mib(v):
        return fmt(v / 1048576, 2) if v else ""

    reads = ["| system | list page p50 ms ×1: fresh | churned | churned ÷ fresh | pages/s ×16: fresh | churned "
             "| churned ÷ fresh | server CPU µs/page ×16: fresh | churned | hot-key get p50 ms: fresh | churned "
             "| churned ÷ fresh | churned list p50 ÷ etcd-1 | churned get p50 ÷ etcd-1 |",
             "|---|" + "---:|" * 13]
    for s in systems:
        lf, lc = val(s, "history list fresh", 1, "p50_ms"), val(s, "history list churned", 1, "p50_ms")
        pf, pc = val(s, "history list fresh", 16, "ops_per_sec"), val(s, "history list churned", 16, "ops_per_sec")
        cf, cc = val(s, "history list fresh", 16, "cpu_us_per_op"), val(s, "history list churned", 16, "cpu_us_per_op")
        gf, gc = val(s, "history get fresh", 1, "p50_ms"), val(s, "history get churned", 1, "p50_ms")
        le, ge = val("etcd-1", "history list churned", 1, "p50_ms"), val("etcd-1", "history get churned", 1, "p50_ms")
        reads.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            s, fmt(lf, 2), fmt(lc, 2), ratio(lc, lf), fmt(pf, 1), fmt(pc, 1), ratio(pc, pf),
            fmt(cf, 0), fmt(cc, 0), fmt(gf, 3), fmt(gc, 3), ratio(gc, gf),
            ratio(lc, le) if s != "etcd-1" else "", ratio(gc, ge) if s != "etcd-1" else ""))
    sizes = ["| system | revisions written | churn writes/s ×16 | CPU µs/write | compact s | DB MiB after churn "
             "| after compaction (in use) | after Defragment | live data MiB | file ÷ live | file ÷ etcd-1 | peak RSS MiB |",
             "|---|" + "---:|" * 11]
    etcd_file = val("etcd-1", "history sizes", 1, "db_size_after_defrag")
    for s in systems:
        ck, ch, sz = ok(s, "history churn", 16), ok(s, "history churn hot", 16), ok(s, "history sizes", 1)
        revs = sum((r or {}).get("revisions_written", 0) for r in (ck, ch)) or None
        ops = sum((r or {}).get("ops", 0) for r in (ck, ch))
        secs = sum((r or {}).get("seconds", 0) for r in (ck, ch))
        cpu = sum((r or {}).get("server_cpu_s", 0) for r in (ck, ch))
        file = (sz or {}).get("db_size_after_defrag")
        live = (sz or {}).get("live_bytes")
        after_compact = ""
        if ch and ch.get("db_size_after_compact"):
            after_compact = "%s (%s)" % (mib(ch["db_size_after_compact"]), mib(ch.get("db_size_in_use_after_compact")))
        peak = max((r.get("hwm_mib") or 0 for r in hist if r.get("system") == s), default=0)
        sizes.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            s, fmt(revs), fmt(ops / secs if secs else None), fmt(cpu * 1e6 / ops if ops and cpu else None),
            fmt((ch or {}).get("compact_seconds"), 2), mib((ch or {}).get("db_size_after_churn")),
            after_compact, mib(file), mib(live), ratio(file, live, 1),
            ratio(file, etcd_file) if s != "etcd-1" else "", fmt(peak or None)))
    return "\n".join(reads) + "\n\n" + "\n".join(sizes)


def cold_start_table(cold):
    if not cold:
        return "(not run)"
    out = ["| keys | writes | load writes/s (clients, keys per txn) | bucket MB | backfill s | records/s | MB/s (bucket) | process start → /readyz 200 s | peak RSS MiB |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cold:
        writes = fmt(c.get("writes", c.get("keys")))
        if c.get("compacted"):
            writes += " (compacted)"
        out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            fmt(c.get("keys")), writes,
            "%s (%s, %s)" % (fmt(c.get("load_keys_per_sec")), c.get("load_clients", 64), c.get("load_batch", 1)),
            fmt(c.get("bytes", 0) / 1e6, 1),
            fmt(c.get("backfill_seconds"), 2), fmt(c.get("records_per_sec")),
            fmt(c.get("mb_per_sec"), 1), fmt(c.get("ready_seconds"), 2), fmt(c.get("hwm_mib"), 0)))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("meta")
    ap.add_argument("--doc")
    ap.add_argument("--plots")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a cell failed")
    a = ap.parse_args()
    rows = sorted(load(a.results), key=order_key)
    meta = json.load(open(a.meta))
    cold = load(meta["cold_start_file"]) if meta.get("cold_start_file") and os.path.exists(meta["cold_start_file"]) else []

    verdicts = [verdict(r) for r in rows]
    passed = sum(v == "pass" for v in verdicts)
    failed = sum(v.startswith("fail") for v in verdicts)
    for c in cold:
        if c.get("ready_seconds") and c.get("records_per_sec"):
            passed += 1
        else:
            failed += 1

    print("### All cells\n")
    print(detail_table(rows))
    print("\n### Throughput (ops/s) side by side\n")
    print(comparison_table(rows))
    print("\n### History: churn + compaction\n")
    print(history_tables(rows))
    print("\n### Bucket latency: netsy-ha3 with delayed object-store responses\n")
    print(latency_table(rows))
    print("\n### Cold start (netsy on seaweedfs S3, empty data dir)\n")
    print(cold_start_table(cold))
    print()
    print(ratio_lines(rows))
    print()
    for r, v in zip(rows, verdicts):
        if v.startswith(("fail", "skipped", "unsupported")):
            print(f"- {r.get('system')} {cell_name(r)}: {v}")

    if a.doc:
        made = plots(rows, a.plots) if a.plots else []
        rel = os.path.relpath(a.plots, os.path.dirname(a.doc)) if a.plots else ""
        with open(a.doc, "w") as f:
            f.write(render_doc(meta, rows, cold, made, rel))
        print(f"\nwrote {a.doc}" + (f" and {len(made)} plots in {a.plots}" if made else ""))
    print(f"{passed} passed, {failed} failed")
    if a.strict and failed:
        sys.exit(1)


HISTORY_PROSE = """Issue #17: storage whose cost follows the live data, not the history. On a fresh server
(netsy-local, netsy-s3, etcd-1; its own data directory and bucket prefix), `bench/run-all.sh`:

1. loads 2,000 keys of 1 KiB under `/history/keys/` and one hot key `/history/hot/00000000`
   (Kubernetes' create Txn);
2. measures **fresh**: the keys listed in pages of 500 (`limit` 500, range_end = end of the
   prefix, later pages at the first page's revision; each list checked to return all 2,000 keys)
   with 1 and 16 clients, and linearizable Gets of the hot key (1 client);
3. **churns**: rewrites the 2,000 keys 100 times each (200,000 revisions) and the hot key
   50,000 times (plain Puts, 16 clients), then compacts at the current revision with
   `physical = true`;
4. measures **churned**: the same lists and Gets, now over a compacted history;
5. calls Defragment and reads Maintenance.Status (dbSize, dbSizeInUse) and the live data (key +
   value bytes of every live key, read with a range over the whole keyspace).

The target of issue #17: churned within 1.2× of fresh, and the file after compaction and
Defragment at most 2× the live data plus the retained history (none is retained here: the
compaction is at the last revision). `--smoke` shrinks the phase to 200 keys × 10 rewrites and the
hot key × 500. DB sizes are Maintenance.Status's (netsy: the SQLite file's pages; etcd: bbolt's).

Exact commands:

    bench/run-all.sh                                        # full run; rewrites this page
    BENCH_SYSTEMS="netsy-local etcd-1" bench/run-all.sh --smoke
    BENCH_PHASES=history BENCH_SYSTEMS="netsy-local netsy-s3 etcd-1" bench/run-all.sh   # only this phase
    BENCH_HISTORY_SYSTEMS="" bench/run-all.sh               # everything but this phase

and by hand against any etcd v3 endpoint:

    netsy-bench seed  --endpoint URL --prefix /history/keys/ --keys 2000 --clients 16
    netsy-bench seed  --endpoint URL --prefix /history/hot/ --keys 1
    netsy-bench k8s   --endpoint URL --workload list --clients 16 --existing /history/keys/ --list-keys 2000 --page-size 500
    netsy-bench k8s   --endpoint URL --workload get --clients 1 --existing /history/hot/00000000
    netsy-bench churn --endpoint URL --prefix /history/keys/ --keys 2000 --rewrites 100 --clients 16
    netsy-bench churn --endpoint URL --prefix /history/hot/ --keys 1 --rewrites 50000 --clients 16 --compact
    netsy-bench sizes --endpoint URL --defrag

(add `--pid PID` for the server's CPU and memory). The first table is the reads, the second the
writes and the file sizes; ratios to etcd-1 compare the churned figures.
"""


def render_doc(meta, rows, cold, made, rel):
    skipped = [r for r in rows if r.get("skipped")]
    seen = set()
    skip_lines = []
    for r in skipped:
        if r["system"] in seen:
            continue
        seen.add(r["system"])
        skip_lines.append(f"- **{r['system']}**: {r['skipped']}")
    p = []
    p.append("# Benchmarks: netsy against etcd, kine and the original Netsy\n")
    p.append("Generated by `bench/run-all.sh` (do not edit by hand; rerun it). "
             "**The machine has 2 cores**, shared by the clients, the servers and seaweedfs: treat every figure as ±40 %, "
             "and compare systems only within this page — all of them ran on the same machine, one after the "
             "other, with the same client.\n")
    p.append("## Run\n")
    p.append(f"- Command: `{meta['command']}`")
    p.append(f"- Date (UTC): {meta['date']}")
    p.append(f"- Machine: {meta['nproc']} cores ({meta['cpu']}), {meta['ram']} RAM, {meta['kernel']}")
    p.append(f"- Wall time of the run: {meta.get('wall', '?')}")
    p.append("- Versions:")
    for k, v in meta["versions"].items():
        p.append(f"  - {k}: {v}")
    p.append("")
    p.append("## Systems\n")
    for k, v in meta["systems"].items():
        p.append(f"- **{k}**: {v}")
    if skip_lines:
        p.append("\nNot measured:\n")
        p.extend(skip_lines)
    p.append("")
    p.append("## Workloads\n")
    p.append(meta["workloads"])
    p.append("")
    p.append("## Headline ratios\n")
    p.append("Throughput ratios over every cell both systems passed, watch excluded (its event rate is "
             "set by the writer's fixed 50 creates/s; compare its latency instead):\n")
    p.append(ratio_lines(rows))
    p.append("")
    p.append("## Throughput (ops/s)\n")
    p.append(comparison_table(rows))
    p.append("\n## p99 latency (ms)\n")
    p.append(comparison_table(rows, "p99_ms", 2))
    p.append("\n## Server CPU per operation (µs; netsy-s3 excludes the S3 server's own CPU, shown in the detail table)\n")
    p.append(comparison_table(rows, "cpu_us_per_op", 0))
    p.append("\n## Every cell\n")
    p.append("RSS is the server's resident memory after the cell (peak = VmHWM since start; summed over the "
             "members for etcd-3). Server cores = server CPU seconds ÷ wall seconds. Object-store req/s = "
             "netsy's `netsy_object_storage_writes_total` + `netsy_object_storage_reads_total` per second.\n")
    p.append(detail_table(rows))
    p.append("\n## History: churn + compaction\n")
    p.append(HISTORY_PROSE)
    p.append(history_tables(rows))
    p.append("\n## Bucket latency\n")
    p.append(LATENCY_PROSE)
    p.append(latency_table(rows))
    p.append("\n## Cold start\n")
    p.append("netsy on seaweedfs: load N keys of 1 KiB, stop netsy, delete its data directory, start it again, "
             "and time from process start until `/readyz` answers 200; backfill figures come from netsy's "
             "`loading_stage_completed` log line. The row marked *compacted* wrote every key many times "
             "(one Put, one revision per write) and compacted at the last revision before the restart: "
             "a bucket that saw 1M writes to 10k keys.\n")
    p.append(cold_start_table(cold))
    for c in meta.get("cold_skipped", []):
        p.append(f"\nNot run: {c.get('keys'):,} keys ({c.get('skipped')}).")
    if made:
        p.append("\n## Latency distributions\n")
        for w, name in made:
            p.append(f"### {w}\n\n![{w} latency]({rel}/{name})\n")
    notes = meta.get("notes")
    if notes:
        p.append("\n## Notes\n")
        p.append(notes)
    return "\n".join(p) + "\n"


if __name__ == "__main__":
    main()
