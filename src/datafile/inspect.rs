//! The report of `netsy datafile inspect`: validates a `.netsy` file and prints its header,
//! every record and its checksums in a human-readable, injection-safe form.
//!
//! Keys are printed escaped (printable ASCII as is, everything else as `\xNN`). Values are
//! truncated by default, and values under `/registry/secrets/` are redacted unless
//! [`ValueMode::Full`] is asked for, because Kubernetes stores Secrets in etcd.
//!
//! Local paths are read here; objects are streamed (never downloaded whole) from a store the
//! caller opened ([`inspect_object`]; the command line opens URLs in `cli`).

use std::io::{self, BufReader, Read, Write};

use bytes::{Buf, Bytes};

use super::{Error, FileKind, FileSummary, Reader, Record};

/// How record values are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueMode {
    /// Only the length.
    Hidden,
    /// At most this many leading bytes (escaped); Secrets redacted.
    Truncated(usize),
    /// Whole values, Secrets included.
    Full,
}

/// Options for [`inspect_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectOptions {
    /// How values are shown (default: truncated to 32 bytes).
    pub values: ValueMode,
    /// Fail unless the file is of this kind.
    pub expected_kind: Option<FileKind>,
}

impl Default for InspectOptions {
    fn default() -> Self {
        InspectOptions {
            values: ValueMode::Truncated(32),
            expected_kind: None,
        }
    }
}

/// Why inspecting failed.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The local file could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The path.
        path: String,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// The file is invalid (corrupt, truncated, wrong kind) or could not be read.
    #[error("invalid data file: {0}")]
    Invalid(#[from] Error),
    /// Writing the report failed.
    #[error("cannot write output: {0}")]
    Output(#[source] io::Error),
}

/// [`inspect_with`] with default options.
pub fn inspect(path: &str, out: &mut impl Write) -> Result<FileSummary, InspectError> {
    inspect_with(path, &InspectOptions::default(), out)
}

/// Validates the local file at `path` (or a `file://` URL), printing it to `out` as it goes. On
/// a validation error the report ends with an `INVALID:` line and the error is returned.
pub fn inspect_with(
    path: &str,
    opts: &InspectOptions,
    out: &mut impl Write,
) -> Result<FileSummary, InspectError> {
    print_name(path, out)?;
    let path = path.strip_prefix("file://").unwrap_or(path);
    let file = std::fs::File::open(path).map_err(|source| InspectError::Open {
        path: path.to_string(),
        source,
    })?;
    inspect_reader(BufReader::new(file), opts, out)
}

/// The report's first line: which file or object it is about.
pub fn print_name(name: &str, out: &mut impl Write) -> Result<(), InspectError> {
    writeln!(out, "file: {}", escape(name.as_bytes())).map_err(InspectError::Output)
}

/// Validates and prints the data file at `location` in `store`, streaming it (a helper thread
/// with its own runtime performs the GET, so this blocking function may be called from any
/// thread, including a tokio blocking task; not from an async task itself).
pub fn inspect_object(
    store: std::sync::Arc<dyn object_store::ObjectStore>,
    location: object_store::path::Path,
    opts: &InspectOptions,
    out: &mut impl Write,
) -> Result<FileSummary, InspectError> {
    inspect_reader(remote_reader(store, location), opts, out)
}

/// Validates and prints a data file read from `input`.
pub fn inspect_reader<R: Read>(
    input: R,
    opts: &InspectOptions,
    out: &mut impl Write,
) -> Result<FileSummary, InspectError> {
    match inspect_inner(input, opts, out) {
        Ok(summary) => {
            writeln!(out, "valid: yes").map_err(InspectError::Output)?;
            Ok(summary)
        }
        Err(InspectError::Invalid(e)) => {
            writeln!(out, "INVALID: {e}").map_err(InspectError::Output)?;
            Err(InspectError::Invalid(e))
        }
        Err(e) => Err(e),
    }
}

fn inspect_inner<R: Read>(
    input: R,
    opts: &InspectOptions,
    out: &mut impl Write,
) -> Result<FileSummary, InspectError> {
    let o = InspectError::Output;
    let mut reader = Reader::new(input, opts.expected_kind)?;
    let h = reader.header().clone();
    writeln!(
        out,
        "header: kind={} compression={} records_count={} leader_id=\"{}\" created_at={} schema_version={} crc={:#018x} (ok)",
        enum_name(FileKind::try_from(h.kind).map(|k| k.as_str_name()), h.kind),
        enum_name(super::FileCompression::try_from(h.compression).map(|c| c.as_str_name()), h.compression),
        h.records_count,
        escape(h.leader_id.as_bytes()),
        fmt_ts(h.created_at.as_ref()),
        h.schema_version,
        h.crc,
    )
    .map_err(o)?;
    let mut index = 0i64;
    while let Some(record) = reader.next_record()? {
        print_record(out, index, &record, opts.values).map_err(o)?;
        index += 1;
    }
    let summary = reader.summary().cloned().ok_or(Error::UnexpectedEof {
        what: super::What::Footer,
    })?;
    let f = &summary.footer;
    writeln!(
        out,
        "footer: first_revision={} last_revision={} records_crc={:#018x} crc={:#018x} (ok)",
        f.first_revision, f.last_revision, f.records_crc, f.crc
    )
    .map_err(o)?;
    writeln!(
        out,
        "checksums: header crc ok, {index} record crcs ok, footer crc ok, records_crc ok, count ok, first/last revision ok"
    )
    .map_err(o)?;
    Ok(summary)
}

fn print_record(out: &mut impl Write, index: i64, r: &Record, mode: ValueMode) -> io::Result<()> {
    let revision = if r.sub_revision == 0 {
        r.revision.to_string()
    } else {
        format!("{}.{}", r.revision, r.sub_revision)
    };
    writeln!(
        out,
        "record {index}: revision={revision} key=\"{}\" created={} deleted={} create_revision={} prev_revision={} version={} lease={} dek={} value={} created_at={} compacted_at={} replicated_at={} leader_id=\"{}\" crc={:#018x}",
        escape(&r.key),
        r.created,
        r.deleted,
        r.create_revision,
        r.prev_revision,
        r.version,
        r.lease,
        r.dek,
        show_value(&r.key, &r.value, mode),
        fmt_ts(r.created_at.as_ref()),
        fmt_ts(r.compacted_at.as_ref()),
        fmt_ts(r.replicated_at.as_ref()),
        escape(r.leader_id.as_bytes()),
        r.crc,
    )
}

fn enum_name(name: Result<&'static str, prost::UnknownEnumValue>, raw: i32) -> String {
    match name {
        Ok(n) => n.to_string(),
        Err(_) => format!("UNKNOWN({raw})"),
    }
}

fn show_value(key: &[u8], value: &[u8], mode: ValueMode) -> String {
    let len = value.len();
    match mode {
        ValueMode::Full => format!("{len}B:\"{}\"", escape(value)),
        ValueMode::Hidden => format!("{len}B"),
        ValueMode::Truncated(_) if key.starts_with(b"/registry/secrets/") && len > 0 => {
            format!("{len}B:<redacted Secret>")
        }
        ValueMode::Truncated(max) if len > max => {
            format!("{len}B:\"{}\"…", escape(&value[..max]))
        }
        ValueMode::Truncated(_) => format!("{len}B:\"{}\"", escape(value)),
    }
}

/// Escapes bytes for a one-line, quote-delimited display: printable ASCII stays, `"` and `\`
/// are backslash-escaped, everything else becomes `\xNN`.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

/// Formats a timestamp as RFC 3339 UTC with nanoseconds, or `-` when absent.
pub fn fmt_ts(ts: Option<&prost_types::Timestamp>) -> String {
    let Some(ts) = ts else { return "-".to_string() };
    let days = ts.seconds.div_euclid(86_400);
    let secs = ts.seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    if !(0..1_000_000_000).contains(&ts.nanos) || !(0..=9999).contains(&y) {
        return format!("{}s+{}ns", ts.seconds, ts.nanos);
    }
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        ts.nanos
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Streams a remote object into a synchronous reader: a helper thread with its own runtime
/// performs the GET and hands chunks over a bounded channel, so this works whether or not the
/// caller is inside a tokio runtime.
fn remote_reader(
    store: std::sync::Arc<dyn object_store::ObjectStore>,
    location: object_store::path::Path,
) -> impl Read {
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Bytes>>(8);
    std::thread::spawn(move || {
        use futures::StreamExt;
        use object_store::ObjectStoreExt;
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        runtime.block_on(async move {
            match store.get(&location).await {
                Ok(result) => {
                    let mut stream = result.into_stream();
                    while let Some(item) = stream.next().await {
                        let failed = item.is_err();
                        if tx.send(item.map_err(io::Error::other)).is_err() || failed {
                            break;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(io::Error::other(e)));
                }
            }
        });
    });
    StdChannelReader {
        rx,
        current: Bytes::new(),
    }
}

struct StdChannelReader {
    rx: std::sync::mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for StdChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => self.current = chunk,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_as_rfc3339() {
        let ts = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        };
        assert_eq!(fmt_ts(Some(&ts)), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(
            fmt_ts(Some(&prost_types::Timestamp {
                seconds: 0,
                nanos: 0
            })),
            "1970-01-01T00:00:00.000000000Z"
        );
        assert_eq!(fmt_ts(None), "-");
        assert_eq!(
            fmt_ts(Some(&prost_types::Timestamp {
                seconds: 0,
                nanos: -1
            })),
            "0s+-1ns"
        );
    }

    #[test]
    fn escaping_is_one_line_and_unambiguous() {
        assert_eq!(escape(b"a\"b\\c\n\x00\xff"), "a\\\"b\\\\c\\x0a\\x00\\xff");
    }

    #[test]
    fn secrets_are_redacted_unless_full() {
        let k = b"/registry/secrets/default/token";
        assert_eq!(
            show_value(k, b"hunter2", ValueMode::Truncated(32)),
            "7B:<redacted Secret>"
        );
        assert_eq!(show_value(k, b"hunter2", ValueMode::Full), "7B:\"hunter2\"");
        assert_eq!(
            show_value(b"/registry/pods/x", b"abcdef", ValueMode::Truncated(3)),
            "6B:\"abc\"…"
        );
        assert_eq!(show_value(b"/k", b"abcdef", ValueMode::Hidden), "6B");
    }
}
