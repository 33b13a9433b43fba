//! Async bridge: decode a `.netsy` file arriving as an async byte stream (e.g. a streaming GET)
//! into an async stream of records, without holding the file in memory.
//!
//! Design: the byte stream is pumped by a tokio task into a small bounded channel; a blocking
//! thread (`spawn_blocking`) runs the synchronous [`Reader`] over that channel and sends each
//! validated record into a second bounded channel read by the consumer. Memory is bounded by the
//! two channel capacities plus one message. Dropping the [`RecordStream`] stops both sides.
//!
//! Uploads go the other way round and need no bridge here: chunks are small and encoded in
//! memory with [`super::encode_file`]; snapshots are written with the synchronous [`super::Writer`]
//! to a temporary file in a blocking thread, then streamed from that file by
//! [`crate::objstore::files`].

use std::io::{self, Read};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use super::{Error, FileKind, FileSummary, Reader, Record};

/// Byte chunks buffered between the download and the decoder.
const BYTE_CHANNEL: usize = 8;
/// Decoded records buffered between the decoder and the consumer.
const RECORD_CHANNEL: usize = 256;

enum Msg {
    Record(Record),
    Done(FileSummary),
    Failed(Error),
}

/// Async stream of validated records decoded from a byte stream.
///
/// Yields `Ok(record)` for each record (each already CRC- and order-checked); ends with `None`
/// after the file-level checks passed ([`RecordStream::summary`] is then available) or with a
/// final `Err`.
pub struct RecordStream {
    rx: mpsc::Receiver<Msg>,
    summary: Option<FileSummary>,
    ended: bool,
}

impl RecordStream {
    /// Starts decoding `bytes`. Must be called inside a tokio runtime. Errors of the byte
    /// stream surface as [`Error::Io`] carrying that `io::Error`.
    pub fn spawn<S>(bytes: S, expected_kind: Option<FileKind>) -> Self
    where
        S: Stream<Item = io::Result<Bytes>> + Send + 'static,
    {
        let (byte_tx, byte_rx) = mpsc::channel::<io::Result<Bytes>>(BYTE_CHANNEL);
        let (rec_tx, rec_rx) = mpsc::channel::<Msg>(RECORD_CHANNEL);
        tokio::spawn(async move {
            let mut bytes = std::pin::pin!(bytes);
            while let Some(item) = bytes.next().await {
                let stop = item.is_err();
                if byte_tx.send(item).await.is_err() || stop {
                    break;
                }
            }
        });
        tokio::task::spawn_blocking(move || decode_blocking(byte_rx, expected_kind, rec_tx));
        RecordStream {
            rx: rec_rx,
            summary: None,
            ended: false,
        }
    }

    /// Next record; `Ok(None)` once the whole file has been validated.
    pub async fn next_record(&mut self) -> Result<Option<Record>, Error> {
        futures::future::poll_fn(|cx| self.poll_item(cx))
            .await
            .transpose()
    }

    /// Header and footer, once the stream has ended successfully.
    pub fn summary(&self) -> Option<&FileSummary> {
        self.summary.as_ref()
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Record, Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Msg::Record(r))) => Poll::Ready(Some(Ok(r))),
            Poll::Ready(Some(Msg::Done(summary))) => {
                self.summary = Some(summary);
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Msg::Failed(e))) => {
                self.ended = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                // The decoder thread vanished without a verdict (it panicked or was cancelled).
                self.ended = true;
                Poll::Ready(Some(Err(Error::Io {
                    what: super::What::Footer,
                    source: io::Error::other("decoder task ended unexpectedly"),
                })))
            }
        }
    }
}

impl Stream for RecordStream {
    type Item = Result<Record, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_item(cx)
    }
}

fn decode_blocking(
    byte_rx: mpsc::Receiver<io::Result<Bytes>>,
    expected_kind: Option<FileKind>,
    rec_tx: mpsc::Sender<Msg>,
) {
    let input = ChannelReader {
        rx: byte_rx,
        current: Bytes::new(),
    };
    let mut reader = match Reader::new(input, expected_kind) {
        Ok(r) => r,
        Err(e) => {
            let _ = rec_tx.blocking_send(Msg::Failed(e));
            return;
        }
    };
    loop {
        let msg = match reader.next_record() {
            Ok(Some(record)) => Msg::Record(record),
            Ok(None) => match reader.summary() {
                Some(s) => Msg::Done(s.clone()),
                None => Msg::Failed(Error::UnexpectedEof {
                    what: super::What::Footer,
                }),
            },
            Err(e) => Msg::Failed(e),
        };
        let last = !matches!(msg, Msg::Record(_));
        if rec_tx.blocking_send(msg).is_err() || last {
            return;
        }
    }
}

/// Synchronous `Read` over a channel of byte chunks (blocking; only for blocking threads).
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}
