//! Building the object store from typed configuration plus the providers' standard environment.
//!
//! Providers:
//! * `s3` — `AmazonS3Builder` fed with every `AWS_*` variable object_store understands
//!   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//!   `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL_STS`,
//!   `AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN`, `AWS_ROLE_SESSION_NAME`,
//!   `AWS_CONTAINER_CREDENTIALS_*`, …), then:
//!   - addressing: `AWS_S3_USE_PATH_STYLE=true` → path style; otherwise virtual-hosted (as the
//!     AWS SDK), unless `AWS_VIRTUAL_HOSTED_STYLE_REQUEST` says otherwise. With a custom
//!     endpoint and virtual-hosted style the bucket is prepended to the endpoint's host.
//!   - `http://` endpoints are allowed automatically (loopback S3 servers).
//!   - `AWS_ROLE_SESSION_NAME` defaults to `netsy-session`.
//!   - conditional puts: always `If-None-Match` / `If-Match` (`S3ConditionalPut::ETagMatch`).
//!   - `storage.class` → `x-amz-storage-class` on every put; `storage.encryption`
//!     `provider-managed` → SSE-S3 (`AES256`), `customer-managed` → SSE-KMS with `kms_key_id`.
//!
//!   Gap: object_store 0.14 assumes `AWS_ROLE_ARN` only together with
//!   `AWS_WEB_IDENTITY_TOKEN_FILE` (IRSA); a plain STS AssumeRole from other credentials (the
//!   original's behaviour) is not available, so that combination is refused with an
//!   explanation rather than silently using the base identity.
//! * `gcs` — `GoogleCloudStorageBuilder` from `GOOGLE_*` (`GOOGLE_APPLICATION_CREDENTIALS`,
//!   `GOOGLE_SERVICE_ACCOUNT[_KEY]`); storage class on every put. Gap: no per-object KMS key
//!   in object_store, so `customer-managed` is refused (use the bucket's default CMEK key and
//!   `provider-managed`).
//! * `azure` — `MicrosoftAzureBuilder` from `AZURE_*` (account, keys, SAS, workload identity);
//!   `bucket_name` is the container. `storage.class` is used as the access tier only if it is
//!   `Hot`, `Cool`, `Cold` or `Archive`. `customer-managed` is refused (encryption scopes are
//!   not exposed by object_store).
//! * `local` — [`super::local::LocalDirStore`] in `local_dir` (create-only and If-Match across
//!   processes; fsync'd). No attributes.
//! * `memory` — object_store's `InMemory` (tests, single process).
//!
//! Every HTTP backend gets a short internal retry (object_store's own: 2 retries within 10 s)
//! and request/connect timeouts; the outer [`super::retry`] layer bounds attempts overall.
//! Must never: read credentials from anywhere but the providers' standard chains, or log them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, BackoffConfig, ClientOptions, RetryConfig,
};
use serde::{Deserialize, Serialize};

use super::attributes::DefaultAttributes;
use super::local::LocalDirStore;
use super::{DynStore, Error};

/// Which backend (`storage.provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// AWS S3 or an S3-compatible server (default).
    #[default]
    S3,
    /// Google Cloud Storage.
    Gcs,
    /// Azure Blob Storage.
    Azure,
    /// A local directory.
    Local,
    /// In-process memory (tests; never from a config file).
    #[serde(skip)]
    Memory,
}

impl Provider {
    /// The name in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Provider::S3 => "s3",
            Provider::Gcs => "gcs",
            Provider::Azure => "azure",
            Provider::Local => "local",
            Provider::Memory => "memory",
        }
    }

    /// The `storage.class` values this provider accepts. Azure's access tiers are ours; the
    /// original knows only `STANDARD` there.
    pub fn classes(self) -> &'static [&'static str] {
        match self {
            Provider::S3 => &["STANDARD", "STANDARD_IA", "INTELLIGENT_TIERING"],
            Provider::Azure => &["STANDARD", "Hot", "Cool", "Cold", "Archive"],
            Provider::Gcs | Provider::Local | Provider::Memory => &["STANDARD"],
        }
    }
}

/// Server-side encryption (`storage.encryption`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encryption {
    /// Provider-managed keys (S3: SSE-S3 `AES256`).
    #[default]
    ProviderManaged,
    /// Customer-managed KMS key `kms_key_id` (S3: SSE-KMS).
    CustomerManaged,
}

/// The `storage.*` keys of the cluster config file, typed: the one storage configuration (the
/// config file deserializes into it; [`StorageConfig::validate`] is the one set of rules).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageConfig {
    /// `storage.provider`.
    pub provider: Provider,
    /// `storage.bucket_name` (container for Azure; unused for local/memory).
    pub bucket_name: String,
    /// `storage.key_prefix`.
    pub key_prefix: String,
    /// `storage.class` (default `STANDARD`).
    pub class: String,
    /// `storage.encryption`.
    pub encryption: Encryption,
    /// `storage.kms_key_id` (required for customer-managed).
    #[serde(deserialize_with = "empty_is_none")]
    pub kms_key_id: Option<String>,
    /// `storage.path`: the directory of the `local` provider.
    #[serde(rename = "path")]
    pub local_dir: Option<PathBuf>,
    /// Outer retry/timeout policy (not a config key).
    #[serde(skip)]
    pub retry: super::retry::RetryConfig,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            provider: Provider::S3,
            bucket_name: String::new(),
            key_prefix: String::new(),
            class: "STANDARD".to_string(),
            encryption: Encryption::ProviderManaged,
            kms_key_id: None,
            local_dir: None,
            retry: super::retry::RetryConfig::default(),
        }
    }
}

/// Environment variables (a snapshot, so construction is testable).
pub type Env = BTreeMap<String, String>;

/// `""` in the file means unset.
fn empty_is_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v: Option<String> = Option::deserialize(d)?;
    Ok(v.filter(|s| !s.is_empty()))
}

/// The process environment.
pub fn process_env() -> Env {
    std::env::vars().collect()
}

fn env_flag(env: &Env, key: &str) -> Option<bool> {
    env.get(key)
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

fn http_client_options() -> ClientOptions {
    ClientOptions::new()
        .with_timeout(Duration::from_secs(30))
        .with_connect_timeout(Duration::from_secs(5))
}

fn http_retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: Duration::from_secs(10),
    }
}

impl StorageConfig {
    /// Checks the combination of settings (independent of the environment); an error names
    /// its key ([`Error::Setting`]).
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |key: &'static str, message: String| Err(Error::Setting { key, message });
        let provider = self.provider.name();
        if let Err(e) = super::layout::Layout::new(&self.key_prefix) {
            return bad("storage.key_prefix", e.to_string());
        }
        match self.provider {
            Provider::S3 | Provider::Gcs | Provider::Azure
                if self.bucket_name.trim().is_empty() =>
            {
                return bad(
                    "storage.bucket_name",
                    format!("required when storage.provider is {provider:?}"),
                );
            }
            Provider::Local if self.local_dir.is_none() => {
                return bad(
                    "storage.path",
                    "required when storage.provider is \"local\"".into(),
                );
            }
            _ => {}
        }
        if self.encryption == Encryption::CustomerManaged {
            if self
                .kms_key_id
                .as_deref()
                .is_none_or(|k| k.trim().is_empty())
            {
                return bad(
                    "storage.kms_key_id",
                    "required when storage.encryption is \"customer-managed\"".into(),
                );
            }
            let unsupported = match self.provider {
                Provider::S3 => None,
                Provider::Gcs => Some(
                    "not supported on gcs by this build (object_store cannot set a per-object KMS \
                     key); set the bucket's default CMEK key and use \"provider-managed\"",
                ),
                Provider::Azure => Some(
                    "not supported on azure by this build; configure the container's default \
                     encryption scope and use \"provider-managed\"",
                ),
                Provider::Local | Provider::Memory => Some("needs a cloud provider"),
            };
            if let Some(why) = unsupported {
                return bad(
                    "storage.encryption",
                    format!("\"customer-managed\" is {why}"),
                );
            }
        }
        let classes = self.provider.classes();
        let known = match self.provider {
            // Azure's tier names are case-insensitive.
            Provider::Azure => classes.iter().any(|c| c.eq_ignore_ascii_case(&self.class)),
            _ => classes.contains(&self.class.as_str()),
        };
        if !known {
            return bad(
                "storage.class",
                format!(
                    "{:?} is not valid for provider {provider:?} (one of {classes:?})",
                    self.class
                ),
            );
        }
        Ok(())
    }

    /// The S3 builder for this configuration and environment (exposed for tests and tools).
    pub fn s3_builder(&self, env: &Env) -> Result<AmazonS3Builder, Error> {
        // Client options first: with_client_options replaces them all (incl. allow_http).
        let mut b = AmazonS3Builder::new()
            .with_client_options(http_client_options())
            .with_retry(http_retry());
        for (k, v) in env {
            if k.starts_with("AWS_")
                && let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>()
            {
                b = b.with_config(key, v);
            }
        }
        b = b
            .with_bucket_name(&self.bucket_name)
            .with_conditional_put(S3ConditionalPut::ETagMatch);
        if env.contains_key("AWS_ROLE_ARN") && !env.contains_key("AWS_WEB_IDENTITY_TOKEN_FILE") {
            return Err(Error::Config(
                "AWS_ROLE_ARN without AWS_WEB_IDENTITY_TOKEN_FILE: STS AssumeRole from base credentials is \
                 not supported by this build (object_store 0.14); use IRSA (web identity) or credentials \
                 for the role directly"
                    .into(),
            ));
        }
        if !env.contains_key("AWS_ROLE_SESSION_NAME") {
            b = b.with_config(AmazonS3ConfigKey::RoleSessionName, "netsy-session");
        }
        let endpoint = b.get_config_value(&AmazonS3ConfigKey::Endpoint);
        let path_style = env_flag(env, "AWS_S3_USE_PATH_STYLE").unwrap_or(false);
        let virtual_hosted =
            env_flag(env, "AWS_VIRTUAL_HOSTED_STYLE_REQUEST").unwrap_or(!path_style);
        b = b.with_virtual_hosted_style_request(virtual_hosted);
        if let Some(ep) = &endpoint {
            if ep.starts_with("http://") {
                b = b.with_allow_http(true);
            }
            if virtual_hosted && !env.contains_key("AWS_ENDPOINT_URL_S3") {
                b = b.with_endpoint(bucket_in_host(ep, &self.bucket_name)?);
            }
        }
        b = match self.encryption {
            Encryption::ProviderManaged => {
                b.with_config(sse_key("aws_server_side_encryption")?, "AES256")
            }
            Encryption::CustomerManaged => {
                b.with_sse_kms_encryption(self.kms_key_id.clone().unwrap_or_default())
            }
        };
        Ok(b)
    }

    /// The GCS builder for this configuration and environment.
    pub fn gcs_builder(&self, env: &Env) -> GoogleCloudStorageBuilder {
        let mut b = GoogleCloudStorageBuilder::new()
            .with_client_options(http_client_options())
            .with_retry(http_retry());
        for (k, v) in env {
            if k.starts_with("GOOGLE_")
                && let Ok(key) = k.to_ascii_lowercase().parse::<GoogleConfigKey>()
            {
                b = b.with_config(key, v);
            }
        }
        b.with_bucket_name(&self.bucket_name)
    }

    /// The Azure builder for this configuration and environment.
    pub fn azure_builder(&self, env: &Env) -> MicrosoftAzureBuilder {
        let mut b = MicrosoftAzureBuilder::new()
            .with_client_options(http_client_options())
            .with_retry(http_retry());
        for (k, v) in env {
            if k.starts_with("AZURE_")
                && let Ok(key) = k.to_ascii_lowercase().parse::<AzureConfigKey>()
            {
                b = b.with_config(key, v);
            }
        }
        if let Some(ep) = b.get_config_value(&AzureConfigKey::Endpoint)
            && ep.starts_with("http://")
        {
            b = b.with_allow_http(true);
        }
        b.with_container_name(&self.bucket_name)
    }

    /// Attributes added to every write.
    pub fn default_attributes(&self) -> Attributes {
        let mut a = Attributes::new();
        let class = self.class.trim();
        let class = match self.provider {
            Provider::S3 | Provider::Gcs => Some(class),
            Provider::Azure => ["Hot", "Cool", "Cold", "Archive"]
                .into_iter()
                .find(|t| t.eq_ignore_ascii_case(class)),
            Provider::Local | Provider::Memory => None,
        };
        if let Some(c) = class.filter(|c| !c.is_empty()) {
            a.insert(Attribute::StorageClass, AttributeValue::from(c.to_string()));
        }
        a
    }

    /// Builds the backend (without the retry/metrics layers; see [`super::files::ObjectStorage`]).
    pub fn build_backend(&self, env: &Env) -> Result<DynStore, Error> {
        self.validate()?;
        let backend: DynStore = match self.provider {
            Provider::S3 => Arc::new(self.s3_builder(env)?.build().map_err(Error::Store)?),
            Provider::Gcs => Arc::new(self.gcs_builder(env).build().map_err(Error::Store)?),
            Provider::Azure => Arc::new(self.azure_builder(env).build().map_err(Error::Store)?),
            Provider::Local => {
                let dir = self
                    .local_dir
                    .clone()
                    .ok_or_else(|| Error::Config("no local_dir".into()))?;
                return Ok(Arc::new(LocalDirStore::new(dir)?));
            }
            Provider::Memory => return Ok(Arc::new(InMemory::new())),
        };
        let attrs = self.default_attributes();
        Ok(if attrs.is_empty() {
            backend
        } else {
            Arc::new(DefaultAttributes::new(backend, attrs))
        })
    }
}

/// object_store does not export its encryption key enum; keys are reached by name.
fn sse_key(name: &str) -> Result<AmazonS3ConfigKey, Error> {
    name.parse()
        .map_err(|e| Error::Config(format!("object_store has no config key {name}: {e}")))
}

/// `http://host:port/x` + `bucket` → `http://bucket.host:port/x`.
fn bucket_in_host(endpoint: &str, bucket: &str) -> Result<String, Error> {
    let (scheme, rest) = endpoint
        .split_once("://")
        .ok_or_else(|| Error::Config(format!("AWS_ENDPOINT_URL {endpoint:?} has no scheme")))?;
    if rest.starts_with(&format!("{bucket}.")) {
        return Ok(endpoint.to_string());
    }
    Ok(format!("{scheme}://{bucket}.{rest}"))
}

/// Opens `url` (`s3://bucket/key`, `gs://bucket/key`, `az://container/key`) with credentials
/// from the process environment, for tools such as `netsy datafile inspect`.
pub fn open_url(url: &str) -> Result<(DynStore, Path), Error> {
    open_url_with(url, &process_env())
}

/// [`open_url`] with an explicit environment.
pub fn open_url_with(url: &str, env: &Env) -> Result<(DynStore, Path), Error> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Error::Config(format!("not a URL: {url}")))?;
    let (bucket, key) = rest
        .split_once('/')
        .ok_or_else(|| Error::Config(format!("no object key in {url}")))?;
    let provider = match scheme {
        "s3" | "s3a" => Provider::S3,
        "gs" | "gcs" => Provider::Gcs,
        "az" | "azure" | "abfs" | "abfss" => Provider::Azure,
        other => return Err(Error::Config(format!("unsupported URL scheme {other:?}"))),
    };
    let cfg = StorageConfig {
        provider,
        bucket_name: bucket.to_string(),
        ..StorageConfig::default()
    };
    let store: DynStore = match provider {
        Provider::S3 => Arc::new(cfg.s3_builder(env)?.build().map_err(Error::Store)?),
        Provider::Gcs => Arc::new(cfg.gcs_builder(env).build().map_err(Error::Store)?),
        _ => Arc::new(cfg.azure_builder(env).build().map_err(Error::Store)?),
    };
    let location =
        Path::parse(key).map_err(|e| Error::Config(format!("invalid object key {key:?}: {e}")))?;
    Ok((store, location))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn s3(bucket: &str) -> StorageConfig {
        StorageConfig {
            provider: Provider::S3,
            bucket_name: bucket.into(),
            ..Default::default()
        }
    }

    #[test]
    fn s3_from_env_path_style_and_static_keys() {
        let e = env(&[
            ("AWS_ACCESS_KEY_ID", "k"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:8333"),
            ("AWS_S3_USE_PATH_STYLE", "true"),
        ]);
        let b = s3("bkt").s3_builder(&e).unwrap();
        let get = |k| b.get_config_value(&k);
        assert_eq!(get(AmazonS3ConfigKey::Bucket).as_deref(), Some("bkt"));
        assert_eq!(get(AmazonS3ConfigKey::Region).as_deref(), Some("eu-west-1"));
        assert_eq!(
            get(AmazonS3ConfigKey::Endpoint).as_deref(),
            Some("http://127.0.0.1:8333")
        );
        assert_eq!(
            get(AmazonS3ConfigKey::VirtualHostedStyleRequest).as_deref(),
            Some("false")
        );
        assert_eq!(get(AmazonS3ConfigKey::AccessKeyId).as_deref(), Some("k"));
        assert_eq!(
            get(AmazonS3ConfigKey::ConditionalPut).as_deref(),
            Some("etag")
        );
        assert_eq!(
            get(AmazonS3ConfigKey::RoleSessionName).as_deref(),
            Some("netsy-session")
        );
        assert_eq!(
            get(AmazonS3ConfigKey::Client(
                object_store::ClientConfigKey::AllowHttp
            ))
            .as_deref(),
            Some("true")
        );
        assert_eq!(
            get(sse_key("aws_server_side_encryption").unwrap()).as_deref(),
            Some("AES256")
        );
        assert!(b.build().is_ok());
    }

    #[test]
    fn s3_virtual_hosted_by_default_with_bucket_in_endpoint_host() {
        let e = env(&[
            ("AWS_ENDPOINT_URL", "https://s3.example.com"),
            ("AWS_ROLE_SESSION_NAME", "mine"),
        ]);
        let b = s3("bkt").s3_builder(&e).unwrap();
        assert_eq!(
            b.get_config_value(&AmazonS3ConfigKey::VirtualHostedStyleRequest)
                .as_deref(),
            Some("true")
        );
        assert_eq!(
            b.get_config_value(&AmazonS3ConfigKey::Endpoint).as_deref(),
            Some("https://bkt.s3.example.com")
        );
        assert_eq!(
            b.get_config_value(&AmazonS3ConfigKey::RoleSessionName)
                .as_deref(),
            Some("mine")
        );
    }

    #[test]
    fn s3_web_identity_and_kms() {
        let e = env(&[
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token"),
        ]);
        let cfg = StorageConfig {
            encryption: Encryption::CustomerManaged,
            kms_key_id: Some("arn:aws:kms:key".into()),
            class: "STANDARD_IA".into(),
            ..s3("bkt")
        };
        let b = cfg.s3_builder(&e).unwrap();
        assert_eq!(
            b.get_config_value(&AmazonS3ConfigKey::RoleArn).as_deref(),
            Some("arn:aws:iam::1:role/r")
        );
        assert_eq!(
            b.get_config_value(&AmazonS3ConfigKey::WebIdentityTokenFile)
                .as_deref(),
            Some("/var/run/token")
        );
        assert_eq!(
            b.get_config_value(&sse_key("aws_server_side_encryption").unwrap())
                .as_deref(),
            Some("aws:kms")
        );
        assert_eq!(
            b.get_config_value(&sse_key("aws_sse_kms_key_id").unwrap())
                .as_deref(),
            Some("arn:aws:kms:key")
        );
        assert_eq!(
            cfg.default_attributes()
                .get(&Attribute::StorageClass)
                .map(|v| v.to_string())
                .as_deref(),
            Some("STANDARD_IA")
        );
        // Plain AssumeRole is a documented gap: refused, not silently ignored.
        let e = env(&[("AWS_ROLE_ARN", "arn:aws:iam::1:role/r")]);
        assert!(matches!(s3("bkt").s3_builder(&e), Err(Error::Config(_))));
    }

    #[test]
    fn validation() {
        assert!(
            StorageConfig {
                bucket_name: String::new(),
                ..s3("")
            }
            .validate()
            .is_err()
        );
        assert!(
            StorageConfig {
                class: "GLACIER".into(),
                ..s3("b")
            }
            .validate()
            .is_err()
        );
        assert!(
            StorageConfig {
                encryption: Encryption::CustomerManaged,
                ..s3("b")
            }
            .validate()
            .is_err()
        );
        let gcs = StorageConfig {
            provider: Provider::Gcs,
            encryption: Encryption::CustomerManaged,
            kms_key_id: Some("k".into()),
            ..s3("b")
        };
        assert!(gcs.validate().is_err());
        assert!(
            StorageConfig {
                provider: Provider::Local,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            StorageConfig {
                key_prefix: "a//b".into(),
                ..s3("b")
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn gcs_and_azure_builders_read_their_env() {
        let cfg = StorageConfig {
            provider: Provider::Gcs,
            ..s3("gbkt")
        };
        let b = cfg.gcs_builder(&env(&[("GOOGLE_APPLICATION_CREDENTIALS", "/etc/gcp.json")]));
        assert_eq!(
            b.get_config_value(&GoogleConfigKey::Bucket).as_deref(),
            Some("gbkt")
        );
        assert_eq!(
            b.get_config_value(&GoogleConfigKey::ApplicationCredentials)
                .as_deref(),
            Some("/etc/gcp.json")
        );
        assert_eq!(
            cfg.default_attributes()
                .get(&Attribute::StorageClass)
                .map(|v| v.to_string())
                .as_deref(),
            Some("STANDARD")
        );
        let cfg = StorageConfig {
            provider: Provider::Azure,
            ..s3("ctr")
        };
        let b = cfg.azure_builder(&env(&[("AZURE_STORAGE_ACCOUNT_NAME", "acct")]));
        assert_eq!(
            b.get_config_value(&AzureConfigKey::ContainerName)
                .as_deref(),
            Some("ctr")
        );
        assert_eq!(
            b.get_config_value(&AzureConfigKey::AccountName).as_deref(),
            Some("acct")
        );
        assert!(
            cfg.default_attributes().is_empty(),
            "STANDARD is not an Azure access tier"
        );
        let cool = StorageConfig {
            class: "cool".into(),
            ..cfg
        };
        assert_eq!(
            cool.default_attributes()
                .get(&Attribute::StorageClass)
                .map(|v| v.to_string())
                .as_deref(),
            Some("Cool")
        );
    }

    #[test]
    fn local_and_memory_backends_build() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StorageConfig {
            provider: Provider::Local,
            local_dir: Some(dir.path().into()),
            ..Default::default()
        };
        assert!(cfg.build_backend(&Env::new()).is_ok());
        let cfg = StorageConfig {
            provider: Provider::Memory,
            ..Default::default()
        };
        assert!(cfg.build_backend(&Env::new()).is_ok());
    }
}
