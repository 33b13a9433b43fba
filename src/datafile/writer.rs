//! Streaming writer: header first, then records one by one, then the footer on `finish`.

use std::io::{BufWriter, Write};

use prost::Message;

use super::wire::{self, FOOTER_CRC_FIELD};
use super::{
    Error, FileCompression, FileFooter, FileHeader, FileKind, FileSummary, MAX_MESSAGE_LEN, Record,
    ZSTD_LEVEL, check_order,
};

/// What goes into a file's header.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderParams {
    /// Snapshot or chunk.
    pub kind: FileKind,
    /// `None` or `Zstd` (`Unknown` is rejected).
    pub compression: FileCompression,
    /// Number of records that will be written (the header comes first, so it must be known).
    pub records_count: i64,
    /// Writer node id.
    pub leader_id: String,
    /// Write time; pass a fixed value to produce byte-identical files.
    pub created_at: prost_types::Timestamp,
    /// The writer's epoch (0 = none; omitted on the wire).
    pub epoch: u64,
}

enum Sink<W: Write> {
    Plain(BufWriter<W>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<W>>),
}

impl<W: Write> Sink<W> {
    fn as_write(&mut self) -> &mut dyn Write {
        match self {
            Sink::Plain(w) => w,
            Sink::Zstd(w) => w,
        }
    }
}

/// Streaming `.netsy` writer over any [`Write`]. Holds one record's encoding at a time.
///
/// Record `crc` fields given by the caller are ignored and recomputed.
pub struct Writer<W: Write> {
    sink: Sink<W>,
    header: FileHeader,
    digest: crc_fast::Digest,
    written: i64,
    first_revision: i64,
    prev: Option<(i64, i64)>,
}

impl<W: Write> Writer<W> {
    /// Writes the header and prepares the (possibly compressed) record stream, zstd at
    /// [`ZSTD_LEVEL`].
    pub fn new(inner: W, params: HeaderParams) -> Result<Self, Error> {
        Self::with_zstd_level(inner, params, ZSTD_LEVEL)
    }

    /// [`Writer::new`] with another zstd level (ignored for uncompressed files). Every level
    /// produces the same format: readers do not need to know it.
    pub fn with_zstd_level(inner: W, params: HeaderParams, level: i32) -> Result<Self, Error> {
        let compression = params.compression;
        if !matches!(
            compression,
            FileCompression::CompressionNone | FileCompression::CompressionZstd
        ) {
            return Err(Error::UnknownCompression(compression as i32));
        }
        if params.records_count < 0 {
            return Err(Error::NegativeCount(params.records_count));
        }
        let mut header = FileHeader {
            crc: 0,
            schema_version: 0,
            kind: params.kind as i32,
            compression: compression as i32,
            records_count: params.records_count,
            leader_id: params.leader_id,
            created_at: Some(params.created_at),
            epoch: params.epoch,
        };
        let body = wire::encode(&header);
        header.crc = wire::crc64(&body);
        let framed_body = with_leading_crc(header.crc, &body);

        let mut out = BufWriter::with_capacity(64 * 1024, inner);
        wire::write_delimited(&mut out, &framed_body).map_err(Error::Write)?;
        let sink = match compression {
            FileCompression::CompressionZstd => {
                let mut enc =
                    zstd::stream::write::Encoder::new(out, level).map_err(Error::Write)?;
                enc.include_checksum(true).map_err(Error::Write)?;
                Sink::Zstd(enc)
            }
            _ => Sink::Plain(out),
        };
        Ok(Writer {
            sink,
            header,
            digest: wire::crc64_digest(),
            written: 0,
            first_revision: 0,
            prev: None,
        })
    }

    /// The header as written (including its crc).
    pub fn header(&self) -> &FileHeader {
        &self.header
    }

    /// Appends one record. Fails (without writing) if more records than announced are
    /// written, the record is out of order, or it is larger than the reader accepts.
    pub fn write_record(&mut self, record: &Record) -> Result<(), Error> {
        let index = self.written;
        if index >= self.header.records_count {
            return Err(Error::CountMismatch {
                announced: self.header.records_count,
                written: index + 1,
            });
        }
        check_order(index, self.prev, record)?;
        let body = if record.crc == 0 {
            wire::encode(record)
        } else {
            let mut copy = record.clone();
            copy.crc = 0;
            wire::encode(&copy)
        };
        if body.len() + 11 > MAX_MESSAGE_LEN {
            return Err(Error::RecordTooLarge {
                index,
                len: body.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        let crc = wire::crc64(&body);
        let framed_body = with_leading_crc(crc, &body);
        wire::write_delimited(self.sink.as_write(), &framed_body).map_err(Error::Write)?;
        self.digest.update(&body);
        if self.prev.is_none() {
            self.first_revision = record.revision;
        }
        self.prev = Some((record.revision, record.sub_revision));
        self.written += 1;
        Ok(())
    }

    /// Writes the footer, finishes compression, flushes, and returns the inner writer and
    /// what was written. Fails if fewer records than announced were written.
    pub fn finish(self) -> Result<(W, FileSummary), Error> {
        if self.written != self.header.records_count {
            return Err(Error::CountMismatch {
                announced: self.header.records_count,
                written: self.written,
            });
        }
        let mut footer = FileFooter {
            records_crc: self.digest.finalize(),
            first_revision: self.first_revision,
            last_revision: self.prev.map(|(rev, _)| rev).unwrap_or(0),
            crc: 0,
        };
        let mut body = wire::encode(&footer);
        footer.crc = wire::crc64(&body);
        if footer.crc != 0 {
            // crc is field 8, the highest field number: canonically it comes last.
            wire::put_varint(&mut body, u64::from(FOOTER_CRC_FIELD << 3));
            wire::put_varint(&mut body, footer.crc);
        }
        debug_assert_eq!(body, footer.encode_to_vec());
        let mut sink = self.sink;
        wire::write_delimited(sink.as_write(), &body).map_err(Error::Write)?;
        let buffered = match sink {
            Sink::Plain(w) => w,
            Sink::Zstd(enc) => enc.finish().map_err(Error::Write)?,
        };
        let inner = buffered
            .into_inner()
            .map_err(|e| Error::Write(e.into_error()))?;
        Ok((
            inner,
            FileSummary {
                header: self.header,
                footer,
            },
        ))
    }
}

/// `crc` is field 1, the lowest field number: canonically it comes first. A zero crc is
/// omitted, as proto3 omits defaults.
fn with_leading_crc(crc: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 11);
    if crc != 0 {
        wire::put_varint(&mut out, 1 << 3);
        wire::put_varint(&mut out, crc);
    }
    out.extend_from_slice(body);
    out
}

/// Encodes a whole file in memory — for chunks, whose size the chunk buffer bounds.
/// `params.records_count` is overwritten with `records.len()`.
pub fn encode_file(params: HeaderParams, records: &[Record]) -> Result<Vec<u8>, Error> {
    encode_file_with_level(params, records, ZSTD_LEVEL)
}

/// Appends a whole uncompressed-or-zstd file of `records` to `out` (a caller's reusable buffer),
/// at `level` for zstd; `params.records_count` is overwritten with `records.len()`.
pub fn encode_file_into(
    mut params: HeaderParams,
    records: &[Record],
    level: i32,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    params.records_count = records.len() as i64;
    let mut w = Writer::with_zstd_level(out, params, level)?;
    for r in records {
        w.write_record(r)?;
    }
    w.finish()?;
    Ok(())
}

/// [`encode_file`] at another zstd level (see [`Writer::with_zstd_level`]).
pub fn encode_file_with_level(
    params: HeaderParams,
    records: &[Record],
    level: i32,
) -> Result<Vec<u8>, Error> {
    // A batch can be megabytes: sized once, the buffer is not copied at every doubling (pages
    // a compressed file leaves unused are never touched).
    let estimate: usize = records
        .iter()
        .map(|r| r.key.len() + r.value.len() + 64)
        .sum();
    let mut out = Vec::with_capacity(estimate + 256);
    encode_file_into(params, records, level, &mut out)?;
    Ok(out)
}
