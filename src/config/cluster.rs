//! The cluster config file (JSONC, Netsy's keys) layered with figment over built-in defaults.
//! Unknown keys are warned about, not fatal; every bad value fails with one line naming the key.

use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::Serialized;
use serde::{Deserialize, Deserializer, Serialize};

use super::{ConfigError, err, valid_id};
use crate::objstore::{self, Provider, StorageConfig};

/// The whole cluster config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    pub cluster_id: String,
    pub storage: StorageConfig,
    #[serde(with = "dur")]
    pub heartbeat_interval: Duration,
    pub elector: ElectorConfig,
    pub replication: ReplicationConfig,
    pub snapshot: SnapshotConfig,
    #[serde(with = "opt_dur")]
    pub compaction_interval: Option<Duration>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ElectorConfig {
    pub degradation_count: u32,
    /// 0 disables automatic deregistration.
    #[serde(with = "dur")]
    pub deregistration_timeout: Duration,
    #[serde(with = "opt_dur")]
    pub primary_prior_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ReplicationConfig {
    /// 0 = always synchronous to object storage, -1 = majority, N > 0 = N receipts.
    pub quorum: i64,
    pub degradation_count: u32,
    pub chunk_buffer: ChunkBufferConfig,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ChunkBufferConfig {
    pub threshold_size_mb: u64,
    pub threshold_age_minutes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SnapshotConfig {
    pub threshold_records: i64,
    pub threshold_size_mb: i64,
    pub threshold_age_minutes: i64,
    pub cleanup_batch_size: usize,
    #[serde(with = "dur")]
    pub cleanup_batch_interval: Duration,
    /// `auto`, `list` or `direct`.
    pub cleanup_strategy: String,
    /// Snapshots kept in the bucket (ours; the original never deletes them). 0 keeps all.
    pub retention_count: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            cluster_id: "netsy".into(),
            storage: StorageConfig::default(),
            heartbeat_interval: Duration::from_secs(1),
            elector: ElectorConfig::default(),
            replication: ReplicationConfig::default(),
            snapshot: SnapshotConfig::default(),
            compaction_interval: None,
        }
    }
}

impl Default for ElectorConfig {
    fn default() -> Self {
        ElectorConfig {
            degradation_count: 2,
            deregistration_timeout: Duration::from_secs(180),
            primary_prior_timeout: None,
        }
    }
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            quorum: -1,
            degradation_count: 2,
            chunk_buffer: ChunkBufferConfig::default(),
        }
    }
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            threshold_records: 10_000,
            threshold_size_mb: 10_000,
            threshold_age_minutes: 0,
            cleanup_batch_size: 250,
            cleanup_batch_interval: Duration::from_secs(1),
            cleanup_strategy: "auto".into(),
            retention_count: 5,
        }
    }
}

/// Every key the file may contain (dotted paths), for unknown-key warnings.
const KNOWN_KEYS: &[&str] = &[
    "cluster_id",
    "storage",
    "storage.provider",
    "storage.bucket_name",
    "storage.path",
    "storage.key_prefix",
    "storage.class",
    "storage.encryption",
    "storage.kms_key_id",
    "heartbeat_interval",
    "elector",
    "elector.degradation_count",
    "elector.deregistration_timeout",
    "elector.primary_prior_timeout",
    "replication",
    "replication.quorum",
    "replication.degradation_count",
    "replication.chunk_buffer",
    "replication.chunk_buffer.threshold_size_mb",
    "replication.chunk_buffer.threshold_age_minutes",
    "snapshot",
    "snapshot.threshold_records",
    "snapshot.threshold_size_mb",
    "snapshot.threshold_age_minutes",
    "snapshot.cleanup_batch_size",
    "snapshot.cleanup_batch_interval",
    "snapshot.cleanup_strategy",
    "snapshot.retention_count",
    "compaction_interval",
];

/// Keys accepted for compatibility with the original's config files but not acted on, and why.
/// Setting one gives a one-line warning (and `netsy config check` prints it).
const IGNORED_KEYS: &[(&str, &str)] = &[
    (
        "elector.primary_prior_timeout",
        "a takeover waits for the lock's own TTL (elector.degradation_count × heartbeat_interval)",
    ),
    (
        "replication.quorum",
        "every write is durable in object storage before it is acknowledged (quorum 0)",
    ),
    (
        "replication.degradation_count",
        "writes do not wait for Replicas, so none is degraded",
    ),
    (
        "replication.chunk_buffer",
        "every write group is uploaded before it is acknowledged; nothing is buffered",
    ),
    (
        "snapshot.cleanup_batch_size",
        "chunks below a snapshot are deleted as one listing pass",
    ),
    (
        "snapshot.cleanup_batch_interval",
        "chunks below a snapshot are deleted as one listing pass",
    ),
    (
        "snapshot.cleanup_strategy",
        "chunks below a snapshot are deleted as one listing pass",
    ),
];

/// Warnings for the keys of `value` that are in [`IGNORED_KEYS`] (a non-default `quorum` only).
fn ignored_keys(value: &serde_json::Value, out: &mut Vec<String>) {
    for (key, why) in IGNORED_KEYS {
        let mut v = Some(value);
        for part in key.split('.') {
            v = v.and_then(|v| v.get(part));
        }
        let Some(v) = v else { continue };
        if *key == "replication.quorum" && v.as_i64() == Some(0) {
            continue;
        }
        out.push(format!("{key}: accepted and ignored ({why})"));
    }
}

/// The embedded default used when no config file is given: one node, the `local` provider in
/// `bucket_dir`, synchronous object-storage writes.
pub fn embedded_default(bucket_dir: &Path) -> ClusterConfig {
    let mut c = ClusterConfig::default();
    c.storage.provider = Provider::Local;
    c.storage.local_dir = Some(bucket_dir.to_path_buf());
    c.replication.quorum = 0;
    // A lone node gains nothing from a short writer-lock TTL (nobody takes over), and a long one
    // keeps a slow disk from fencing it: renew every 2.5 s, TTL 15 s.
    c.heartbeat_interval = std::time::Duration::from_secs(5);
    c
}

/// Loads and validates a config file. Returns the config and warnings (unknown keys, and keys
/// accepted only for compatibility).
pub fn load(path: &Path) -> Result<(ClusterConfig, Vec<String>), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        err(
            "NETSY_CONFIG (--config)",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    parse(&text)
}

/// Parses and validates config text (JSONC).
pub fn parse(text: &str) -> Result<(ClusterConfig, Vec<String>), ConfigError> {
    let value: serde_json::Value = json5::from_str(text).map_err(|e| {
        let detail = match &e {
            json5::Error::Message {
                msg,
                location: Some(l),
            } => {
                format!(
                    "line {} column {}: {}",
                    l.line,
                    l.column,
                    msg.lines().last().unwrap_or(msg).trim()
                )
            }
            json5::Error::Message {
                msg,
                location: None,
            } => msg.lines().last().unwrap_or(msg).trim().to_string(),
        };
        err("config", format!("not valid JSONC: {detail}"))
    })?;
    if !value.is_object() {
        return Err(err("config", "the file must contain one JSON object"));
    }
    let mut warnings = Vec::new();
    unknown_keys(&value, "", &mut warnings);
    ignored_keys(&value, &mut warnings);
    let cfg: ClusterConfig = Figment::from(Serialized::defaults(ClusterConfig::default()))
        .merge(Serialized::globals(value))
        .extract()
        .map_err(|e| {
            let key = e.path.join(".");
            let key = if key.is_empty() {
                "config".to_string()
            } else {
                key
            };
            err(key, e.kind.to_string())
        })?;
    cfg.validate()?;
    Ok((cfg, warnings))
}

fn unknown_keys(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    let Some(map) = v.as_object() else { return };
    for (k, child) in map {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if !KNOWN_KEYS.contains(&path.as_str()) {
            out.push(format!("{path}: unknown key, ignored"));
            continue;
        }
        unknown_keys(child, &path, out);
    }
}

impl ClusterConfig {
    /// Validates every value; the first error wins and names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !valid_id(&self.cluster_id) {
            return Err(err(
                "cluster_id",
                format!(
                    "{:?} is not a valid id: lowercase letters, digits and single inner hyphens, at most 32 characters",
                    self.cluster_id
                ),
            ));
        }
        self.storage.validate().map_err(|e| match e {
            objstore::Error::Setting { key, message } => err(key, message),
            other => err("storage", other.to_string()),
        })?;
        if self.elector.degradation_count == 0 {
            return Err(err("elector.degradation_count", "must be at least 1"));
        }
        if self.replication.degradation_count == 0 {
            return Err(err("replication.degradation_count", "must be at least 1"));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(err("heartbeat_interval", "must be greater than 0"));
        }
        let Some(min_prior) = self
            .heartbeat_interval
            .checked_mul(self.elector.degradation_count)
        else {
            return Err(err(
                "heartbeat_interval",
                "too large: heartbeat_interval × elector.degradation_count overflows",
            ));
        };
        if let Some(p) = self.elector.primary_prior_timeout
            && p < min_prior
        {
            return Err(err(
                "elector.primary_prior_timeout",
                format!(
                    "must be at least elector.degradation_count × heartbeat_interval ({min_prior:?})"
                ),
            ));
        }
        if self.replication.quorum < -1 {
            return Err(err(
                "replication.quorum",
                "must be -1 (majority), 0 (synchronous to object storage) or N > 0",
            ));
        }
        if self.replication.quorum != 0 && self.replication.chunk_buffer.threshold_age_minutes == 0
        {
            return Err(err(
                "replication.chunk_buffer.threshold_age_minutes",
                "must be greater than 0 when replication.quorum is not 0",
            ));
        }
        if self.snapshot.threshold_records <= 0 {
            return Err(err("snapshot.threshold_records", "must be greater than 0"));
        }
        if self.snapshot.threshold_size_mb <= 0 {
            return Err(err("snapshot.threshold_size_mb", "must be greater than 0"));
        }
        if self.snapshot.threshold_age_minutes < 0 {
            return Err(err(
                "snapshot.threshold_age_minutes",
                "must not be negative",
            ));
        }
        if !["auto", "list", "direct"].contains(&self.snapshot.cleanup_strategy.as_str()) {
            return Err(err(
                "snapshot.cleanup_strategy",
                format!(
                    "{:?} is not one of \"auto\", \"list\", \"direct\"",
                    self.snapshot.cleanup_strategy
                ),
            ));
        }
        if self.snapshot.cleanup_batch_size == 0 {
            return Err(err("snapshot.cleanup_batch_size", "must be greater than 0"));
        }
        Ok(())
    }
}

/// Go-style durations: a string ("500ms", "1h30m", "3m") or a number of nanoseconds.
fn parse_go_duration(v: &serde_json::Value) -> Result<Duration, String> {
    match v {
        serde_json::Value::Number(n) => n
            .as_u64()
            .map(Duration::from_nanos)
            .ok_or_else(|| format!("{n} is not a non-negative number of nanoseconds")),
        serde_json::Value::String(s) => {
            if s == "0" {
                return Ok(Duration::ZERO);
            }
            humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
        }
        other => Err(format!(
            "expected a duration string such as \"5s\", got {other}"
        )),
    }
}

mod dur {
    use super::*;
    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        parse_go_duration(&v).map_err(serde::de::Error::custom)
    }
}

mod opt_dur {
    use super::*;
    pub(super) fn serialize<S: serde::Serializer>(
        d: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let v = Option::<serde_json::Value>::deserialize(d)?;
        match v {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => parse_go_duration(&v)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
        // the development example of the original
        "cluster_id": "dev-cluster",
        "storage": { "provider": "s3", "bucket_name": "netsy-dev", "key_prefix": "", "class": "STANDARD",
                     "encryption": "provider-managed", },
        "heartbeat_interval": "1s",
        "elector": { "degradation_count": 2, "deregistration_timeout": "3m", "primary_prior_timeout": "5s" },
        "replication": { "quorum": -1, "degradation_count": 2,
                         "chunk_buffer": { "threshold_size_mb": 4, "threshold_age_minutes": 1 } },
        /* snapshots */
        "snapshot": { "threshold_records": 10000, "threshold_size_mb": 10000, "threshold_age_minutes": 0,
                      "cleanup_batch_size": 250, "cleanup_batch_interval": "1s", "cleanup_strategy": "auto" },
        "compaction_interval": "5m",
    }"#;

    #[test]
    fn parses_the_originals_example() {
        let (c, warnings) = parse(EXAMPLE).unwrap();
        // Every key is known; the compatibility-only ones say so, one line each.
        let keys: Vec<&str> = warnings
            .iter()
            .map(|w| {
                assert!(w.contains(": accepted and ignored ("), "{w}");
                w.split(':').next().unwrap_or_default()
            })
            .collect();
        assert_eq!(
            keys,
            [
                "elector.primary_prior_timeout",
                "replication.quorum",
                "replication.degradation_count",
                "replication.chunk_buffer",
                "snapshot.cleanup_batch_size",
                "snapshot.cleanup_batch_interval",
                "snapshot.cleanup_strategy",
            ]
        );
        assert_eq!(c.cluster_id, "dev-cluster");
        assert_eq!(
            c.elector.primary_prior_timeout,
            Some(Duration::from_secs(5))
        );
        assert_eq!(c.elector.deregistration_timeout, Duration::from_secs(180));
        assert_eq!(c.replication.chunk_buffer.threshold_size_mb, 4);
        assert_eq!(c.compaction_interval, Some(Duration::from_secs(300)));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(1));
    }

    #[test]
    fn nanosecond_numbers_and_go_durations() {
        let (c, _) = parse(
            r#"{"cluster_id":"a","storage":{"bucket_name":"b"},"heartbeat_interval":500000000,
            "replication":{"quorum":0},"compaction_interval":"1h30m"}"#,
        )
        .unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(c.compaction_interval, Some(Duration::from_secs(5400)));
    }

    #[test]
    fn unknown_keys_warn() {
        let (_, w) = parse(r#"{"cluster_id":"a","storage":{"bucket_name":"b","colour":1},"replication":{"quorum":0},"extra":true}"#).unwrap();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w.iter().any(|l| l.starts_with("storage.colour:")));
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let cases = [
            (
                r#"{"cluster_id":"Bad_Id","storage":{"bucket_name":"b"}}"#,
                "cluster_id",
            ),
            (r#"{"cluster_id":"a"}"#, "storage.bucket_name"),
            (
                r#"{"cluster_id":"a","storage":{"provider":"ftp","bucket_name":"b"}}"#,
                "storage.provider",
            ),
            (
                r#"{"cluster_id":"a","storage":{"bucket_name":"b","encryption":"customer-managed"}}"#,
                "storage.kms_key_id",
            ),
            (
                r#"{"cluster_id":"a","storage":{"bucket_name":"b","class":"COLD"}}"#,
                "storage.class",
            ),
            // One set of rules (objstore's): what the file accepts, the store opens.
            (
                r#"{"cluster_id":"a","storage":{"bucket_name":"b","class":"GLACIER_IR"}}"#,
                "storage.class",
            ),
            (
                r#"{"cluster_id":"a","storage":{"provider":"memory"}}"#,
                "storage.provider",
            ),
            (
                r#"{"cluster_id":"a","storage":{"provider":"gcs","bucket_name":"b","encryption":"customer-managed","kms_key_id":"k"}}"#,
                "storage.encryption",
            ),
            (
                r#"{"cluster_id":"a","storage":{"bucket_name":"b","key_prefix":"a//b"}}"#,
                "storage.key_prefix",
            ),
            (
                r#"{"cluster_id":"a","storage":{"provider":"local"}}"#,
                "storage.path",
            ),
            (
                r#"{"cluster_id":"a","storage":{"bucket_name":"b"},"heartbeat_interval":"soon"}"#,
                "heartbeat_interval",
            ),
            (
                r#"{"cluster_id":"a","storage":{"bucket_name":"b"},"replication":{"quorum":-1}}"#,
                "replication.chunk_buffer.threshold_age_minutes",
            ),
            (
                r#"{"cluster_id":"a","storage":{"bucket_name":"b"},"replication":{"quorum":"x"}}"#,
                "replication.quorum",
            ),
            (
                r#"{"cluster_id":"a","storage":{"bucket_name":"b"},"replication":{"quorum":0},"snapshot":{"cleanup_strategy":"x"}}"#,
                "snapshot.cleanup_strategy",
            ),
            (
                r#"{"cluster_id":"a","storage":{"bucket_name":"b"},"replication":{"quorum":0},"elector":{"primary_prior_timeout":"1s"}}"#,
                "elector.primary_prior_timeout",
            ),
            (r#"{"cluster_id": "a", "storage": "#, "config"),
            // Found by the config fuzz target: the key of a value figment refused was leaked
            // (Box::leak) on every error.
            (
                r#"{"cmusencryptiontorage":{"bucket_name":"b"},"heartbeat_interval":500000000,"replicateon":{"quorum":0},"compaction_interval":"1h3--"}"#,
                "compaction_interval",
            ),
            // Found while writing the config fuzz target: the product used to panic
            // ("overflow when multiplying duration by scalar").
            (
                r#"{"cluster_id":"a","storage":{"bucket_name":"b"},"replication":{"quorum":0},"heartbeat_interval":"500000000000000000s","elector":{"degradation_count":100}}"#,
                "heartbeat_interval",
            ),
            // Found by the config fuzz target: a refused value holding an escaped newline was
            // quoted back with the newline in it.
            (
                r#"{"cluster_id":"a","storage":{"bucket_name":"b","encryption":"customer-m\naged"}}"#,
                "storage.encryption",
            ),
        ];
        for (text, key) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!(e.key, key, "{text}: {e}");
            assert!(!e.to_string().contains('\n'), "one line: {e}");
        }
    }
}
