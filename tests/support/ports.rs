//! Free loopback ports for the servers the tests start.

use std::net::TcpListener;

/// A loopback port that was free a moment ago (the OS hands out ephemeral ports round-robin, so
/// a port just released is unlikely to be handed out again soon). Start-up retries on a clash.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// Ports below 55000 that are free now (kept bound until all are chosen, so they differ).
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut held = Vec::new();
    while held.len() < n {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
        if l.local_addr().expect("local addr").port() < 55_000 {
            held.push(l);
        }
    }
    held.iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}
