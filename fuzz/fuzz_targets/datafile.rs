//! Arbitrary bytes as a `.netsy` data file: the streaming reader (with and without an expected
//! kind), the inspect dump, and the async bridge used for object-storage reads must end with a
//! summary or an error, never a panic.
#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use netsy::datafile::asyncio::RecordStream;
use netsy::datafile::inspect::inspect_reader;
use netsy::datafile::{FileKind, InspectOptions, Reader, ValueMode};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// Reads every record; a valid file must end with a summary whose count matches.
fn read_all(data: &[u8], kind: Option<FileKind>) {
    let Ok(mut reader) = Reader::new(data, kind) else {
        return;
    };
    let mut n = 0i64;
    loop {
        match reader.next_record() {
            Ok(Some(_)) => n += 1,
            Ok(None) => {
                let summary = reader.summary().expect("Ok(None) only after a valid footer");
                assert_eq!(summary.records_count(), n);
                return;
            }
            Err(_) => {
                // After an error the reader yields nothing more.
                assert!(matches!(reader.next_record(), Ok(None)));
                return;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    read_all(data, None);
    read_all(data, Some(FileKind::KindSnapshot));
    let _ = Reader::new(data, Some(FileKind::KindChunk)).and_then(|r| r.finish());

    let mode = match data.first() {
        Some(b) if b % 3 == 0 => ValueMode::Hidden,
        Some(b) if b % 3 == 1 => ValueMode::Full,
        Some(b) => ValueMode::Truncated(usize::from(*b)),
        None => ValueMode::Truncated(32),
    };
    let opts = InspectOptions {
        values: mode,
        expected_kind: None,
    };
    let _ = inspect_reader(data, &opts, &mut std::io::sink());

    // The async bridge, fed in uneven pieces.
    let owned = Bytes::copy_from_slice(data);
    let step = 1 + data.last().map_or(0, |b| usize::from(*b) * 7);
    runtime().block_on(async move {
        let pieces: Vec<std::io::Result<Bytes>> = (0..owned.len())
            .step_by(step)
            .map(|i| Ok(owned.slice(i..(i + step).min(owned.len()))))
            .collect();
        let mut stream = RecordStream::spawn(futures::stream::iter(pieces), None);
        loop {
            match stream.next_record().await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    assert!(stream.summary().is_some());
                    break;
                }
                Err(_) => break,
            }
        }
    });
});
