//! Helpers shared by unit tests: a local store on a temporary directory and a record maker.

use std::path::Path;

use crate::proto as pb;
use crate::store::{NoopCommitHook, Store, StoreOptions};

/// A store in `dir/db` with no commit hook (node `b`, one reader).
pub(crate) fn local_store(dir: &Path) -> Store {
    Store::open(
        StoreOptions {
            data_dir: dir.join("db"),
            node_id: "b".into(),
            readers: 1,
            fatal: Default::default(),
        },
        crate::watch::WatchHub::new(Default::default()),
        Box::new(NoopCommitHook),
    )
    .expect("open a test store")
}

/// A record creating key `k{revision}` with `value`.
pub(crate) fn created(revision: i64, value: &str) -> pb::Record {
    pb::Record {
        revision,
        key: format!("k{revision}").into_bytes(),
        created: true,
        create_revision: revision,
        version: 1,
        value: value.as_bytes().to_vec(),
        ..Default::default()
    }
}
