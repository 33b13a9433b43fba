//! Codec tests: committed test vectors (read back, reproduced bit for bit), canonical encoding,
//! corruption (flips, truncation at every offset, wrong counts), and the async bridge.
//!
//! Regenerate the vectors with `NETSY_REGENERATE_VECTORS=1 cargo test --lib datafile` (only
//! when the format or the fixtures change on purpose; the golden test then shows the diff).

use std::io::Read;
use std::path::PathBuf;

use prost::Message;
use prost_types::Timestamp;

use super::wire::{self, What};
use super::*;

const T0: i64 = 1_750_000_000;

fn ts(offset: i64, nanos: i32) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: T0 + offset,
        nanos,
    })
}

fn header_params(kind: FileKind, compression: FileCompression, count: usize) -> HeaderParams {
    HeaderParams {
        kind,
        compression,
        records_count: count as i64,
        leader_id: "node-a".to_string(),
        epoch: 0,
        created_at: Timestamp {
            seconds: T0 + 1000,
            nanos: 123_456_789,
        },
    }
}

fn put(rev: i64, key: &[u8], value: &[u8], create_rev: i64, prev: i64, version: i64) -> Record {
    Record {
        revision: rev,
        key: key.to_vec(),
        created: prev == 0,
        create_revision: create_rev,
        prev_revision: prev,
        version,
        value: value.to_vec(),
        created_at: ts(rev, 1000 * rev as i32),
        leader_id: "node-a".to_string(),
        ..Default::default()
    }
}

fn tombstone(rev: i64, sub: i64, key: &[u8], create_rev: i64, prev: i64) -> Record {
    Record {
        revision: rev,
        sub_revision: sub,
        key: key.to_vec(),
        deleted: true,
        create_revision: create_rev,
        prev_revision: prev,
        created_at: ts(rev, 0),
        leader_id: "node-a".to_string(),
        ..Default::default()
    }
}

/// Two single-record revisions, uncompressed (a sync-path style chunk).
fn chunk_small() -> (HeaderParams, Vec<Record>) {
    let records = vec![
        put(
            5,
            b"/registry/configmaps/default/a",
            b"{\"data\":1}",
            5,
            0,
            1,
        ),
        put(
            6,
            b"/registry/configmaps/default/a",
            b"{\"data\":2}",
            5,
            5,
            2,
        ),
    ];
    (
        header_params(
            FileKind::KindChunk,
            FileCompression::CompressionNone,
            records.len(),
        ),
        records,
    )
}

/// A batch chunk over 4 KiB (so zstd), with a multi-record revision (a 3-key DeleteRange).
fn chunk_batch() -> (HeaderParams, Vec<Record>) {
    let mut records = Vec::new();
    for i in 0..3i64 {
        let value: Vec<u8> = (0..1500).map(|j| b'a' + ((i * 7 + j) % 26) as u8).collect();
        records.push(put(
            7 + i,
            format!("/registry/pods/ns/p{i}").as_bytes(),
            &value,
            7 + i,
            0,
            1,
        ));
    }
    for sub in 0..3i64 {
        records.push(tombstone(
            10,
            sub,
            format!("/registry/pods/ns/p{sub}").as_bytes(),
            7 + sub,
            7 + sub,
        ));
    }
    let mut leased = put(11, b"/registry/events/ns/e1", b"event", 11, 0, 1);
    leased.lease = 3600;
    records.push(leased);
    let (h, r) = (
        header_params(
            FileKind::KindChunk,
            choose_chunk_compression(&records),
            records.len(),
        ),
        records,
    );
    assert_eq!(h.compression, FileCompression::CompressionZstd);
    (h, r)
}

/// A snapshot with tombstones, compacted rows, binary keys and a lease: every row ≤ 8.
fn snapshot() -> (HeaderParams, Vec<Record>) {
    let mut r1 = put(1, b"_netsy", b"", 1, 0, 1);
    r1.value = Vec::new();
    let mut r2 = put(2, b"/k/a", b"", 2, 0, 1); // compacted: superseded by 3
    r2.compacted_at = ts(100, 5);
    let r3 = put(3, b"/k/a", b"a-3", 2, 2, 2);
    let mut r4 = put(4, b"/k/\x00\xffbin", b"", 4, 0, 1); // compacted: deleted at 5
    r4.compacted_at = ts(100, 5);
    let mut r5 = tombstone(5, 0, b"/k/\x00\xffbin", 4, 4);
    r5.compacted_at = ts(100, 5);
    let r6 = tombstone(6, 0, b"/k/a", 2, 3);
    let mut r7 = put(7, b"/k/a", b"a-7", 7, 0, 1); // re-created
    r7.lease = 42;
    let mut r8 = put(8, b"/registry/secrets/default/s", b"c2VjcmV0", 8, 0, 1);
    r8.dek = 0;
    let records = vec![r1, r2, r3, r4, r5, r6, r7, r8];
    (
        header_params(
            FileKind::KindSnapshot,
            FileCompression::CompressionZstd,
            records.len(),
        ),
        records,
    )
}

fn vectors() -> Vec<(&'static str, HeaderParams, Vec<Record>)> {
    let (h1, r1) = chunk_small();
    let (h2, r2) = chunk_batch();
    let (h3, r3) = snapshot();
    vec![
        ("chunk-small.netsy", h1, r1),
        ("chunk-batch-zstd.netsy", h2, r2),
        ("snapshot.netsy", h3, r3),
    ]
}

fn vector_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn encode(params: &HeaderParams, records: &[Record]) -> Vec<u8> {
    encode_file(params.clone(), records).unwrap()
}

fn read_all(bytes: &[u8], kind: Option<FileKind>) -> Result<(Vec<Record>, FileSummary), Error> {
    let mut reader = Reader::new(bytes, kind)?;
    let mut records = Vec::new();
    while let Some(r) = reader.next_record()? {
        records.push(r);
    }
    Ok((records, reader.summary().cloned().unwrap()))
}

fn without_crc(mut records: Vec<Record>) -> Vec<Record> {
    for r in &mut records {
        r.crc = 0;
    }
    records
}

#[test]
fn golden_vectors_are_reproduced_bit_for_bit() {
    let regenerate = std::env::var("NETSY_REGENERATE_VECTORS").is_ok();
    for (name, params, records) in vectors() {
        let bytes = encode(&params, &records);
        let path = vector_dir().join(name);
        if regenerate {
            std::fs::create_dir_all(vector_dir()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            let mut text = Vec::new();
            inspect::inspect_reader(&bytes[..], &InspectOptions::default(), &mut text).unwrap();
            std::fs::write(path.with_extension("inspect.txt"), text).unwrap();
        }
        let golden = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            bytes, golden,
            "{name}: writer output differs from the committed vector"
        );
    }
}

#[test]
fn vectors_read_back_to_the_expected_records() {
    for (name, params, records) in vectors() {
        let bytes = std::fs::read(vector_dir().join(name)).unwrap();
        let (read, summary) = read_all(&bytes, Some(params.kind)).unwrap();
        assert_eq!(without_crc(read.clone()), records, "{name}");
        assert!(read.iter().all(|r| r.crc != 0));
        assert_eq!(summary.header.kind, params.kind as i32);
        assert_eq!(summary.header.compression, params.compression as i32);
        assert_eq!(summary.header.leader_id, "node-a");
        assert_eq!(summary.header.created_at, Some(params.created_at));
        assert_eq!(summary.records_count(), records.len() as i64);
        assert_eq!(summary.first_revision(), records[0].revision);
        assert_eq!(summary.last_revision(), records.last().unwrap().revision);
        // The records CRC is the running CRC over crc-less record encodings.
        let mut digest = wire::crc64_digest();
        for r in &records {
            digest.update(&r.encode_to_vec());
        }
        assert_eq!(summary.footer.records_crc, digest.finalize(), "{name}");
    }
}

#[test]
fn inspect_output_matches_committed_text() {
    for (name, _, _) in vectors() {
        let path = vector_dir().join(name);
        let bytes = std::fs::read(&path).unwrap();
        let mut text = Vec::new();
        inspect::inspect_reader(&bytes[..], &InspectOptions::default(), &mut text).unwrap();
        let golden = std::fs::read_to_string(path.with_extension("inspect.txt")).unwrap();
        assert_eq!(String::from_utf8(text).unwrap(), golden, "{name}");
    }
    // The path form prints the file line first and ends with the verdict.
    let mut out = Vec::new();
    let path = vector_dir().join("snapshot.netsy");
    inspect(path.to_str().unwrap(), &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with("file: "), "{out}");
    assert!(out.contains("<redacted Secret>"), "{out}");
    assert!(out.contains("key=\"/k/\\x00\\xffbin\""), "{out}");
    assert!(out.ends_with("valid: yes\n"), "{out}");
    let mut full = Vec::new();
    let opts = InspectOptions {
        values: ValueMode::Full,
        ..Default::default()
    };
    inspect_with(path.to_str().unwrap(), &opts, &mut full).unwrap();
    assert!(String::from_utf8(full).unwrap().contains("c2VjcmV0"));
}

#[test]
fn go_written_vectors_are_read() {
    // Written by tests/compat/go-reader (Go protobuf + klauspost zstd) from our vectors.
    for (name, params, records) in vectors() {
        let path = vector_dir().join(format!("go-{name}"));
        let Ok(bytes) = std::fs::read(&path) else {
            panic!("missing {}", path.display())
        };
        let (read, summary) = read_all(&bytes, Some(params.kind)).unwrap();
        assert_eq!(without_crc(read), records, "{name}");
        assert_eq!(summary.header.created_at, Some(params.created_at));
        if params.compression == FileCompression::CompressionNone {
            // Go's canonical encoding is ours: byte-identical files.
            assert_eq!(
                bytes,
                std::fs::read(vector_dir().join(name)).unwrap(),
                "{name}"
            );
        }
    }
}

/// Splits a file into its raw (decompressed) message bodies.
fn raw_messages(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut input = bytes;
    let header = wire::read_delimited(&mut input, What::Header)
        .unwrap()
        .unwrap();
    let decoded = FileHeader::decode(header.as_slice()).unwrap();
    let mut rest = Vec::new();
    if decoded.compression == FileCompression::CompressionZstd as i32 {
        zstd::stream::read::Decoder::new(input)
            .unwrap()
            .read_to_end(&mut rest)
            .unwrap();
    } else {
        rest.extend_from_slice(input);
    }
    let mut msgs = vec![header];
    let mut r = rest.as_slice();
    while let Some(m) = wire::read_delimited(&mut r, What::Footer).unwrap() {
        msgs.push(m);
    }
    msgs
}

#[test]
fn encoding_is_canonical_decode_reencode_identity() {
    for (name, _, records) in vectors() {
        let bytes = std::fs::read(vector_dir().join(name)).unwrap();
        let msgs = raw_messages(&bytes);
        assert_eq!(msgs.len(), records.len() + 2, "{name}");
        let header = FileHeader::decode(msgs[0].as_slice()).unwrap();
        assert_eq!(header.encode_to_vec(), msgs[0], "{name} header");
        for (i, m) in msgs[1..=records.len()].iter().enumerate() {
            let r = Record::decode(m.as_slice()).unwrap();
            assert_eq!(&r.encode_to_vec(), m, "{name} record {i}");
            // Field order: strictly increasing field numbers; crc (field 1) first.
            let mut pos = 0;
            let mut last = 0;
            while pos < m.len() {
                let mut shift = 0;
                let mut key = 0u64;
                loop {
                    let b = m[pos];
                    pos += 1;
                    key |= u64::from(b & 0x7f) << shift;
                    shift += 7;
                    if b & 0x80 == 0 {
                        break;
                    }
                }
                let field = key >> 3;
                assert!(
                    field > last,
                    "{name} record {i}: field {field} after {last}"
                );
                last = field;
                pos += skip_value(&m[pos..], key & 7);
            }
        }
        let footer = FileFooter::decode(msgs.last().unwrap().as_slice()).unwrap();
        assert_eq!(
            &footer.encode_to_vec(),
            msgs.last().unwrap(),
            "{name} footer"
        );
    }
    // Single-record revisions never carry field 16; multi-record revisions do (sub > 0).
    let (p, r) = chunk_small();
    assert!(!encode(&p, &r).windows(2).any(|w| w == [0x80, 0x01]));
}

fn skip_value(b: &[u8], wire_type: u64) -> usize {
    let varint_len = |b: &[u8]| b.iter().position(|x| x & 0x80 == 0).unwrap() + 1;
    match wire_type {
        0 => varint_len(b),
        1 => 8,
        5 => 4,
        2 => {
            let n = varint_len(b);
            let mut len = 0usize;
            for (i, x) in b[..n].iter().enumerate() {
                len |= usize::from(x & 0x7f) << (7 * i);
            }
            n + len
        }
        _ => panic!("wire type {wire_type}"),
    }
}

#[test]
fn every_single_byte_flip_is_an_error() {
    for (name, params, records) in vectors() {
        let bytes = encode(&params, &records);
        for i in 0..bytes.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[i] ^= mask;
                match read_all(&bad, None) {
                    Err(_) => {}
                    // zstd frame parameters (e.g. the window size, a dictionary id nobody
                    // checks) can change without changing the decoded data; the per-message
                    // CRCs then prove the data intact. Anything else must fail.
                    Ok((read, _)) => assert!(
                        params.compression == FileCompression::CompressionZstd
                            && without_crc(read) == records,
                        "{name}: flipping byte {i} with {mask:#04x} went unnoticed"
                    ),
                }
            }
        }
    }
}

#[test]
fn truncation_at_every_offset_is_an_error() {
    for (name, params, records) in vectors() {
        let bytes = encode(&params, &records);
        for len in 0..bytes.len() {
            let err = read_all(&bytes[..len], None).unwrap_err();
            if params.compression == FileCompression::CompressionNone {
                assert!(
                    matches!(err, Error::UnexpectedEof { .. }),
                    "{name} at {len}: {err}"
                );
            }
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(
            matches!(read_all(&longer, None), Err(Error::TrailingData)),
            "{name}"
        );
    }
    assert!(matches!(
        read_all(&[], None),
        Err(Error::UnexpectedEof { what: What::Header })
    ));
}

/// Frames a message whose `crc` field is `field`, computing the crc unless one is given.
fn frame_with_crc<M: Message + Clone>(
    msg: &M,
    set_crc: impl Fn(&mut M, u64),
    crc: Option<u64>,
) -> Vec<u8> {
    let mut m = msg.clone();
    set_crc(&mut m, 0);
    let crc = crc.unwrap_or_else(|| wire::crc64(&m.encode_to_vec()));
    set_crc(&mut m, crc);
    let mut out = Vec::new();
    wire::write_delimited(&mut out, &m.encode_to_vec()).unwrap();
    out
}

/// Builds an uncompressed file from arbitrary parts (CRCs correct unless overridden).
fn build_raw(header: &FileHeader, records: &[Record], footer: &FileFooter) -> Vec<u8> {
    let mut out = frame_with_crc(header, |h, c| h.crc = c, None);
    for r in records {
        out.extend(frame_with_crc(r, |r, c| r.crc = c, None));
    }
    out.extend(frame_with_crc(footer, |f, c| f.crc = c, None));
    out
}

fn good_parts() -> (FileHeader, Vec<Record>, FileFooter) {
    let (params, records) = chunk_small();
    let bytes = encode(&params, &records);
    let (read, summary) = read_all(&bytes, None).unwrap();
    let _ = read;
    (summary.header, records, summary.footer)
}

#[test]
fn wrong_counts_revisions_and_crcs_are_clean_errors() {
    let (header, records, footer) = good_parts();
    // Sanity: the builder reproduces the writer.
    let (params, _) = chunk_small();
    assert_eq!(
        build_raw(&header, &records, &footer),
        encode(&params, &records)
    );

    let more = FileHeader {
        records_count: 3,
        ..header.clone()
    };
    assert!(read_all(&build_raw(&more, &records, &footer), None).is_err());
    let fewer = FileHeader {
        records_count: 1,
        ..header.clone()
    };
    assert!(matches!(
        read_all(&build_raw(&fewer, &records, &footer), None),
        Err(Error::CrcMismatch {
            what: What::Footer,
            ..
        } | Error::Decode {
            what: What::Footer,
            ..
        })
    ));
    let negative = FileHeader {
        records_count: -1,
        ..header.clone()
    };
    assert!(matches!(
        read_all(&build_raw(&negative, &[], &footer), None),
        Err(Error::NegativeCount(-1))
    ));

    let bad_first = FileFooter {
        first_revision: 4,
        ..footer
    };
    assert!(matches!(
        read_all(&build_raw(&header, &records, &bad_first), None),
        Err(Error::FirstRevisionMismatch {
            footer: 4,
            actual: 5
        })
    ));
    let bad_last = FileFooter {
        last_revision: 7,
        ..footer
    };
    assert!(matches!(
        read_all(&build_raw(&header, &records, &bad_last), None),
        Err(Error::LastRevisionMismatch {
            footer: 7,
            actual: 6
        })
    ));
    let bad_records_crc = FileFooter {
        records_crc: footer.records_crc ^ 1,
        ..footer
    };
    assert!(matches!(
        read_all(&build_raw(&header, &records, &bad_records_crc), None),
        Err(Error::RecordsCrcMismatch { .. })
    ));
    // A record changed after the footer was computed: its own CRC is fine, records_crc is not.
    let mut changed = records.clone();
    changed[1].value = b"{\"data\":3}".to_vec();
    assert!(matches!(
        read_all(&build_raw(&header, &changed, &footer), None),
        Err(Error::RecordsCrcMismatch { .. })
    ));
    // Out of order and non-positive revisions.
    let swapped = vec![records[1].clone(), records[0].clone()];
    assert!(matches!(
        read_all(&build_raw(&header, &swapped, &footer), None),
        Err(Error::OutOfOrder { index: 1, .. })
    ));
    let mut zero = records.clone();
    zero[0].revision = 0;
    assert!(matches!(
        read_all(&build_raw(&header, &zero, &footer), None),
        Err(Error::InvalidRevision { .. })
    ));
    let mut gap = records.clone();
    gap[1].revision = 5;
    gap[1].sub_revision = 2;
    assert!(matches!(
        read_all(&build_raw(&header, &gap, &footer), None),
        Err(Error::OutOfOrder { .. })
    ));

    // Header problems.
    for c in [0, 3, 99] {
        let h = FileHeader {
            compression: c,
            ..header.clone()
        };
        assert!(
            matches!(read_all(&build_raw(&h, &records, &footer), None), Err(Error::UnknownCompression(x)) if x == c)
        );
    }
    let bytes = build_raw(&header, &records, &footer);
    assert!(matches!(
        read_all(&bytes, Some(FileKind::KindSnapshot)),
        Err(Error::KindMismatch { .. })
    ));
    let mut bad_crc = frame_with_crc(&header, |h, c| h.crc = c, Some(12345));
    bad_crc.extend_from_slice(&bytes[frame_with_crc(&header, |h, c| h.crc = c, None).len()..]);
    assert!(matches!(
        read_all(&bad_crc, None),
        Err(Error::CrcMismatch {
            what: What::Header,
            stored: 12345,
            ..
        })
    ));

    // A huge length prefix is refused before allocating.
    let mut huge = Vec::new();
    wire::put_varint(&mut huge, 1 << 40);
    assert!(matches!(
        read_all(&huge, None),
        Err(Error::MessageTooLarge { .. })
    ));
}

#[test]
fn unknown_fields_are_kept_in_the_crc_like_go() {
    // A record carrying a field this build does not know (field 20), written by a newer writer.
    let (header, records, _) = good_parts();
    let mut body = records[0].encode_to_vec();
    body.extend_from_slice(&[0xa0, 0x01, 0x07]); // field 20, varint 7
    let crc = wire::crc64(&body);
    let mut framed_body = vec![0x08];
    wire::put_varint(&mut framed_body, crc);
    framed_body.extend_from_slice(&body);
    let mut file = frame_with_crc(&header, |h, c| h.crc = c, None);
    wire::write_delimited(&mut file, &framed_body).unwrap();
    file.extend(frame_with_crc(&records[1], |r, c| r.crc = c, None));
    let mut digest = wire::crc64_digest();
    digest.update(&body);
    digest.update(&records[1].encode_to_vec());
    let footer = FileFooter {
        records_crc: digest.finalize(),
        first_revision: 5,
        last_revision: 6,
        crc: 0,
    };
    file.extend(frame_with_crc(&footer, |f, c| f.crc = c, None));
    let (read, _) = read_all(&file, None).unwrap();
    assert_eq!(read.len(), 2);
}

#[test]
fn writer_rejects_misuse() {
    let (params, records) = chunk_small();
    let mut w = Writer::new(Vec::new(), params.clone()).unwrap();
    w.write_record(&records[0]).unwrap();
    assert!(matches!(
        w.finish(),
        Err(Error::CountMismatch {
            announced: 2,
            written: 1
        })
    ));

    let mut w = Writer::new(Vec::new(), params.clone()).unwrap();
    w.write_record(&records[1]).unwrap();
    assert!(matches!(
        w.write_record(&records[0]),
        Err(Error::OutOfOrder { .. })
    ));

    let mut w = Writer::new(
        Vec::new(),
        HeaderParams {
            records_count: 1,
            ..params.clone()
        },
    )
    .unwrap();
    w.write_record(&records[0]).unwrap();
    assert!(matches!(
        w.write_record(&records[1]),
        Err(Error::CountMismatch { .. })
    ));

    let bad = HeaderParams {
        compression: FileCompression::CompressionUnknown,
        ..params.clone()
    };
    assert!(matches!(
        Writer::new(Vec::new(), bad),
        Err(Error::UnknownCompression(0))
    ));

    // Caller-provided crc values are ignored.
    let mut with_crc = records.clone();
    with_crc[0].crc = 99;
    assert_eq!(encode(&params, &with_crc), encode(&params, &records));
}

#[test]
fn empty_file_roundtrips() {
    for compression in [
        FileCompression::CompressionNone,
        FileCompression::CompressionZstd,
    ] {
        let params = header_params(FileKind::KindSnapshot, compression, 0);
        let bytes = encode(&params, &[]);
        let (read, summary) = read_all(&bytes, Some(FileKind::KindSnapshot)).unwrap();
        assert!(read.is_empty());
        assert_eq!((summary.first_revision(), summary.last_revision()), (0, 0));
    }
}

#[test]
fn chunk_compression_threshold() {
    let small = vec![put(1, b"k", &[0u8; 4095], 1, 0, 1)];
    assert_eq!(
        choose_chunk_compression(&small),
        FileCompression::CompressionNone
    );
    let exact = vec![put(1, b"k", &[0u8; 4095], 1, 0, 1)];
    assert_eq!(exact[0].key.len() + exact[0].value.len(), 4096);
    assert_eq!(
        choose_chunk_compression(&exact),
        FileCompression::CompressionNone
    );
    let over = vec![put(1, b"kk", &[0u8; 4095], 1, 0, 1)];
    assert_eq!(
        choose_chunk_compression(&over),
        FileCompression::CompressionZstd
    );
}

#[tokio::test]
async fn async_stream_decodes_byte_by_byte_and_reports_corruption() {
    use futures::StreamExt;
    for (name, params, records) in vectors() {
        let bytes = encode(&params, &records);
        let chunks: Vec<std::io::Result<bytes::Bytes>> = bytes
            .iter()
            .map(|b| Ok(bytes::Bytes::copy_from_slice(&[*b])))
            .collect();
        let mut s = asyncio::RecordStream::spawn(futures::stream::iter(chunks), Some(params.kind));
        let mut got = Vec::new();
        while let Some(r) = s.next_record().await.unwrap() {
            got.push(r);
        }
        assert_eq!(without_crc(got), records, "{name}");
        assert!(s.summary().is_some());

        let mut bad = bytes.clone();
        let last = bad.len() - 3;
        bad[last] ^= 0x55;
        let stream = futures::stream::iter(vec![Ok(bytes::Bytes::from(bad))]);
        let results: Vec<_> = asyncio::RecordStream::spawn(stream, None).collect().await;
        assert!(results.last().unwrap().is_err(), "{name}");
    }
    // An error of the byte source ends the stream with that error.
    let stream = futures::stream::iter(vec![Err(std::io::Error::other("network down"))]);
    let results: Vec<_> = asyncio::RecordStream::spawn(stream, None).collect().await;
    assert!(
        matches!(&results[..], [Err(Error::Io { .. })]),
        "{results:?}"
    );
}
