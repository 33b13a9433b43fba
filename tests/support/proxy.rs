//! A fault-injecting TCP proxy (tokio) between netsy and its S3 server. It forwards bytes both
//! ways; its mode can be switched at any time:
//!
//! * `Pass` — plain forwarding;
//! * `Refuse(p)` — with probability p, a new connection is closed at once, and a chunk of bytes on
//!   an open connection ends that connection instead of being forwarded;
//! * `Latency(d)` — every chunk of request bytes is held for `d` before it is forwarded;
//! * `DropResponse(p)` — with probability p, a chunk of RESPONSE bytes is thrown away and the
//!   connection closed: the request reached S3 and was applied, the client never hears back;
//! * `SlowResponses(d)` — every chunk of RESPONSE bytes is held for `d`: requests are applied at
//!   once, their answers come late;
//! * `HoldChunkPuts(d)` — a request whose first line is `PUT …/chunks/…` is held for `d` and then
//!   forwarded even if the client has given up meanwhile (a slow store that applies a PUT after
//!   its timeout). Other requests (the writer lock's renewals, reads) pass.
//! * `SwallowChunk` — the first chunk PUT seen in this mode, and every later PUT of the same key
//!   (the writer's retries), is held and never forwarded: that upload never lands, while the
//!   chunks after it and every other request pass.
//!
//! Decisions come from one RNG seeded by the caller (print the seed to replay a run).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Pass,
    Refuse(f64),
    Latency(Duration),
    DropResponse(f64),
    SlowResponses(Duration),
    HoldChunkPuts(Duration),
    SwallowChunk,
}

#[derive(Default, Debug)]
pub struct ProxyStats {
    pub connections: AtomicU64,
    pub refused: AtomicU64,
    pub delayed: AtomicU64,
    pub dropped_responses: AtomicU64,
    pub held_puts: AtomicU64,
}

struct Ctl {
    mode: Mutex<Mode>,
    /// The request line (`PUT /bucket/…/chunks/… HTTP/1.1`) that `SwallowChunk` holds.
    swallowed: Mutex<Option<Vec<u8>>>,
    rng: Mutex<StdRng>,
    stats: ProxyStats,
    upstream: u16,
}

impl Ctl {
    fn chance(&self, p: f64) -> bool {
        self.rng.lock().unwrap().random_bool(p.clamp(0.0, 1.0))
    }
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap()
    }
}

pub struct FaultProxy {
    pub port: u16,
    ctl: Arc<Ctl>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16, seed: u64) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let ctl = Arc::new(Ctl {
            mode: Mutex::new(Mode::Pass),
            swallowed: Mutex::new(None),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            stats: ProxyStats::default(),
            upstream,
        });
        let c = ctl.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                c.stats.connections.fetch_add(1, Ordering::Relaxed);
                if let Mode::Refuse(p) = c.mode()
                    && c.chance(p)
                {
                    c.stats.refused.fetch_add(1, Ordering::Relaxed);
                    drop(sock);
                    continue;
                }
                tokio::spawn(serve(sock, c.clone()));
            }
        });
        FaultProxy { port, ctl, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, mode: Mode) {
        *self.ctl.mode.lock().unwrap() = mode;
        *self.ctl.swallowed.lock().unwrap() = None;
    }

    pub fn stats(&self) -> &ProxyStats {
        &self.ctl.stats
    }
}

#[derive(PartialEq)]
enum End {
    Eof,
    Abort,
}

async fn serve(client: TcpStream, ctl: Arc<Ctl>) {
    let _ = client.set_nodelay(true);
    let Ok(upstream) = TcpStream::connect(("127.0.0.1", ctl.upstream)).await else {
        return;
    };
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let c2s = pump(cr, uw, true, ctl.clone());
    let s2c = pump(ur, cw, false, ctl);
    tokio::pin!(c2s, s2c);
    let (mut c_done, mut s_done) = (false, false);
    while !(c_done && s_done) {
        tokio::select! {
            e = &mut c2s, if !c_done => { if e == End::Abort { return; } c_done = true; }
            e = &mut s2c, if !s_done => { if e == End::Abort { return; } s_done = true; }
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    request: bool,
    ctl: Arc<Ctl>,
) -> End {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => {
                let _ = to.shutdown().await;
                return End::Eof;
            }
            Ok(n) => n,
            Err(_) => return End::Abort,
        };
        match ctl.mode() {
            Mode::Pass => {}
            Mode::Refuse(p) => {
                if ctl.chance(p) {
                    ctl.stats.refused.fetch_add(1, Ordering::Relaxed);
                    return End::Abort;
                }
            }
            Mode::Latency(d) => {
                if request {
                    ctl.stats.delayed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(d).await;
                }
            }
            Mode::DropResponse(p) => {
                if !request && ctl.chance(p) {
                    ctl.stats.dropped_responses.fetch_add(1, Ordering::Relaxed);
                    return End::Abort;
                }
            }
            Mode::SlowResponses(d) => {
                if !request {
                    ctl.stats.delayed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(d).await;
                }
            }
            Mode::HoldChunkPuts(d) => {
                if request && chunk_put(&buf[..n]).is_some() {
                    ctl.stats.held_puts.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(d).await;
                }
            }
            Mode::SwallowChunk => {
                if let Some(line) = chunk_put(&buf[..n]).filter(|_| request) {
                    let hold = {
                        let mut held = ctl.swallowed.lock().unwrap();
                        held.get_or_insert_with(|| line.to_vec()).as_slice() == line
                    };
                    if hold {
                        ctl.stats.held_puts.fetch_add(1, Ordering::Relaxed);
                        // Held until the connection's task ends with the proxy.
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return End::Abort;
        }
    }
}

/// The request line of a chunk PUT at the start of `bytes`.
fn chunk_put(bytes: &[u8]) -> Option<&[u8]> {
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    (line.starts_with(b"PUT ") && line.windows(8).any(|w| w == b"/chunks/")).then_some(line)
}
