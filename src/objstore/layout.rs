//! The ONLY place that builds object keys (docs/design/0004-storage.md#bucket-layout), and the parser of listed keys.
//!
//! Every key lives under the optional `storage.key_prefix` (a trailing `/` is implied):
//!
//! | key | content |
//! |---|---|
//! | `members.json` | node id → member id map (Elector; CAS) |
//! | `nodes/{node_id}.json` | node registration |
//! | `leader/elector.json` | Elector lock (CAS) |
//! | `leader/epochs/{epoch:019}.json` | first revision of a writer epoch (create-only; extension) |
//! | `leader/quorum/{epoch:019}.json` | a writer epoch's acknowledgement configuration (quorum mode; extension) |
//! | `snapshots/{rev:019}.netsy` | full snapshot up to `rev` |
//! | `chunks/{rev%10000:04}/{rev:019}.netsy` | delta file whose LAST revision is `rev` |
//! | `bootstrap.netsy` | operator-provided seed snapshot |
//!
//! Listing accepts only keys that this module would build for the parsed revision (so
//! `snapshots/5.netsy` or a chunk in the wrong partition is ignored, never read twice).
//! Must never: perform I/O.

use object_store::path::Path;

/// Which kind of object a key names (used for metric labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// `members.json`.
    Members,
    /// `nodes/{id}.json`.
    Node,
    /// `leader/elector.json`.
    Elector,
    /// `snapshots/…`.
    Snapshot,
    /// `chunks/…`.
    Chunk,
    /// `bootstrap.netsy`.
    Bootstrap,
    /// Anything else.
    Other,
}

impl ObjectKind {
    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Members => "members",
            ObjectKind::Node => "node",
            ObjectKind::Elector => "elector",
            ObjectKind::Snapshot => "snapshot",
            ObjectKind::Chunk => "chunk",
            ObjectKind::Bootstrap => "bootstrap",
            ObjectKind::Other => "other",
        }
    }
}

/// An invalid `storage.key_prefix` or node id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The prefix has an empty, `.` or `..` segment, or a character object_store rejects.
    #[error("invalid storage.key_prefix {0:?}: {1}")]
    Prefix(String, String),
    /// A node id that cannot be one path segment.
    #[error("invalid node id {0:?} for an object key")]
    NodeId(String),
}

/// Builds and parses object keys under a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Layout {
    /// Prefix segments joined by `/`, without a trailing `/` ("" = bucket root).
    prefix: String,
}

const SNAPSHOTS: &str = "snapshots";
const CHUNKS: &str = "chunks";

impl Layout {
    /// A layout under `key_prefix` (`""` for the bucket root). Leading and trailing `/` are
    /// ignored (`"a/b"`, `"a/b/"` and `"/a/b"` are the same prefix).
    pub fn new(key_prefix: &str) -> Result<Self, LayoutError> {
        let trimmed = key_prefix.trim_matches('/');
        if trimmed.is_empty() {
            return Ok(Layout::default());
        }
        let parsed = Path::parse(trimmed)
            .map_err(|e| LayoutError::Prefix(key_prefix.to_string(), e.to_string()))?;
        if parsed.as_ref() != trimmed {
            return Err(LayoutError::Prefix(
                key_prefix.to_string(),
                "not a canonical path".into(),
            ));
        }
        Ok(Layout {
            prefix: trimmed.to_string(),
        })
    }

    /// The prefix with its implied trailing `/` (`""` when none).
    pub fn prefix(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }

    fn key(&self, relative: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from_iter(relative.split('/'))
        } else {
            Path::from_iter(self.prefix.split('/').chain(relative.split('/')))
        }
    }

    /// `members.json`.
    pub fn members(&self) -> Path {
        self.key("members.json")
    }

    /// `nodes/{node_id}.json`. Node ids are validated by config (lowercase `[a-z0-9-]`); here
    /// anything that is not exactly one safe path segment is refused.
    pub fn node(&self, node_id: &str) -> Result<Path, LayoutError> {
        let ok = !node_id.is_empty()
            && node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && node_id != "."
            && node_id != "..";
        if !ok {
            return Err(LayoutError::NodeId(node_id.to_string()));
        }
        Ok(self.key(&format!("nodes/{node_id}.json")))
    }

    /// Prefix under which node registrations are listed.
    pub fn nodes_dir(&self) -> Path {
        self.key("nodes")
    }

    /// `leader/elector.json`.
    pub fn elector(&self) -> Path {
        self.key("leader/elector.json")
    }

    /// `leases/{id:016x}.json`: a granted lease (ours; the original has no real leases).
    /// Epoch record `leader/epochs/{epoch:019}.json`: the first revision a writer epoch owns
    /// (Netsy-in-Rust extension; fences chunks of deposed writers).
    pub fn epoch(&self, epoch: u64) -> Path {
        self.key(&format!("leader/epochs/{epoch:019}.json"))
    }

    /// Prefix under which epoch records are listed.
    pub fn epochs_dir(&self) -> Path {
        self.key("leader/epochs")
    }

    /// Epoch of a listed epoch-record key; `None` for any other object.
    pub fn parse_epoch(&self, key: &Path) -> Option<u64> {
        let rel = self.relative(key)?;
        let name = rel.strip_prefix("leader/epochs/")?.strip_suffix(".json")?;
        let epoch: u64 = name.parse().ok()?;
        (self.epoch(epoch) == *key).then_some(epoch)
    }

    /// Acknowledgement configuration `leader/quorum/{epoch:019}.json`: the nodes whose receipts
    /// the writer of `epoch` counts and the receipts it requires, present while it may hold
    /// receipt-acknowledged records outside the chunks (quorum mode; Netsy-in-Rust extension).
    pub fn quorum_config(&self, epoch: u64) -> Path {
        self.key(&format!("leader/quorum/{epoch:019}.json"))
    }

    /// Prefix under which acknowledgement configurations are listed.
    pub fn quorum_configs_dir(&self) -> Path {
        self.key("leader/quorum")
    }

    /// Epoch of a listed acknowledgement-configuration key; `None` for any other object.
    pub fn parse_quorum_config(&self, key: &Path) -> Option<u64> {
        let rel = self.relative(key)?;
        let name = rel.strip_prefix("leader/quorum/")?.strip_suffix(".json")?;
        let epoch: u64 = name.parse().ok()?;
        (self.quorum_config(epoch) == *key).then_some(epoch)
    }

    pub fn lease(&self, id: i64) -> Path {
        self.key(&format!("leases/{:016x}.json", id as u64))
    }

    /// Prefix under which leases are listed.
    pub fn leases_dir(&self) -> Path {
        self.key("leases")
    }

    /// `state/compaction.json`: the cluster's compaction revision (ours).
    pub fn compaction(&self) -> Path {
        self.key("state/compaction.json")
    }

    /// `bootstrap.netsy`.
    pub fn bootstrap(&self) -> Path {
        self.key("bootstrap.netsy")
    }

    /// `snapshots/{rev:019}.netsy`.
    pub fn snapshot(&self, revision: u64) -> Path {
        self.key(&format!("{SNAPSHOTS}/{revision:019}.netsy"))
    }

    /// `chunks/{rev%10000:04}/{rev:019}.netsy`; `revision` is the chunk's LAST revision.
    pub fn chunk(&self, revision: u64) -> Path {
        self.key(&format!(
            "{CHUNKS}/{:04}/{revision:019}.netsy",
            revision % 10_000
        ))
    }

    /// Prefix under which snapshots are listed.
    pub fn snapshots_dir(&self) -> Path {
        self.key(SNAPSHOTS)
    }

    /// Prefix under which chunks are listed.
    pub fn chunks_dir(&self) -> Path {
        self.key(CHUNKS)
    }

    /// The key relative to the prefix, or `None` if it is outside the prefix.
    fn relative<'a>(&self, key: &'a Path) -> Option<&'a str> {
        let s = key.as_ref();
        if self.prefix.is_empty() {
            Some(s)
        } else {
            s.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
        }
    }

    /// Revision of a listed snapshot key; `None` for any other object.
    pub fn parse_snapshot(&self, key: &Path) -> Option<u64> {
        let rel = self.relative(key)?;
        let rev = parse_netsy_name(rel.strip_prefix("snapshots/")?)?;
        (self.snapshot(rev) == *key).then_some(rev)
    }

    /// Revision (last revision in the file) of a listed chunk key; `None` for any other object.
    pub fn parse_chunk(&self, key: &Path) -> Option<u64> {
        let rel = self.relative(key)?;
        let name = rel.strip_prefix("chunks/")?.split_once('/')?.1;
        let rev = parse_netsy_name(name)?;
        (self.chunk(rev) == *key).then_some(rev)
    }

    /// Classifies a key (for metrics); keys outside the prefix are [`ObjectKind::Other`].
    pub fn classify(&self, key: &Path) -> ObjectKind {
        let Some(rel) = self.relative(key) else {
            return ObjectKind::Other;
        };
        match rel {
            "members.json" => ObjectKind::Members,
            r if r.starts_with("leader/") => ObjectKind::Elector,
            "bootstrap.netsy" => ObjectKind::Bootstrap,
            r if r.starts_with("nodes/") => ObjectKind::Node,
            r if r.starts_with("snapshots/") => ObjectKind::Snapshot,
            r if r.starts_with("chunks/") => ObjectKind::Chunk,
            _ => ObjectKind::Other,
        }
    }
}

/// `{digits}.netsy` with exactly 19 digits → the revision.
fn parse_netsy_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".netsy")?;
    if digits.len() != 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_without_prefix() {
        let l = Layout::new("").unwrap();
        assert_eq!(l.members().as_ref(), "members.json");
        assert_eq!(l.node("node-1").unwrap().as_ref(), "nodes/node-1.json");
        assert_eq!(l.elector().as_ref(), "leader/elector.json");
        assert_eq!(l.bootstrap().as_ref(), "bootstrap.netsy");
        assert_eq!(
            l.snapshot(100).as_ref(),
            "snapshots/0000000000000000100.netsy"
        );
        assert_eq!(
            l.chunk(12345).as_ref(),
            "chunks/2345/0000000000000012345.netsy"
        );
        assert_eq!(l.chunk(7).as_ref(), "chunks/0007/0000000000000000007.netsy");
        assert_eq!(
            l.chunk(10_000).as_ref(),
            "chunks/0000/0000000000000010000.netsy"
        );
        assert_eq!(l.prefix(), "");
    }

    #[test]
    fn keys_with_prefix() {
        for p in ["team/netsy", "team/netsy/", "/team/netsy"] {
            let l = Layout::new(p).unwrap();
            assert_eq!(l.prefix(), "team/netsy/");
            assert_eq!(l.members().as_ref(), "team/netsy/members.json");
            assert_eq!(l.node("a").unwrap().as_ref(), "team/netsy/nodes/a.json");
            assert_eq!(l.elector().as_ref(), "team/netsy/leader/elector.json");
            assert_eq!(l.bootstrap().as_ref(), "team/netsy/bootstrap.netsy");
            assert_eq!(
                l.snapshot(1).as_ref(),
                "team/netsy/snapshots/0000000000000000001.netsy"
            );
            assert_eq!(
                l.chunk(12345).as_ref(),
                "team/netsy/chunks/2345/0000000000000012345.netsy"
            );
            assert_eq!(l.snapshots_dir().as_ref(), "team/netsy/snapshots");
            assert_eq!(l.chunks_dir().as_ref(), "team/netsy/chunks");
        }
    }

    #[test]
    fn invalid_prefixes_and_node_ids() {
        assert!(Layout::new("a//b").is_err());
        assert!(Layout::new("a/../b").is_err());
        let l = Layout::new("x").unwrap();
        for bad in ["", "a/b", "..", "a b", "é"] {
            assert!(l.node(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_only_canonical_keys() {
        let l = Layout::new("p").unwrap();
        assert_eq!(l.parse_snapshot(&l.snapshot(42)), Some(42));
        assert_eq!(l.parse_chunk(&l.chunk(12345)), Some(12345));
        assert_eq!(l.parse_chunk(&l.chunk(u64::MAX / 2)), Some(u64::MAX / 2));
        for other in [
            "p/snapshots/42.netsy",
            "p/snapshots/0000000000000000042.json",
            "p/snapshots/000000000000000004x.netsy",
            "snapshots/0000000000000000042.netsy",
            "q/snapshots/0000000000000000042.netsy",
            "p/snapshots/x/0000000000000000042.netsy",
        ] {
            assert_eq!(l.parse_snapshot(&Path::from(other)), None, "{other}");
        }
        for other in [
            "p/chunks/0001/0000000000000012345.netsy",
            "p/chunks/0000000000000012345.netsy",
            "p/chunks/2345/12345.netsy",
            "p/chunks/2345/0000000000000012345.netsy.tmp",
            "p/snapshots/0000000000000012345.netsy",
        ] {
            assert_eq!(l.parse_chunk(&Path::from(other)), None, "{other}");
        }
        let root = Layout::new("").unwrap();
        assert_eq!(
            root.parse_snapshot(&Path::from("snapshots/0000000000000000042.netsy")),
            Some(42)
        );
    }

    #[test]
    fn classifies_keys() {
        let l = Layout::new("p").unwrap();
        assert_eq!(l.classify(&l.members()), ObjectKind::Members);
        assert_eq!(l.classify(&l.node("n").unwrap()), ObjectKind::Node);
        assert_eq!(l.classify(&l.elector()), ObjectKind::Elector);
        assert_eq!(l.classify(&l.chunk(3)), ObjectKind::Chunk);
        assert_eq!(l.classify(&l.snapshot(3)), ObjectKind::Snapshot);
        assert_eq!(l.classify(&l.bootstrap()), ObjectKind::Bootstrap);
        assert_eq!(l.classify(&Path::from("members.json")), ObjectKind::Other);
    }
}
