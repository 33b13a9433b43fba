//! A TCP proxy that adds a fixed delay to everything the upstream sends back: put in front of
//! the S3 server, every object-store response (a PUT's, a GET's, a LIST's) arrives `delay`
//! later, as from a bucket that far away. Requests go through at once, and the delay is a
//! delay line, not a queue: a connection's bytes keep their order and a slow response does not
//! hold up another connection's.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Runs until the process is killed; an upstream that cannot be reached ends that connection
/// only.
pub async fn run(listen: &str, upstream: &str, delay: Duration) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    eprintln!(
        "delay-proxy: {} -> {upstream}, +{} ms on every response",
        listener.local_addr()?,
        delay.as_millis()
    );
    loop {
        let (client, _) = listener.accept().await?;
        let upstream = upstream.to_string();
        tokio::spawn(async move {
            if let Ok(server) = TcpStream::connect(&upstream).await {
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                connection(client, server, delay).await;
            }
        });
    }
}

async fn connection(client: TcpStream, server: TcpStream, delay: Duration) {
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let up = async move {
        let _ = tokio::io::copy(&mut client_rd, &mut server_wr).await;
        let _ = server_wr.shutdown().await;
    };
    // Each read from the server is due `delay` after it arrived.
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match server_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    };
    let write = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if client_wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = client_wr.shutdown().await;
    };
    tokio::join!(up, read, write);
}
