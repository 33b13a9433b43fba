//! Network partitions on loopback, made by the kernel: every node of a fault test runs with its
//! own group id, and packets a process of group G sends to a port P are dropped by an iptables
//! rule `OUTPUT -o lo -p tcp --dport P -m owner --gid-owner G -j DROP` in a chain of the test's
//! own. Dropped (not refused): open connections hang as they would behind a failed switch, and
//! TCP recovers them when the partition heals if they are still alive. The test process itself
//! (group 0) is never partitioned: clients always reach every node.
//!
//! Needs root and `iptables` (tests/install.sh); the chain is removed when the value is dropped.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Partitions {
    chain: String,
    /// (group, port) pairs currently dropped.
    rules: BTreeSet<(u32, u16)>,
}

fn iptables(args: &[&str]) -> Result<(), String> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Partitions {
    /// Creates this test's chain and hooks it into OUTPUT.
    pub fn new() -> Partitions {
        let chain = format!(
            "NETSY-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        iptables(&["-N", &chain]).expect("create an iptables chain (root and iptables needed)");
        iptables(&["-I", "OUTPUT", "-o", "lo", "-j", &chain]).expect("hook the chain");
        Partitions {
            chain,
            rules: BTreeSet::new(),
        }
    }

    /// Drops what processes of group `gid` send to `port`.
    pub fn drop_traffic(&mut self, gid: u32, port: u16) {
        if self.rules.insert((gid, port)) {
            let (g, p) = (gid.to_string(), port.to_string());
            iptables(&[
                "-A",
                &self.chain,
                "-p",
                "tcp",
                "--dport",
                &p,
                "-m",
                "owner",
                "--gid-owner",
                &g,
                "-j",
                "DROP",
            ])
            .expect("add a drop rule");
        }
    }

    /// Cuts both directions between two groups, given the ports each listens on.
    pub fn cut(&mut self, a: (u32, &[u16]), b: (u32, &[u16])) {
        for &p in b.1 {
            self.drop_traffic(a.0, p);
        }
        for &p in a.1 {
            self.drop_traffic(b.0, p);
        }
    }

    /// Removes every rule.
    pub fn heal(&mut self) {
        if !self.rules.is_empty() {
            iptables(&["-F", &self.chain]).expect("flush the chain");
            self.rules.clear();
        }
    }

    pub fn active(&self) -> usize {
        self.rules.len()
    }
}

impl Drop for Partitions {
    fn drop(&mut self) {
        let _ = iptables(&["-D", "OUTPUT", "-o", "lo", "-j", &self.chain]);
        let _ = iptables(&["-F", &self.chain]);
        let _ = iptables(&["-X", &self.chain]);
    }
}
