//! Object storage: the permanent store of snapshots and chunks, and of the small coordination
//! objects (membership, node registrations, the Elector lock).
//!
//! Owns: building the store from configuration ([`config`]), every object key ([`layout`],
//! the only place keys are built), compare-and-swap ([`cas`], the only place conditional
//! writes are issued), a local-directory backend with real CAS ([`local`]), the stacked
//! wrappers (retry over metrics over default attributes over the backend: [`retry`],
//! [`metrics`], [`attributes`]; [`fault`] only in tests: unit tests and the `fault-injection` feature), and the data-file operations the
//! server calls ([`files`]: upload a chunk, upload a snapshot, list, stream records).
//!
//! Must never: write a shared object unconditionally where another node acts on it (chunks
//! are create-only; coordination files go through [`cas`]); call the store without a timeout
//! (the [`retry`] layer bounds every call); log object contents; know about SQLite or gRPC.
//!
//! Stack, outermost first: `RetryStore` → `MetricsStore` → (`FaultStore` in tests) →
//! `DefaultAttributes` → backend (`AmazonS3` | `GoogleCloudStorage` | `MicrosoftAzure` |
//! [`local::LocalDirStore`] | `InMemory`). The key prefix is applied by [`layout::Layout`],
//! not by a wrapper, so every key in logs and metrics is the full key.

pub(crate) mod attributes;
pub mod cas;
pub mod config;
#[cfg(any(test, feature = "fault-injection"))]
pub mod fault;
pub(crate) mod files;
pub(crate) mod layout;
pub(crate) mod local;
pub mod metrics;
pub mod retry;

use std::sync::Arc;

pub use cas::{PutIfAbsent, Versioned};
pub use config::{Encryption, Provider, StorageConfig};
pub use files::{ChunkUpload, EncodedChunk, FileRef, ObjectStorage, UploadOutcome};
pub use layout::{Layout, LayoutError, ObjectKind};

/// A type-erased object store (any layer of the stack).
pub type DynStore = Arc<dyn object_store::ObjectStore>;

/// Coarse classification of [`Error`] for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The object does not exist.
    NotFound,
    /// A create-only write found the object present (with unknown or equal contents).
    AlreadyExists,
    /// A conditional update found a different version (or no object).
    Precondition,
    /// A create-if-absent found the object present with different contents.
    Conflict,
    /// Timeouts, network and server errors: may succeed if retried later.
    Transient,
    /// The object exists but its contents are invalid.
    Corrupt,
    /// Configuration or programming error: retrying will not help.
    Permanent,
}

/// Errors of object-storage operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object does not exist.
    #[error("object {key} not found")]
    NotFound {
        /// Full key.
        key: String,
    },
    /// Create-only write: the object already exists.
    #[error("object {key} already exists")]
    AlreadyExists {
        /// Full key.
        key: String,
    },
    /// Conditional update: the object changed (or is missing) since the ETag was read.
    #[error("object {key} changed or is missing (precondition failed)")]
    Precondition {
        /// Full key.
        key: String,
    },
    /// Create-if-absent: the object exists with different contents.
    #[error("object {key} already exists with different contents")]
    Conflict {
        /// Full key.
        key: String,
    },
    /// Any other object-store failure (network, server, auth, timeout after retries).
    #[error("object storage error: {0}")]
    Store(#[source] object_store::Error),
    /// A data file in the store is invalid.
    #[error("data file {key} is invalid: {source}")]
    Datafile {
        /// Full key.
        key: String,
        /// What is wrong with it.
        #[source]
        source: crate::datafile::Error,
    },
    /// Invalid configuration (from the environment, a URL, a builder).
    #[error("invalid storage configuration: {0}")]
    Config(String),
    /// A bad value of one `storage.*` key.
    #[error("{key}: {message}")]
    Setting {
        /// The key, e.g. `storage.class`.
        key: &'static str,
        /// What is wrong with its value.
        message: String,
    },
    /// Invalid key prefix or node id.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Local file-system error (temporary files).
    #[error("local I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A revision that cannot name an object (must be > 0).
    #[error("invalid revision {0}")]
    InvalidRevision(i64),
}

impl Error {
    /// Coarse classification.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::Precondition { .. } => ErrorKind::Precondition,
            Error::Conflict { .. } => ErrorKind::Conflict,
            Error::Store(e) => {
                if retry::is_transient(e) {
                    ErrorKind::Transient
                } else {
                    ErrorKind::Permanent
                }
            }
            Error::Datafile { source, .. } => match source {
                crate::datafile::Error::Io { source, .. } if store_error_in(source).is_some() => {
                    ErrorKind::Transient
                }
                _ => ErrorKind::Corrupt,
            },
            Error::Io(_) => ErrorKind::Transient,
            Error::Config(_)
            | Error::Setting { .. }
            | Error::Layout(_)
            | Error::InvalidRevision(_) => ErrorKind::Permanent,
        }
    }
}

impl From<object_store::Error> for Error {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { path, .. } => Error::NotFound { key: path },
            object_store::Error::AlreadyExists { path, .. } => Error::AlreadyExists { key: path },
            object_store::Error::Precondition { path, .. } => Error::Precondition { key: path },
            other => Error::Store(other),
        }
    }
}

/// The object-store error inside an `io::Error` produced while streaming a download.
pub(crate) fn store_error_in(e: &std::io::Error) -> Option<&object_store::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<object_store::Error>())
}

/// Maps an object-store error for a known key (object_store's own paths may be backend paths).
pub(crate) fn from_store(e: object_store::Error, key: &object_store::path::Path) -> Error {
    let key = key.to_string();
    match e {
        object_store::Error::NotFound { .. } => Error::NotFound { key },
        object_store::Error::AlreadyExists { .. } => Error::AlreadyExists { key },
        object_store::Error::Precondition { .. } => Error::Precondition { key },
        other => Error::Store(other),
    }
}
