//! Low-level wire helpers: the CRC, LEB128 length prefixes, bounded message reads, and the
//! "encoding with the crc field absent" computation.

use std::io::{self, Read, Write};

use crc_fast::{CrcAlgorithm, Digest};
use prost::Message;

use super::{Error, MAX_MESSAGE_LEN};

/// CRC-64/XZ (Go's `hash/crc64` with the ECMA table): check value for "123456789" is
/// 0x995DC9BBDF1939FA. `crc-fast` folds with carry-less multiplication (PCLMULQDQ / PMULL)
/// where the CPU has it: every record's bytes pass through it twice per file written (its own
/// CRC and the file's running one), for the write-ahead log, chunks and snapshots alike.
pub(crate) fn crc64(data: &[u8]) -> u64 {
    crc_fast::checksum(CrcAlgorithm::Crc64Xz, data)
}

/// A running CRC-64/XZ (see [`crc64`]).
pub(crate) fn crc64_digest() -> Digest {
    Digest::new(CrcAlgorithm::Crc64Xz)
}

/// Field number of `crc` in `FileHeader` and `Record`.
pub(crate) const HEADER_CRC_FIELD: u32 = 1;
/// Field number of `crc` in `Record`.
pub(crate) const RECORD_CRC_FIELD: u32 = 1;
/// Field number of `crc` in `FileFooter`.
pub(crate) const FOOTER_CRC_FIELD: u32 = 8;

/// Which message is being read, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    Header,
    Record(i64),
    Footer,
}

impl std::fmt::Display for What {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            What::Header => f.write_str("header"),
            What::Record(i) => write!(f, "record {i}"),
            What::Footer => f.write_str("footer"),
        }
    }
}

/// Appends `value` as an unsigned LEB128 varint.
pub(crate) fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// Writes `msg` with its LEB128 length prefix in a single `write_all`.
pub(crate) fn write_delimited<W: Write + ?Sized>(w: &mut W, body: &[u8]) -> io::Result<()> {
    let mut framed = Vec::with_capacity(body.len() + 10);
    put_varint(&mut framed, body.len() as u64);
    framed.extend_from_slice(body);
    w.write_all(&framed)
}

fn read_byte<R: Read + ?Sized>(r: &mut R) -> io::Result<Option<u8>> {
    let mut b = [0u8; 1];
    loop {
        match r.read(&mut b) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(b[0])),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Reads one length-delimited message body. Returns `Ok(None)` on a clean end of input before
/// the first length byte. The length is capped at [`MAX_MESSAGE_LEN`] and the buffer grows
/// only as bytes actually arrive, so a lying length prefix cannot force a large allocation.
pub(crate) fn read_delimited<R: Read + ?Sized>(
    r: &mut R,
    what: What,
) -> Result<Option<Vec<u8>>, Error> {
    let mut len: u64 = 0;
    let mut shift = 0u32;
    let mut first = true;
    loop {
        let byte = match read_byte(r).map_err(|e| Error::io(what, e))? {
            Some(b) => b,
            None if first => return Ok(None),
            None => return Err(Error::UnexpectedEof { what }),
        };
        first = false;
        if shift == 63 && byte > 1 {
            return Err(Error::BadLength { what });
        }
        len |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return Err(Error::BadLength { what });
        }
    }
    if len > MAX_MESSAGE_LEN as u64 {
        return Err(Error::MessageTooLarge {
            what,
            len,
            max: MAX_MESSAGE_LEN,
        });
    }
    let len = len as usize;
    let mut body = Vec::with_capacity(len.min(64 * 1024));
    let got = r
        .take(len as u64)
        .read_to_end(&mut body)
        .map_err(|e| Error::io(what, e))?;
    if got != len {
        return Err(Error::UnexpectedEof { what });
    }
    Ok(Some(body))
}

/// Encodes a message canonically (prost: fields in field-number order, proto3 defaults omitted).
pub(crate) fn encode<M: Message>(msg: &M) -> Vec<u8> {
    msg.encode_to_vec()
}

/// Returns the message's bytes with every occurrence of top-level field `crc_field` removed,
/// keeping all other fields (known or not) in their original order. For a canonically encoded
/// message this equals the encoding of the message with `crc = 0`, which is what the CRC covers;
/// unlike re-encoding a decoded message it also preserves fields this build does not know.
pub(crate) fn strip_field(body: &[u8], crc_field: u32, what: What) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(body.len());
    let mut pos = 0usize;
    while pos < body.len() {
        let start = pos;
        let key = take_varint(body, &mut pos).ok_or(Error::Malformed { what })?;
        let field = key >> 3;
        let wire_type = key & 7;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(Error::Malformed { what });
        }
        match wire_type {
            0 => {
                take_varint(body, &mut pos).ok_or(Error::Malformed { what })?;
            }
            1 => pos = advance(body, pos, 8).ok_or(Error::Malformed { what })?,
            2 => {
                let len = take_varint(body, &mut pos).ok_or(Error::Malformed { what })?;
                let len = usize::try_from(len).map_err(|_| Error::Malformed { what })?;
                pos = advance(body, pos, len).ok_or(Error::Malformed { what })?;
            }
            5 => pos = advance(body, pos, 4).ok_or(Error::Malformed { what })?,
            _ => return Err(Error::Malformed { what }),
        }
        if field != u64::from(crc_field) {
            out.extend_from_slice(&body[start..pos]);
        }
    }
    Ok(out)
}

fn advance(body: &[u8], pos: usize, n: usize) -> Option<usize> {
    let end = pos.checked_add(n)?;
    (end <= body.len()).then_some(end)
}

fn take_varint(body: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let b = *body.get(*pos)?;
        *pos += 1;
        if i == 9 && b > 1 {
            return None;
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_xz_check_value() {
        assert_eq!(crc64(b"123456789"), 0x995D_C9BB_DF19_39FA);
    }

    #[test]
    fn varint_roundtrip() {
        for v in [0u64, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            let mut pos = 0;
            assert_eq!(take_varint(&buf, &mut pos), Some(v));
            assert_eq!(pos, buf.len());
        }
    }

    #[test]
    fn read_delimited_rejects_huge_length_without_allocating() {
        let mut framed = Vec::new();
        put_varint(&mut framed, u64::MAX / 2);
        let err = read_delimited(&mut &framed[..], What::Header).unwrap_err();
        assert!(matches!(err, Error::MessageTooLarge { .. }), "{err}");
        // An 11-byte varint is malformed.
        let bad = [0xffu8; 11];
        let err = read_delimited(&mut &bad[..], What::Header).unwrap_err();
        assert!(matches!(err, Error::BadLength { .. }), "{err}");
    }
}
