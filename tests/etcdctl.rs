//! etcdctl 3.5 (ETCDCTL_API=3) end to end against netsy: every command's output is asserted.
//! The expected texts were taken from etcd 3.5.1 itself; `NETSY_TEST_TARGET=etcd35` runs this
//! suite against etcd 3.5.1 to re-check them.
//!
//! Run: `cargo test --release --test etcdctl`
#[allow(dead_code)]
mod support;

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use support::server::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const CMD_DEADLINE: Duration = Duration::from_secs(20);

fn target() -> Kind {
    match std::env::var("NETSY_TEST_TARGET").as_deref() {
        Ok("etcd35") => Kind::Etcd35,
        Ok("etcd34") => Kind::Etcd34,
        _ => Kind::Netsy,
    }
}

struct Ctl {
    server: Server,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ctl {
    async fn start() -> Ctl {
        Ctl {
            server: Server::start(target()).await.expect("start the server"),
        }
    }
    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.server.client_port)
    }
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(etcdctl35_bin());
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .arg("--command-timeout=10s")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }
    /// Runs etcdctl with `args` (and `stdin` if given), bounded by a deadline.
    async fn run_with(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let mut cmd = self.command(args);
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("spawn etcdctl");
        if let Some(input) = stdin {
            let mut si = child.stdin.take().expect("stdin");
            si.write_all(input.as_bytes()).await.expect("write stdin");
            drop(si);
        }
        let out = tokio::time::timeout(CMD_DEADLINE, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("etcdctl {args:?} did not finish within {CMD_DEADLINE:?}"))
            .expect("etcdctl output");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
    async fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, None).await
    }
    /// Runs and asserts success; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args).await;
        assert_eq!(
            o.code, 0,
            "etcdctl {args:?} failed: stdout={:?} stderr={:?}",
            o.stdout, o.stderr
        );
        o.stdout
    }
    async fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-w", "json"]);
        let s = self.ok(&a).await;
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("etcdctl {args:?} -w json: {e}: {s:?}"))
    }
    async fn revision(&self) -> i64 {
        let v = self.json(&["get", "nothing-here"]).await;
        v["header"]["revision"].as_i64().expect("header.revision")
    }
}

fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for ch in b.chunks(3) {
        let n = (ch[0] as u32) << 16
            | (*ch.get(1).unwrap_or(&0) as u32) << 8
            | *ch.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= ch.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_get() {
    let c = Ctl::start().await;
    assert_eq!(c.ok(&["put", "foo", "bar"]).await, "OK\n");
    let r1 = c.revision().await;
    assert_eq!(c.ok(&["put", "foo", "bar2"]).await, "OK\n");
    assert_eq!(c.ok(&["put", "foo2", "baz"]).await, "OK\n");
    assert_eq!(c.ok(&["put", "other", "x"]).await, "OK\n");
    assert_eq!(c.ok(&["get", "foo"]).await, "foo\nbar2\n");
    assert_eq!(c.ok(&["get", "--print-value-only", "foo"]).await, "bar2\n");
    assert_eq!(
        c.ok(&["get", "--prefix", "fo"]).await,
        "foo\nbar2\nfoo2\nbaz\n"
    );
    assert_eq!(
        c.ok(&["get", "--prefix", "fo", "--limit", "1"]).await,
        "foo\nbar2\n"
    );
    assert_eq!(
        c.ok(&["get", "--keys-only", "--prefix", "fo"]).await,
        "foo\n\nfoo2\n\n"
    );
    assert_eq!(
        c.ok(&["get", "--from-key", "foo2"]).await,
        "foo2\nbaz\nother\nx\n"
    );
    assert_eq!(
        c.ok(&["get", &format!("--rev={r1}"), "foo"]).await,
        "foo\nbar\n"
    );
    assert_eq!(c.ok(&["get", "missing"]).await, "");

    let v = c.json(&["get", "foo"]).await;
    assert_eq!(v["count"], 1, "{v}");
    let kv = &v["kvs"][0];
    assert_eq!(kv["key"], b64("foo"));
    assert_eq!(kv["value"], b64("bar2"));
    assert_eq!(kv["create_revision"].as_i64(), Some(r1), "{v}");
    assert_eq!(kv["mod_revision"].as_i64(), Some(r1 + 1), "{v}");
    assert_eq!(kv["version"], 2);
    assert_eq!(v["header"]["revision"].as_i64(), Some(r1 + 3), "{v}");

    let v = c.json(&["get", "--prefix", "fo", "--limit", "1"]).await;
    assert_eq!(v["count"], 2, "{v}");
    assert_eq!(v["more"], true, "{v}");
    assert_eq!(v["kvs"].as_array().map(|a| a.len()), Some(1), "{v}");

    let f = c
        .ok(&["get", "--count-only", "--prefix", "fo", "-w", "fields"])
        .await;
    assert!(f.contains("\"Count\" : 2\n"), "{f}");
    assert!(!f.contains("\"Key\""), "{f}");

    // a compacted or future revision is an error with etcd's message
    let o = c.run(&["get", "--rev=100000", "foo"]).await;
    assert_ne!(o.code, 0);
    assert!(
        o.stderr
            .contains("Error: etcdserver: mvcc: required revision is a future revision"),
        "{}",
        o.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete() {
    let c = Ctl::start().await;
    for (k, v) in [
        ("a", "1"),
        ("p/1", "x"),
        ("p/2", "y"),
        ("p/3", "z"),
        ("q", "2"),
    ] {
        c.ok(&["put", k, v]).await;
    }
    assert_eq!(c.ok(&["del", "a"]).await, "1\n");
    assert_eq!(c.ok(&["del", "a"]).await, "0\n");
    assert_eq!(c.ok(&["del", "--prev-kv", "q"]).await, "1\nq\n2\n");
    assert_eq!(
        c.ok(&["del", "--prefix", "--prev-kv", "p/2"]).await,
        "1\np/2\ny\n"
    );
    assert_eq!(c.ok(&["del", "--prefix", "p/"]).await, "2\n");
    assert_eq!(c.ok(&["get", "--prefix", ""]).await, "");
    let v = c.json(&["del", "--prev-kv", "missing"]).await;
    assert!(v.get("deleted").is_none() || v["deleted"] == 0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_interactive() {
    let c = Ctl::start().await;
    c.ok(&["put", "k", "v"]).await;
    let prompts =
        "compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\n";

    let o = c
        .run_with(
            &["txn", "-i"],
            Some("value(\"k\") = \"v\"\n\nput k v2\nget k\n\nput k failed\n\n"),
        )
        .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout, format!("{prompts}SUCCESS\n\nOK\n\nk\nv2\n"));

    let o = c
        .run_with(
            &["txn", "-i"],
            Some("value(\"k\") = \"zz\"\n\nput k v3\n\nget k\ndel nothing\n\n"),
        )
        .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout, format!("{prompts}FAILURE\n\nk\nv2\n\n0\n"));

    // Kubernetes-style create: mod("new") = "0"
    let o = c
        .run_with(
            &["txn", "-i"],
            Some("mod(\"new\") = \"0\"\nversion(\"k\") > \"1\"\n\nput new created\n\nget new\n\n"),
        )
        .await;
    assert_eq!(
        o.stdout,
        format!("{prompts}SUCCESS\n\nOK\n"),
        "{}",
        o.stderr
    );
    let o = c
        .run_with(
            &["txn", "-i"],
            Some("mod(\"new\") = \"0\"\n\nput new again\n\nget new\n\n"),
        )
        .await;
    assert_eq!(
        o.stdout,
        format!("{prompts}FAILURE\n\nnew\ncreated\n"),
        "{}",
        o.stderr
    );

    // -w json: the whole TxnResponse
    let mut cmd = c.command(&["txn", "-w", "json"]);
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut si = child.stdin.take().expect("stdin");
    si.write_all(b"create(\"k\") > \"0\"\n\ndel k\n\n\n")
        .await
        .expect("stdin");
    drop(si);
    let out = tokio::time::timeout(CMD_DEADLINE, child.wait_with_output())
        .await
        .expect("bounded")
        .expect("output");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["succeeded"], true, "{v}");
    assert_eq!(
        v["responses"][0]["Response"]["response_delete_range"]["deleted"], 1,
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_events() {
    let c = Ctl::start().await;
    let start = c.revision().await + 1;
    // the watch starts at a known revision, so when it connects does not matter
    let mut child = c
        .command(&[
            "watch",
            "--prefix",
            "w/",
            &format!("--rev={start}"),
            "--prev-kv",
        ])
        .spawn()
        .expect("spawn etcdctl watch");
    let stdout = child.stdout.take().expect("stdout");
    c.ok(&["put", "w/a", "1"]).await;
    c.ok(&["put", "x/ignored", "1"]).await;
    c.ok(&["put", "w/a", "2"]).await;
    c.ok(&["del", "w/a"]).await;
    c.ok(&["put", "w/b", "end"]).await;
    let expected = [
        "PUT", "w/a", "1", "PUT", "w/a", "1", "w/a", "2", "DELETE", "w/a", "2", "w/a", "", "PUT",
        "w/b", "end",
    ];
    let mut lines = BufReader::new(stdout).lines();
    let mut got: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while got.len() < expected.len() {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(l))) => got.push(l),
            _ => break,
        }
    }
    let _ = child.kill().await;
    assert_eq!(got, expected, "etcdctl watch output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_json_from_revision() {
    let c = Ctl::start().await;
    c.ok(&["put", "j/a", "1"]).await;
    let rev = c.revision().await;
    c.ok(&["del", "j/a"]).await;
    let mut child = c
        .command(&["watch", "j/a", &format!("--rev={rev}"), "-w", "json"])
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await
        .expect("an event within 15 s");
    let _ = child.kill().await;
    let line = line.expect("read").expect("a line");
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let evs = v["Events"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(evs.len(), 2, "{v}");
    assert_eq!(evs[0]["kv"]["key"], b64("j/a"));
    assert_eq!(evs[0]["kv"]["mod_revision"].as_i64(), Some(rev));
    assert_eq!(evs[1]["type"], 1, "{v}"); // DELETE
    assert_eq!(evs[1]["kv"]["mod_revision"].as_i64(), Some(rev + 1));
}

fn lease_id_of(grant_line: &str) -> Result<String> {
    // "lease 2040a22526fad111 granted with TTL(600s)"
    let mut it = grant_line.split_whitespace();
    if it.next() != Some("lease") {
        bail!("unexpected: {grant_line:?}");
    }
    let id = it.next().context("no id")?.to_string();
    if i64::from_str_radix(&id, 16).is_err() {
        bail!("id not hex: {grant_line:?}");
    }
    Ok(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_commands() {
    let c = Ctl::start().await;
    let g = c.ok(&["lease", "grant", "600"]).await;
    let id = lease_id_of(&g).unwrap();
    assert_eq!(g, format!("lease {id} granted with TTL(600s)\n"));
    assert_eq!(
        c.ok(&["put", &format!("--lease={id}"), "lk", "lv"]).await,
        "OK\n"
    );
    assert_eq!(
        c.ok(&["put", &format!("--lease={id}"), "lk2", "lv"]).await,
        "OK\n"
    );

    let ttl = c.ok(&["lease", "timetolive", &id, "--keys"]).await;
    let ok = [599, 600, 598].iter().any(|r| {
        ttl == format!(
            "lease {id} granted with TTL(600s), remaining({r}s), attached keys([lk lk2])\n"
        )
    });
    assert!(ok, "timetolive: {ttl:?}");
    let ttl = c.ok(&["lease", "timetolive", &id]).await;
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(600s), remaining(")),
        "{ttl:?}"
    );

    assert_eq!(
        c.ok(&["lease", "keep-alive", "--once", &id]).await,
        format!("lease {id} keepalived with TTL(600)\n")
    );

    let id2 = lease_id_of(&c.ok(&["lease", "grant", "100"]).await).unwrap();
    let list = c.ok(&["lease", "list"]).await;
    let mut lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.first(), Some(&"found 2 leases"), "{list:?}");
    lines.remove(0);
    lines.sort();
    let mut want = vec![id.as_str(), id2.as_str()];
    want.sort();
    assert_eq!(lines, want, "lease list");

    assert_eq!(
        c.ok(&["lease", "revoke", &id]).await,
        format!("lease {id} revoked\n")
    );
    assert_eq!(c.ok(&["get", "--prefix", "lk"]).await, "");
    assert_eq!(
        c.ok(&["lease", "timetolive", &id]).await,
        format!("lease {id} already expired\n")
    );
    let o = c.run(&["lease", "revoke", &id]).await;
    assert_ne!(o.code, 0);
    assert!(
        o.stderr
            .contains("Error: failed to revoke lease (etcdserver: requested lease not found)"),
        "{}",
        o.stderr
    );
    let o = c.run(&["put", &format!("--lease={id}"), "lk", "lv"]).await;
    assert!(
        o.stderr
            .contains("Error: etcdserver: requested lease not found"),
        "{}",
        o.stderr
    );
    let o = c.run(&["lease", "keep-alive", "--once", &id]).await;
    assert_ne!(o.code, 0);
    assert!(
        o.stderr.contains("requested lease not found"),
        "{}",
        o.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction() {
    let c = Ctl::start().await;
    c.ok(&["put", "k", "1"]).await;
    let r1 = c.revision().await;
    c.ok(&["put", "k", "2"]).await;
    c.ok(&["put", "k", "3"]).await;
    assert_eq!(
        c.ok(&["compaction", &(r1 + 1).to_string()]).await,
        format!("compacted revision {}\n", r1 + 1)
    );
    let o = c.run(&["get", &format!("--rev={r1}"), "k"]).await;
    assert_ne!(o.code, 0);
    assert!(
        o.stderr
            .contains("Error: etcdserver: mvcc: required revision has been compacted"),
        "{}",
        o.stderr
    );
    assert_eq!(
        c.ok(&["get", &format!("--rev={}", r1 + 1), "k"]).await,
        "k\n2\n"
    );
    assert_eq!(
        c.ok(&["compaction", "--physical", &(r1 + 2).to_string()])
            .await,
        format!("compacted revision {}\n", r1 + 2)
    );
    let o = c.run(&["compaction", &(r1 + 1).to_string()]).await;
    assert_ne!(o.code, 0);
    assert!(
        o.stderr
            .contains("Error: etcdserver: mvcc: required revision has been compacted"),
        "{}",
        o.stderr
    );
    let o = c.run(&["compaction", "999999"]).await;
    assert_ne!(o.code, 0);
    assert!(
        o.stderr
            .contains("Error: etcdserver: mvcc: required revision is a future revision"),
        "{}",
        o.stderr
    );
    assert_eq!(c.ok(&["get", "k"]).await, "k\n3\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_status_and_health() {
    let c = Ctl::start().await;
    c.ok(&["put", "k", "1"]).await;
    let rev = c.revision().await;
    let ep = c.endpoint();

    let v = c.json(&["endpoint", "status"]).await;
    let st = &v[0]["Status"];
    assert_eq!(v[0]["Endpoint"], ep.as_str(), "{v}");
    let version = st["version"].as_str().unwrap_or_default();
    assert!(
        version.split('.').count() == 3 && version.split('.').all(|p| p.parse::<u32>().is_ok()),
        "version {version:?}"
    );
    assert!(st["dbSize"].as_i64().unwrap_or(0) > 0, "{v}");
    assert!(st["leader"].as_u64().unwrap_or(0) != 0, "{v}");
    assert_eq!(st["leader"], st["header"]["member_id"], "{v}");
    assert_eq!(st["header"]["revision"].as_i64(), Some(rev), "{v}");
    assert!(st["raftIndex"].as_u64().unwrap_or(0) > 0, "{v}");

    // simple format: endpoint, id, version, db size, is leader, is learner, term, index, applied, errors
    let s = c.ok(&["endpoint", "status"]).await;
    let f: Vec<&str> = s.trim_end_matches('\n').split(", ").collect();
    assert_eq!(f.len(), 10, "{s:?}");
    assert_eq!(f[0], ep);
    assert_eq!(f[2], version);
    assert_eq!(f[4], "true", "is leader: {s:?}");
    assert_eq!(f[5], "false", "is learner: {s:?}");

    let h = c.ok(&["endpoint", "health"]).await;
    assert!(
        h.starts_with(&format!(
            "{ep} is healthy: successfully committed proposal: took = "
        )),
        "{h:?}"
    );
    let v = c.json(&["endpoint", "health"]).await;
    assert_eq!(v[0]["health"], true, "{v}");
    assert_eq!(v[0]["endpoint"], ep.as_str(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_list_and_defrag() {
    let c = Ctl::start().await;
    let s = c.ok(&["member", "list"]).await;
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 1, "one member: {s:?}");
    let f: Vec<&str> = lines[0].split(", ").collect();
    assert_eq!(f.len(), 6, "{s:?}");
    assert!(
        u64::from_str_radix(f[0], 16).is_ok_and(|id| id != 0),
        "{s:?}"
    );
    assert_eq!(f[1], "started", "{s:?}");
    assert!(!f[2].is_empty(), "name: {s:?}");
    assert!(
        f[4].split(',').all(|u| u.starts_with("http")),
        "client URLs: {s:?}"
    );
    assert_eq!(f[5], "false", "is learner: {s:?}");

    let v = c.json(&["member", "list"]).await;
    let members = v["members"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(members.len(), 1, "{v}");
    assert_eq!(members[0]["ID"], v["header"]["member_id"], "{v}");
    assert_eq!(
        format!("{:x}", members[0]["ID"].as_u64().unwrap_or(0)),
        f[0]
    );

    c.ok(&["put", "k", "v"]).await;
    assert_eq!(
        c.ok(&["defrag"]).await,
        format!("Finished defragmenting etcd member[{}]\n", c.endpoint())
    );
    assert_eq!(c.ok(&["get", "k"]).await, "k\nv\n");
}
