//! Streaming reader: validates the header on open, each record as it is read, and the footer
//! (count, records CRC, first/last revision, nothing trailing) once the records are exhausted.

use std::io::{BufReader, Read};

use prost::Message;

use super::wire::{self, FOOTER_CRC_FIELD, HEADER_CRC_FIELD, RECORD_CRC_FIELD, What};
use super::{
    Error, FileCompression, FileFooter, FileHeader, FileKind, FileSummary, Record,
    ZSTD_WINDOW_LOG_MAX, check_order, kind_name,
};

type ZstdDecoder<R> = zstd::stream::read::Decoder<'static, BufReader<R>>;

enum Source<R: Read> {
    Plain(BufReader<R>),
    Zstd(BufReader<ZstdDecoder<R>>),
    Done,
}

enum State {
    Records,
    Finished(FileSummary),
    Failed,
}

/// Streaming `.netsy` reader over any [`Read`].
///
/// Use it as an iterator of `Result<Record, Error>`: every yielded record has passed its own
/// CRC and ordering checks; the file-level checks run when the records are exhausted, so the
/// iterator ends either with `None` (whole file valid; see [`Reader::summary`]) or with a final
/// `Err`. After an error the iterator yields nothing more.
pub struct Reader<R: Read> {
    source: Source<R>,
    header: FileHeader,
    digest: crc_fast::Digest,
    read: i64,
    first_revision: i64,
    prev: Option<(i64, i64)>,
    state: State,
}

impl<R: Read> Reader<R> {
    /// Reads and validates the header: decodes, checks the expected kind, rejects unknown
    /// compression, verifies the header CRC, and sets up decompression.
    pub fn new(inner: R, expected_kind: Option<FileKind>) -> Result<Self, Error> {
        let mut buffered = BufReader::with_capacity(64 * 1024, inner);
        let what = What::Header;
        let body =
            wire::read_delimited(&mut buffered, what)?.ok_or(Error::UnexpectedEof { what })?;
        let header =
            FileHeader::decode(body.as_slice()).map_err(|source| Error::Decode { what, source })?;
        if let Some(expected) = expected_kind
            && header.kind != expected as i32
        {
            return Err(Error::KindMismatch {
                expected: kind_name(expected),
                found: header.kind,
            });
        }
        let compression = FileCompression::try_from(header.compression)
            .ok()
            .filter(|c| *c != FileCompression::CompressionUnknown)
            .ok_or(Error::UnknownCompression(header.compression))?;
        verify_crc(&body, HEADER_CRC_FIELD, header.crc, what)?;
        if header.records_count < 0 {
            return Err(Error::NegativeCount(header.records_count));
        }
        let source = match compression {
            FileCompression::CompressionZstd => {
                let mut dec = zstd::stream::read::Decoder::with_buffer(buffered)
                    .map_err(|e| Error::io(What::Record(0), e))?
                    .single_frame();
                dec.window_log_max(ZSTD_WINDOW_LOG_MAX)
                    .map_err(|e| Error::io(What::Record(0), e))?;
                Source::Zstd(BufReader::with_capacity(64 * 1024, dec))
            }
            _ => Source::Plain(buffered),
        };
        Ok(Reader {
            source,
            header,
            digest: wire::crc64_digest(),
            read: 0,
            first_revision: 0,
            prev: None,
            state: State::Records,
        })
    }

    /// The validated header.
    pub fn header(&self) -> &FileHeader {
        &self.header
    }

    /// Number of records announced by the header.
    pub fn records_count(&self) -> i64 {
        self.header.records_count
    }

    /// Header and footer once the whole file has been read and validated.
    pub fn summary(&self) -> Option<&FileSummary> {
        match &self.state {
            State::Finished(s) => Some(s),
            _ => None,
        }
    }

    /// Next record, or `Ok(None)` once every record has been read and the footer validated.
    pub fn next_record(&mut self) -> Result<Option<Record>, Error> {
        match self.state {
            State::Records => {}
            State::Finished(_) => return Ok(None),
            State::Failed => return Ok(None),
        }
        let result = if self.read < self.header.records_count {
            self.read_record().map(Some)
        } else {
            self.read_footer().map(|summary| {
                self.state = State::Finished(summary);
                None
            })
        };
        if result.is_err() {
            self.state = State::Failed;
            self.source = Source::Done;
        }
        result
    }

    /// Reads (and discards) any remaining records, validates the footer, and returns the
    /// summary.
    pub fn finish(mut self) -> Result<FileSummary, Error> {
        while self.next_record()?.is_some() {}
        match self.state {
            State::Finished(summary) => Ok(summary),
            // next_record returned Ok(None) only in Finished, or after an error was returned.
            _ => Err(Error::UnexpectedEof { what: What::Footer }),
        }
    }

    fn reader(&mut self, what: What) -> Result<&mut dyn Read, Error> {
        match &mut self.source {
            Source::Plain(r) => Ok(r),
            Source::Zstd(r) => Ok(r),
            Source::Done => Err(Error::UnexpectedEof { what }),
        }
    }

    fn read_record(&mut self) -> Result<Record, Error> {
        let index = self.read;
        let what = What::Record(index);
        let body =
            wire::read_delimited(self.reader(what)?, what)?.ok_or(Error::UnexpectedEof { what })?;
        let record =
            Record::decode(body.as_slice()).map_err(|source| Error::Decode { what, source })?;
        let crcless = verify_crc(&body, RECORD_CRC_FIELD, record.crc, what)?;
        check_order(index, self.prev, &record)?;
        self.digest.update(&crcless);
        if self.prev.is_none() {
            self.first_revision = record.revision;
        }
        self.prev = Some((record.revision, record.sub_revision));
        self.read += 1;
        Ok(record)
    }

    fn read_footer(&mut self) -> Result<FileSummary, Error> {
        let what = What::Footer;
        let body =
            wire::read_delimited(self.reader(what)?, what)?.ok_or(Error::UnexpectedEof { what })?;
        let footer =
            FileFooter::decode(body.as_slice()).map_err(|source| Error::Decode { what, source })?;
        verify_crc(&body, FOOTER_CRC_FIELD, footer.crc, what)?;
        let computed = self.digest.clone().finalize();
        if footer.records_crc != computed {
            return Err(Error::RecordsCrcMismatch {
                stored: footer.records_crc,
                computed,
            });
        }
        if footer.first_revision != self.first_revision {
            return Err(Error::FirstRevisionMismatch {
                footer: footer.first_revision,
                actual: self.first_revision,
            });
        }
        let last = self.prev.map(|(rev, _)| rev).unwrap_or(0);
        if footer.last_revision != last {
            return Err(Error::LastRevisionMismatch {
                footer: footer.last_revision,
                actual: last,
            });
        }
        self.expect_end()?;
        Ok(FileSummary {
            header: self.header.clone(),
            footer,
        })
    }

    /// Everything after the footer must be empty: for zstd, the rest of the frame (which also
    /// makes the decoder verify the frame checksum) and then the raw input.
    fn expect_end(&mut self) -> Result<(), Error> {
        let what = What::Footer;
        let source = std::mem::replace(&mut self.source, Source::Done);
        let mut raw = match source {
            Source::Plain(r) => r,
            Source::Zstd(mut r) => {
                if !at_eof(&mut r).map_err(|e| Error::io(what, e))? {
                    return Err(Error::TrailingData);
                }
                r.into_inner().finish()
            }
            Source::Done => return Ok(()),
        };
        if !at_eof(&mut raw).map_err(|e| Error::io(what, e))? {
            return Err(Error::TrailingData);
        }
        Ok(())
    }
}

impl<R: Read> Iterator for Reader<R> {
    type Item = Result<Record, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

fn at_eof<R: Read>(r: &mut R) -> std::io::Result<bool> {
    let mut b = [0u8; 1];
    loop {
        match r.read(&mut b) {
            Ok(0) => return Ok(true),
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Verifies `stored` against the CRC of `body` with the crc field cut out; returns the
/// crc-less bytes.
fn verify_crc(body: &[u8], field: u32, stored: u64, what: What) -> Result<Vec<u8>, Error> {
    let crcless = wire::strip_field(body, field, what)?;
    let computed = wire::crc64(&crcless);
    if computed != stored {
        return Err(Error::CrcMismatch {
            what,
            stored,
            computed,
        });
    }
    Ok(crcless)
}
