//! Compare-and-swap: the ONLY place conditional writes are issued.
//!
//! * [`create`] — create-only put (`PutMode::Create`; S3 `If-None-Match: *`, GCS
//!   `ifGenerationMatch=0`, local `link(2)`); an existing object is [`Error::AlreadyExists`].
//! * [`update`] — If-Match put (`PutMode::Update(etag)`); a changed OR missing object is
//!   [`Error::Precondition`] (AWS answers 404 for a missing key, seaweedfs 412; object_store
//!   maps both to a precondition failure).
//! * [`put_if_absent`] — create-only put that resolves ambiguity: if the object already exists
//!   it is read back and the call succeeds iff it is identical (byte-identical, or equivalent by
//!   a caller-supplied rule, e.g. "same records" for data files whose header timestamp differs).
//!   This is how a retried PUT whose first attempt succeeded but whose response was lost (a
//!   timeout, a dropped connection) is recognised as ours.
//! * [`read_modify_write`] — bounded optimistic-concurrency loop over [`get`] + [`create`] /
//!   [`update`] (membership file).
//!
//! Ambiguous updates: a retried If-Match PUT whose first attempt succeeded fails its
//! precondition. [`update`] reports that as [`Error::Precondition`]. [`update_unique`] instead
//! reads the object back and reports success if it holds exactly our bytes — sound ONLY when the
//! bytes are unique to this attempt (they embed a write id / nonce / our node id plus a fresh
//! timestamp, as `leader/elector.json` does). For relative changes (counters, "add one member")
//! equal bytes from two writers do not mean both changes happened, which is why
//! [`read_modify_write`] uses plain [`update`].
//!
//! Must never: issue an unconditional write of a shared object; retry by itself (the retry
//! layer below does that, bounded).

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::{Error, from_store};

/// An object's contents with the ETag they were read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// Contents.
    pub bytes: Bytes,
    /// ETag to pass to [`update`].
    pub etag: String,
}

/// Result of [`put_if_absent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutIfAbsent {
    /// This call created the object.
    Created,
    /// The object already existed with identical (or equivalent) contents — typically our own
    /// earlier attempt whose response was lost.
    AlreadyPresent,
}

/// Reads an object with its ETag; `Ok(None)` if it does not exist.
pub async fn get(store: &dyn ObjectStore, key: &Path) -> Result<Option<Versioned>, Error> {
    let result = match store.get(key).await {
        Ok(r) => r,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(from_store(e, key)),
    };
    let etag = result.meta.e_tag.clone();
    let bytes = result.bytes().await.map_err(|e| from_store(e, key))?;
    let etag = etag.ok_or_else(|| Error::Config(format!("store returned no ETag for {key}")))?;
    Ok(Some(Versioned { bytes, etag }))
}

/// Create-only put. Returns the new ETag.
pub async fn create(
    store: &dyn ObjectStore,
    key: &Path,
    bytes: Bytes,
) -> Result<Option<String>, Error> {
    let opts = PutOptions::from(PutMode::Create);
    let r = store
        .put_opts(key, PutPayload::from(bytes), opts)
        .await
        .map_err(|e| from_store(e, key))?;
    Ok(r.e_tag)
}

/// If-Match put against `etag`. Returns the new ETag. A changed or missing object is
/// [`Error::Precondition`].
pub async fn update(
    store: &dyn ObjectStore,
    key: &Path,
    bytes: Bytes,
    etag: &str,
) -> Result<Option<String>, Error> {
    let version = UpdateVersion {
        e_tag: Some(etag.to_string()),
        version: None,
    };
    let opts = PutOptions::from(PutMode::Update(version));
    match store.put_opts(key, PutPayload::from(bytes), opts).await {
        Ok(r) => Ok(r.e_tag),
        Err(object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. }) => {
            Err(Error::Precondition {
                key: key.to_string(),
            })
        }
        Err(e) => Err(from_store(e, key)),
    }
}

/// [`update`] for bytes unique to this attempt: on a precondition failure the object is read
/// back, and if it holds exactly `bytes` our earlier (retried) attempt succeeded, so the update
/// is reported as applied with the current ETag. Do not use for bytes another writer could
/// produce too.
pub async fn update_unique(
    store: &dyn ObjectStore,
    key: &Path,
    bytes: Bytes,
    etag: &str,
) -> Result<Option<String>, Error> {
    match update(store, key, bytes.clone(), etag).await {
        Err(Error::Precondition { .. }) => match get(store, key).await? {
            Some(current) if current.bytes == bytes => Ok(Some(current.etag)),
            _ => Err(Error::Precondition {
                key: key.to_string(),
            }),
        },
        other => other,
    }
}

/// Create-only put that succeeds if the object already holds identical bytes.
pub async fn put_if_absent(
    store: &dyn ObjectStore,
    key: &Path,
    bytes: Bytes,
) -> Result<PutIfAbsent, Error> {
    put_if_absent_with(store, key, bytes, |existing, ours| existing == ours).await
}

/// Create-only put that succeeds if `equivalent(existing, ours)` holds for the object found.
/// Otherwise [`Error::Conflict`]. If the object vanishes between the failed create and the
/// read-back, the create is attempted again (at most three times in all).
pub async fn put_if_absent_with<F>(
    store: &dyn ObjectStore,
    key: &Path,
    bytes: Bytes,
    equivalent: F,
) -> Result<PutIfAbsent, Error>
where
    F: Fn(&[u8], &[u8]) -> bool,
{
    for _ in 0..3 {
        match create(store, key, bytes.clone()).await {
            Ok(_) => return Ok(PutIfAbsent::Created),
            Err(Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        match get(store, key).await? {
            Some(existing) if equivalent(&existing.bytes, &bytes) => {
                return Ok(PutIfAbsent::AlreadyPresent);
            }
            Some(_) => {
                return Err(Error::Conflict {
                    key: key.to_string(),
                });
            }
            None => continue,
        }
    }
    Err(Error::Conflict {
        key: key.to_string(),
    })
}

/// Optimistic read-modify-write: reads the object (if any), calls `f` with its contents, and
/// writes what `f` returns with [`create`] (object absent) or [`update`] (object present),
/// retrying on precondition/exists failures up to `max_attempts` times. `f` returning
/// `Ok(None)` means "no change needed" and ends the loop without writing.
pub async fn read_modify_write<F, E>(
    store: &dyn ObjectStore,
    key: &Path,
    max_attempts: u32,
    mut f: F,
) -> Result<Option<Bytes>, RmwError<E>>
where
    F: FnMut(Option<&[u8]>) -> Result<Option<Bytes>, E>,
{
    for _ in 0..max_attempts.max(1) {
        let current = get(store, key).await?;
        let Some(new) =
            f(current.as_ref().map(|v| v.bytes.as_ref())).map_err(RmwError::Rejected)?
        else {
            return Ok(current.map(|v| v.bytes));
        };
        let written = match &current {
            None => create(store, key, new.clone()).await,
            Some(v) => update(store, key, new.clone(), &v.etag).await,
        };
        match written {
            Ok(_) => return Ok(Some(new)),
            Err(Error::AlreadyExists { .. } | Error::Precondition { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(RmwError::Contended {
        attempts: max_attempts.max(1),
    })
}

/// Failure of [`read_modify_write`].
#[derive(Debug, thiserror::Error)]
pub enum RmwError<E> {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
    /// The modification function refused the current contents.
    #[error("modification rejected: {0}")]
    Rejected(E),
    /// Every attempt lost a race.
    #[error("gave up after {attempts} conflicting attempts")]
    Contended {
        /// Attempts made.
        attempts: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn create_update_and_put_if_absent_on_memory() {
        let store = InMemory::new();
        let key = Path::from("k");
        assert_eq!(get(&store, &key).await.unwrap(), None);
        create(&store, &key, Bytes::from_static(b"a"))
            .await
            .unwrap();
        assert!(matches!(
            create(&store, &key, Bytes::from_static(b"a")).await,
            Err(Error::AlreadyExists { .. })
        ));
        let v = get(&store, &key).await.unwrap().unwrap();
        update(&store, &key, Bytes::from_static(b"b"), &v.etag)
            .await
            .unwrap();
        // Stale ETag, different bytes: precondition failure.
        assert!(matches!(
            update(&store, &key, Bytes::from_static(b"c"), &v.etag).await,
            Err(Error::Precondition { .. })
        ));
        // Stale ETag but the object already holds our bytes: plain update refuses, the
        // unique-bytes variant treats it as our own earlier success.
        assert!(matches!(
            update(&store, &key, Bytes::from_static(b"b"), &v.etag).await,
            Err(Error::Precondition { .. })
        ));
        update_unique(&store, &key, Bytes::from_static(b"b"), &v.etag)
            .await
            .unwrap();
        // Missing object: precondition failure.
        assert!(matches!(
            update(
                &store,
                &Path::from("nope"),
                Bytes::from_static(b"c"),
                &v.etag
            )
            .await,
            Err(Error::Precondition { .. })
        ));
        assert_eq!(
            put_if_absent(&store, &key, Bytes::from_static(b"b"))
                .await
                .unwrap(),
            PutIfAbsent::AlreadyPresent
        );
        assert!(matches!(
            put_if_absent(&store, &key, Bytes::from_static(b"x")).await,
            Err(Error::Conflict { .. })
        ));
        assert_eq!(
            put_if_absent(&store, &Path::from("new"), Bytes::from_static(b"x"))
                .await
                .unwrap(),
            PutIfAbsent::Created
        );
    }

    #[tokio::test]
    async fn lost_update_response_is_resolved_only_for_unique_bytes() {
        use crate::objstore::fault::{FaultConfig, FaultStore};
        use crate::objstore::retry::{RetryConfig, RetryStore};
        use std::sync::Arc;
        let fault = Arc::new(FaultStore::new(
            Arc::new(InMemory::new()),
            FaultConfig::default(),
            7,
        ));
        let retry_cfg = RetryConfig {
            initial_backoff: std::time::Duration::from_millis(1),
            ..Default::default()
        };
        let store = RetryStore::new(fault.clone(), retry_cfg);
        let key = Path::from("leader/elector.json");
        create(&store, &key, Bytes::from_static(b"v1"))
            .await
            .unwrap();
        let v = get(&store, &key).await.unwrap().unwrap();
        // The If-Match PUT is applied but its response lost; the retry fails its precondition.
        fault.drop_next_put_responses(1);
        assert!(matches!(
            update(&store, &key, Bytes::from_static(b"v2-node-a-t1"), &v.etag).await,
            Err(Error::Precondition { .. })
        ));
        let v = get(&store, &key).await.unwrap().unwrap();
        assert_eq!(v.bytes.as_ref(), b"v2-node-a-t1");
        fault.drop_next_put_responses(1);
        update_unique(&store, &key, Bytes::from_static(b"v3-node-a-t2"), &v.etag)
            .await
            .unwrap();
        // A lost create response: put_if_absent finds its own bytes.
        fault.drop_next_put_responses(1);
        assert_eq!(
            put_if_absent(&store, &Path::from("c"), Bytes::from_static(b"x"))
                .await
                .unwrap(),
            PutIfAbsent::AlreadyPresent
        );
    }

    #[tokio::test]
    async fn read_modify_write_counts() {
        let store = InMemory::new();
        let key = Path::from("counter");
        for _ in 0..3 {
            read_modify_write::<_, String>(&store, &key, 5, |cur| {
                let n: u64 = cur
                    .map(|b| String::from_utf8_lossy(b).parse().unwrap())
                    .unwrap_or(0);
                Ok(Some(Bytes::from((n + 1).to_string())))
            })
            .await
            .unwrap();
        }
        assert_eq!(
            get(&store, &key).await.unwrap().unwrap().bytes.as_ref(),
            b"3"
        );
        let r = read_modify_write::<_, String>(&store, &key, 5, |_| Err("no".to_string())).await;
        assert!(matches!(r, Err(RmwError::Rejected(_))));
    }
}
