//! `netsy-bench etcd-tool`: runs etcd's own `benchmark` tool (a command line given after
//! `--`), samples the server around it (see `probe`), and turns the tool's summary into one
//! JSON line like the other workloads'.
//!
//! The tool prints (to stdout) `Requests/sec:`, `Total:` in seconds and a latency distribution
//! (`50% in X secs.`, `99% in …`, `99.9% in …`), plus an `Error distribution:` section when
//! requests failed. The tool prints a percentile only when it has enough samples; a missing
//! p99 or p99.9 is reported as the slowest request (`Slowest:`).

use std::time::Duration;

use crate::probe::Targets;

/// The numbers of one benchmark-tool summary.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    pub total_s: f64,
    pub slowest_ms: f64,
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub errors: u64,
    pub first_error: Option<String>,
}

fn secs_after(line: &str, label: &str) -> Option<f64> {
    line.trim()
        .strip_prefix(label)?
        .trim()
        .trim_end_matches('.')
        .trim_end_matches("secs")
        .trim()
        .parse()
        .ok()
}

pub fn parse(out: &str) -> Summary {
    let mut s = Summary::default();
    let mut in_errors = false;
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = secs_after(t, "Total:") {
            s.total_s = v;
        } else if let Some(v) = secs_after(t, "Slowest:") {
            s.slowest_ms = v * 1e3;
        } else if let Some(v) = t.strip_prefix("Requests/sec:") {
            s.requests_per_sec = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = secs_after(t, "50% in") {
            s.p50_ms = v * 1e3;
        } else if let Some(v) = secs_after(t, "99% in") {
            s.p99_ms = v * 1e3;
        } else if let Some(v) = secs_after(t, "99.9% in") {
            s.p999_ms = v * 1e3;
        } else if t.starts_with("Error distribution") {
            in_errors = true;
        } else if in_errors {
            // "[count]\tmessage"
            if let Some((n, msg)) = t.strip_prefix('[').and_then(|r| r.split_once(']')) {
                s.errors += n.trim().parse::<u64>().unwrap_or(0);
                s.first_error.get_or_insert_with(|| msg.trim().to_string());
            } else if !t.is_empty() {
                in_errors = false;
            }
        }
    }
    if s.p99_ms == 0.0 {
        s.p99_ms = s.slowest_ms;
    }
    if s.p999_ms == 0.0 {
        s.p999_ms = s.slowest_ms;
    }
    s
}

pub async fn run(
    system: &str,
    workload: &str,
    clients: usize,
    timeout: Duration,
    targets: &Targets,
    cmd: &[String],
) -> Result<(), String> {
    let (prog, args) = cmd.split_first().ok_or("no command after --")?;
    let probe = targets.start().await;
    let child = tokio::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{prog}: {e}"))?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| format!("{workload}: the benchmark tool did not finish within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let s = parse(&text);
    let ok_ops = (s.requests_per_sec * s.total_s).round() as u64;
    let mut m = serde_json::Map::new();
    m.insert("system".into(), system.into());
    m.insert("workload".into(), format!("etcd-tool {workload}").into());
    m.insert("clients".into(), clients.into());
    m.insert("ops".into(), ok_ops.into());
    m.insert("errors".into(), s.errors.into());
    m.insert("seconds".into(), s.total_s.into());
    m.insert("ops_per_sec".into(), s.requests_per_sec.into());
    m.insert("p50_ms".into(), s.p50_ms.into());
    m.insert("p99_ms".into(), s.p99_ms.into());
    m.insert("p999_ms".into(), s.p999_ms.into());
    if let Some(e) = s.first_error {
        m.insert("first_error".into(), e.into());
    }
    if !out.status.success() || s.total_s == 0.0 {
        let tail: String = text.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
        m.insert(
            "tool_failed".into(),
            format!("{}: {tail}", out.status).into(),
        );
    }
    m.extend(targets.finish(&probe, ok_ops).await);
    println!("{}", serde_json::Value::Object(m));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_summary() {
        let out = "\nSummary:\n  Total:\t2.1865 secs.\n  Slowest:\t0.0140 secs.\n  Requests/sec:\t4573.4055\n\n\
                   Latency distribution:\n  10% in 0.0006 secs.\n  50% in 0.0009 secs.\n  99% in 0.0045 secs.\n  99.9% in 0.0121 secs.\n\
                   Error distribution:\n  [12]\trpc error: code = Unknown desc = put is not supported\n";
        let s = parse(out);
        assert_eq!(s.total_s, 2.1865);
        assert_eq!(s.requests_per_sec, 4573.4055);
        assert!((s.p50_ms - 0.9).abs() < 1e-9);
        assert!((s.p999_ms - 12.1).abs() < 1e-9);
        assert_eq!(s.errors, 12);
        assert_eq!(
            s.first_error.as_deref(),
            Some("rpc error: code = Unknown desc = put is not supported")
        );
    }
}
