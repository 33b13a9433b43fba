//! The `.netsy` data-file codec: every snapshot and chunk in object storage is one such file.
//!
//! Owns: the byte format (framing, CRC-64/XZ rules, zstd), streaming [`Writer`] / [`Reader`]
//! over `std::io`, the async bridge to object storage ([`asyncio`]), and the human-readable
//! [`inspect`] dump. Must never: touch object keys or the network itself (callers hand it a
//! store and a key), talk to SQLite, log record values, panic on input, or buffer a whole file
//! in memory (only [`encode_file`], meant for small chunks, builds bytes in memory).
//!
//! # Format (docs/design/0004-storage.md#data-file-format)
//! A sequence of protobuf messages, each preceded by its length as an unsigned LEB128 varint:
//! `FileHeader` (never compressed); then, raw or as one zstd stream according to
//! `header.compression`, `header.records_count` × `Record` and one `FileFooter`. No magic
//! number, no version. Each message's `crc` is CRC-64/XZ over the message encoded with `crc`
//! absent; `footer.records_crc` is one running CRC over every record's crc-less encoding;
//! `footer.first_revision` / `last_revision` are the first and last records' revisions.
//!
//! Encoding is canonical — fields in field-number order, proto3 defaults omitted — exactly as
//! Go's `proto.Marshal`, so files are interchangeable with the original implementation.
//!
//! Verification computes each CRC over the received bytes with the `crc` field cut out (see
//! [`wire::strip_field`]) instead of re-encoding the decoded message: for canonical input the
//! two are identical, and cutting also keeps fields this build does not know (as Go does).
//!
//! Our extension: `Record.sub_revision` (field 16) numbers the records that share one revision
//! (0, 1, 2, …); single-record revisions carry 0, absent on the wire. Both writer and reader
//! require records in strictly increasing `(revision, sub_revision)` order with
//! `sub_revision` restarting at 0 for each new revision and counting up by one.

pub mod asyncio;
pub mod inspect;
mod reader;
pub(crate) mod wire;
mod writer;

#[cfg(test)]
mod tests;

use std::io;

pub use crate::proto::{FileCompression, FileFooter, FileHeader, FileKind, Record};
pub use inspect::{InspectOptions, ValueMode, inspect, inspect_with};
pub use reader::Reader;
pub use wire::What;
pub use writer::{HeaderParams, Writer, encode_file, encode_file_into, encode_file_with_level};

/// Largest message (header, record or footer) accepted by the reader or produced by the writer.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024 * 1024;

/// zstd level used by the writer (zstd's default). Golden test vectors depend on it.
pub const ZSTD_LEVEL: i32 = 3;

/// zstd level of the files the server writes (snapshots, and chunks large enough to be
/// compressed: batches). A snapshot recompresses the whole state and a batch is written while
/// writes go on, so speed is what matters: level 1 compresses about twice as fast as 3
/// (measured on 31.5 MB of bench records, 0.11 s against 0.23 s) for about the same ratio on
/// such data (23.16 MB against 23.17 MB); on structured values it gives up a few percent of size.
pub const BULK_ZSTD_LEVEL: i32 = 1;

/// zstd window limit for the reader: 2^27 = 128 MiB (zstd's own default decoder limit).
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// Batch chunks whose summed key+value bytes exceed this are zstd-compressed
/// (docs/design/0004-storage.md#data-file-format).
pub const CHUNK_COMPRESSION_THRESHOLD: usize = 4096;

/// Errors from writing or reading a data file. Every corrupt or truncated input maps to one of
/// these; none of them is a panic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading failed (I/O error, or a corrupt zstd stream surfaced by the decoder).
    #[error("read error in {what}: {source}")]
    Io {
        /// Message being read.
        what: What,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// Writing to the sink failed.
    #[error("write error: {0}")]
    Write(#[source] io::Error),
    /// The input ended inside, or instead of, a message.
    #[error("unexpected end of file in {what}")]
    UnexpectedEof {
        /// Message being read.
        what: What,
    },
    /// The length prefix is not a valid varint.
    #[error("invalid length prefix for {what}")]
    BadLength {
        /// Message being read.
        what: What,
    },
    /// The length prefix exceeds [`MAX_MESSAGE_LEN`].
    #[error("{what} claims {len} bytes, more than the {max}-byte limit")]
    MessageTooLarge {
        /// Message being read.
        what: What,
        /// Claimed length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The message bytes are not valid protobuf wire format.
    #[error("{what} is not a valid protobuf message")]
    Malformed {
        /// Message being read.
        what: What,
    },
    /// The message bytes do not decode as the expected message type.
    #[error("failed to decode {what}: {source}")]
    Decode {
        /// Message being read.
        what: What,
        /// Decoder error.
        #[source]
        source: prost::DecodeError,
    },
    /// A message's stored CRC differs from the computed one.
    #[error("{what} CRC mismatch: stored {stored:#018x}, computed {computed:#018x}")]
    CrcMismatch {
        /// Message being read.
        what: What,
        /// CRC stored in the message.
        stored: u64,
        /// CRC computed over the message.
        computed: u64,
    },
    /// `header.compression` is `COMPRESSION_UNKNOWN` or a value this build does not know.
    #[error("unknown compression {0} in header")]
    UnknownCompression(i32),
    /// The file's kind is not the one the caller expected.
    #[error("expected a {expected} file, found kind {found}")]
    KindMismatch {
        /// Kind the caller asked for.
        expected: &'static str,
        /// Kind value in the header.
        found: i32,
    },
    /// `header.records_count` is negative.
    #[error("header records_count {0} is negative")]
    NegativeCount(i64),
    /// The writer was given a different number of records than announced in the header.
    #[error("wrote {written} records but the header announced {announced}")]
    CountMismatch {
        /// Records announced in the header.
        announced: i64,
        /// Records written.
        written: i64,
    },
    /// `footer.records_crc` differs from the CRC over the records read.
    #[error("records CRC mismatch: footer says {stored:#018x}, records give {computed:#018x}")]
    RecordsCrcMismatch {
        /// Value in the footer.
        stored: u64,
        /// Value computed over the records.
        computed: u64,
    },
    /// `footer.first_revision` differs from the first record's revision.
    #[error("footer first_revision {footer} does not match the first record's revision {actual}")]
    FirstRevisionMismatch {
        /// Value in the footer.
        footer: i64,
        /// First record's revision (0 when there are no records).
        actual: i64,
    },
    /// `footer.last_revision` differs from the last record's revision.
    #[error("footer last_revision {footer} does not match the last record's revision {actual}")]
    LastRevisionMismatch {
        /// Value in the footer.
        footer: i64,
        /// Last record's revision (0 when there are no records).
        actual: i64,
    },
    /// A record's revision is not positive.
    #[error("record {index}: revision {revision} is not positive")]
    InvalidRevision {
        /// 0-based record index.
        index: i64,
        /// The revision.
        revision: i64,
    },
    /// Records are not in `(revision, sub_revision)` order (see the module docs).
    #[error(
        "record {index}: revision {revision}.{sub_revision} does not follow {prev_revision}.{prev_sub_revision}"
    )]
    OutOfOrder {
        /// 0-based record index.
        index: i64,
        /// This record's revision.
        revision: i64,
        /// This record's sub-revision.
        sub_revision: i64,
        /// Previous record's revision.
        prev_revision: i64,
        /// Previous record's sub-revision.
        prev_sub_revision: i64,
    },
    /// A message the writer was asked to write exceeds [`MAX_MESSAGE_LEN`].
    #[error("record {index} encodes to {len} bytes, more than the {max}-byte limit")]
    RecordTooLarge {
        /// 0-based record index.
        index: i64,
        /// Encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Bytes follow the footer.
    #[error("trailing data after the footer")]
    TrailingData,
}

impl Error {
    pub(crate) fn io(what: What, source: io::Error) -> Self {
        Error::Io { what, source }
    }
}

/// What a fully validated (or fully written) file contained.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSummary {
    /// The header as stored (with its crc).
    pub header: FileHeader,
    /// The footer as stored (with its crc).
    pub footer: FileFooter,
}

impl FileSummary {
    /// Number of records.
    pub fn records_count(&self) -> i64 {
        self.header.records_count
    }
    /// First record's revision (0 for an empty file).
    pub fn first_revision(&self) -> i64 {
        self.footer.first_revision
    }
    /// Last record's revision (0 for an empty file).
    pub fn last_revision(&self) -> i64 {
        self.footer.last_revision
    }
}

/// Compression for a chunk of `records` (docs/design/0004-storage.md#data-file-format): zstd when
/// the summed key+value bytes exceed [`CHUNK_COMPRESSION_THRESHOLD`], else none. (Snapshots are
/// always zstd.)
pub fn choose_chunk_compression(records: &[Record]) -> FileCompression {
    let total: usize = records.iter().map(|r| r.key.len() + r.value.len()).sum();
    if total > CHUNK_COMPRESSION_THRESHOLD {
        FileCompression::CompressionZstd
    } else {
        FileCompression::CompressionNone
    }
}

/// The current time as a protobuf timestamp (for `created_at` fields).
pub fn now_timestamp() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}

/// Checks one record's position in the `(revision, sub_revision)` order; `prev` is the
/// previous record's `(revision, sub_revision)`.
pub(crate) fn check_order(
    index: i64,
    prev: Option<(i64, i64)>,
    record: &Record,
) -> Result<(), Error> {
    if record.revision <= 0 {
        return Err(Error::InvalidRevision {
            index,
            revision: record.revision,
        });
    }
    let ok = match prev {
        None => record.sub_revision == 0,
        Some((prev_rev, prev_sub)) => {
            (record.revision > prev_rev && record.sub_revision == 0)
                || (record.revision == prev_rev
                    && Some(record.sub_revision) == prev_sub.checked_add(1))
        }
    };
    if ok {
        Ok(())
    } else {
        let (prev_revision, prev_sub_revision) = prev.unwrap_or((0, 0));
        Err(Error::OutOfOrder {
            index,
            revision: record.revision,
            sub_revision: record.sub_revision,
            prev_revision,
            prev_sub_revision,
        })
    }
}

pub(crate) fn kind_name(kind: FileKind) -> &'static str {
    kind.as_str_name()
}
