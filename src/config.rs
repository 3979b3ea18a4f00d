//! Configuration: the TOML file, environment overrides and validation, with secrets redacted.
//!
//! Lookup: `--config PATH` > `$MIRRORCTL_CONFIG` > `<config dir>/config.toml`. An explicit path
//! (flag or variable) must exist; the default path may be absent (then only `MIRRORCTL_DATABASE_URL`
//! and defaults apply, and commands that need a bucket say which key to set).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A configuration problem: names the file, the key and what is wrong (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("config {file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

/// A string that never shows itself in Debug or Display output.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A size in bytes, written "256MiB", "1 GB" or a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => parse_size(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses "256MiB", "1.5 GB", "1024".
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_size::parse_size(s.trim()).map_err(|e| format!("bad size {s:?}: {e} (e.g. \"256MiB\")"))
}

/// A duration written "5s", "300s", "1h 30m".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses "5s", "24h", "7d".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("bad duration {s:?}: {e} (e.g. \"5s\", \"24h\")"))
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub buckets: Buckets,
    #[serde(default)]
    pub origin: OriginConfig,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub tui: TuiConfig,
    #[serde(default)]
    pub serve: ServeConfig,
    #[serde(default)]
    pub s3_front: S3FrontConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
    #[serde(default)]
    pub costs: CostsConfig,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    #[serde(default)]
    pub url: Option<Secret>,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// How long the mutation lock and a running operation's audit row stay claimed without a
    /// heartbeat (renewed every sixth of it).
    #[serde(default = "default_lock_lease")]
    pub lock_lease: HumanDuration,
}

fn default_lock_lease() -> HumanDuration {
    HumanDuration(crate::engine::db::DEFAULT_LOCK_LEASE)
}

fn default_max_connections() -> u32 {
    8
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            max_connections: default_max_connections(),
            connect_timeout: default_connect_timeout(),
            lock_lease: default_lock_lease(),
        }
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.url.as_ref().map(|u| redact_url(u.expose())))
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("lock_lease", &self.lock_lease)
            .finish()
    }
}

/// A database URL with any password replaced, fit to print.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("redacted"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparseable url>".to_string(),
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Buckets {
    pub mirror: Option<BucketConfig>,
    pub main: Option<BucketConfig>,
    pub backup: Option<BucketConfig>,
    pub archive: Option<BucketConfig>,
    pub origin: Option<BucketConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    pub bucket: String,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    #[serde(default)]
    pub path_style: bool,
    #[serde(default)]
    pub access_key_id: Option<Secret>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub prefix: String,
    #[serde(default = "default_request_timeout")]
    pub timeout: HumanDuration,
    #[serde(default = "default_multipart_threshold")]
    pub multipart_threshold: ByteSize,
    #[serde(default = "default_part_size")]
    pub part_size: ByteSize,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_request_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_multipart_threshold() -> ByteSize {
    ByteSize(16 * 1024 * 1024)
}
fn default_part_size() -> ByteSize {
    ByteSize(8 * 1024 * 1024)
}

impl BucketConfig {
    /// A bucket on a custom endpoint with static keys (the demo and tests use this).
    pub fn with_static_keys(bucket: &str, endpoint: &str, key: &str, secret: &str) -> Self {
        BucketConfig {
            bucket: bucket.to_string(),
            endpoint: Some(endpoint.to_string()),
            region: default_region(),
            path_style: true,
            access_key_id: Some(Secret::new(key)),
            secret_access_key: Some(Secret::new(secret)),
            profile: None,
            prefix: String::new(),
            timeout: default_request_timeout(),
            multipart_threshold: default_multipart_threshold(),
            part_size: default_part_size(),
        }
    }

    /// Where this bucket lives, for messages: the endpoint or "AWS".
    pub fn endpoint_label(&self) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| format!("AWS {}", self.region))
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OriginKind {
    #[default]
    Http,
    S3,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginConfig {
    #[serde(default)]
    pub kind: OriginKind,
    /// Relative `origin_files.url` values are resolved against this; with `serve.pull_through`
    /// a key the catalog does not know is fetched from `base_url + key`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// An HTTP origin's catalog: a JSON Lines manifest that `catalog sync` reads.
    #[serde(default)]
    pub catalog_url: Option<String>,
    /// Key prefixes pull-through may fetch (empty: any key).
    #[serde(default)]
    pub allow_prefixes: Vec<String>,
    #[serde(default = "default_origin_timeout")]
    pub timeout: HumanDuration,
    #[serde(default = "default_max_file_size")]
    pub max_file_size: ByteSize,
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_origin_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_max_file_size() -> ByteSize {
    ByteSize(256 * 1024 * 1024)
}
fn default_retries() -> u32 {
    3
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            kind: OriginKind::Http,
            base_url: None,
            catalog_url: None,
            allow_prefixes: Vec::new(),
            timeout: default_origin_timeout(),
            max_file_size: default_max_file_size(),
            retries: default_retries(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default = "default_unused_days")]
    pub unused_days: u32,
    #[serde(default = "default_validate_recent_days")]
    pub validate_recent_days: u32,
    #[serde(default = "default_archive_after_months")]
    pub archive_after_months: u32,
    #[serde(default = "default_max_delete")]
    pub max_delete: u64,
    /// `archive health` fails when reading an archived month back takes longer.
    #[serde(default = "default_archive_health_threshold")]
    pub archive_health_threshold: HumanDuration,
}

fn default_unused_days() -> u32 {
    90
}
fn default_validate_recent_days() -> u32 {
    30
}
fn default_archive_after_months() -> u32 {
    3
}
fn default_max_delete() -> u64 {
    1000
}
fn default_archive_health_threshold() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            unused_days: default_unused_days(),
            validate_recent_days: default_validate_recent_days(),
            archive_after_months: default_archive_after_months(),
            max_delete: default_max_delete(),
            archive_health_threshold: default_archive_health_threshold(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ThemeName {
    #[default]
    Dark,
    Light,
    Mono,
}

/// The zone the terminal UI shows times in; each time carries its label either way.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TimeZoneName {
    #[default]
    Utc,
    Local,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuiConfig {
    #[serde(default = "default_refresh")]
    pub refresh: HumanDuration,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub theme: ThemeName,
    #[serde(default)]
    pub timezone: TimeZoneName,
}

fn default_refresh() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

impl Default for TuiConfig {
    fn default() -> Self {
        TuiConfig {
            refresh: default_refresh(),
            read_only: false,
            theme: ThemeName::Dark,
            timezone: TimeZoneName::Utc,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Run `validate` (recently downloaded files) this often; off when unset.
    #[serde(default)]
    pub validate_every: Option<HumanDuration>,
    /// Purge files unused for `policy.unused_days` this often; off when unset.
    #[serde(default)]
    pub purge_unused_every: Option<HumanDuration>,
    /// Archive months older than `policy.archive_after_months` this often; off when unset.
    #[serde(default)]
    pub archive_every: Option<HumanDuration>,
    /// Requests per second allowed to one client address; 0 turns the limit off.
    #[serde(default)]
    pub rate_limit: f64,
    /// Requests a client may make in a burst above `rate_limit`.
    #[serde(default = "default_rate_burst")]
    pub rate_burst: u32,
    /// Where a miss spools the origin's body while it is served and uploaded (default: the
    /// system's temporary directory). Needs room for the largest file being fetched.
    #[serde(default)]
    pub spool_dir: Option<PathBuf>,
    /// Download events are written in batches at least this often.
    #[serde(default = "default_event_flush")]
    pub event_flush: HumanDuration,
    /// On shutdown, how long in-flight downloads and uploads may take to finish.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: HumanDuration,
    /// Fetch keys the catalog does not know from `origin.base_url + key` (default: on when
    /// `origin.base_url` is set).
    #[serde(default)]
    pub pull_through: Option<bool>,
    /// How long a key the origin answered 404 for is answered 404 without asking again.
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: HumanDuration,
    /// Where the admin API (`PUT /catalog/{source}/{remote_id}`, `POST /catalog`) listens;
    /// off when unset. Never the public download port.
    #[serde(default)]
    pub admin_listen: Option<String>,
    /// The bearer token the admin API requires.
    #[serde(default)]
    pub admin_token: Option<Secret>,
    /// Run `catalog sync` this often; off when unset.
    #[serde(default)]
    pub catalog_sync_every: Option<HumanDuration>,
    /// A connection that has not sent a request's headers within this time is closed.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: HumanDuration,
    /// A kept-alive connection with no request for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// Client connections open at once; beyond it new ones wait to be accepted.
    #[serde(default = "default_serve_max_connections")]
    pub max_connections: usize,
    /// Misses fetching from the origin at once; beyond it a miss gets 503 with `Retry-After`.
    #[serde(default = "default_max_fills")]
    pub max_fills: usize,
    /// Addresses (or CIDR ranges) of the proxies whose `X-Forwarded-For` names the client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// How other replicas reach this one's admin listener for a fill in flight (default:
    /// `http://<admin_listen>` when that is a specific address).
    #[serde(default)]
    pub peer_url: Option<String>,
    /// Where the S3 API of the front (writes to the main bucket, replicated to the backup)
    /// listens; off when unset. Clients sign with the keys of `[[s3_front.clients]]`.
    #[serde(default)]
    pub s3_listen: Option<String>,
}

impl ServeConfig {
    /// Whether `GET /files/{key}` may fetch a key the catalog does not know.
    pub fn pull_through_on(&self, origin: &OriginConfig) -> bool {
        origin.base_url.is_some() && self.pull_through.unwrap_or(true)
    }

    /// `trusted_proxies` parsed: each an address (`10.0.0.5`, `::1`) or a CIDR range
    /// (`10.0.0.0/8`).
    pub fn trusted_proxy_nets(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.trusted_proxies
            .iter()
            .map(|p| {
                p.trim()
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| p.trim().parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        format!(
                            "key `serve.trusted_proxies`: bad entry {p:?} (expected an address or a CIDR range, e.g. \"10.0.0.0/8\")"
                        )
                    })
            })
            .collect()
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_rate_burst() -> u32 {
    20
}
/// As often as the TUI refreshes by default: flushing more often buys the dashboards nothing,
/// and a batch costs per file it touches (about one page of the per-file index each), so
/// larger batches cost less per event (SQLite under ~3,000 hits a second over 1,000 files:
/// 17–26 µs of writer CPU per event at 1 s, 8–10 µs at 5 s; BENCHMARKS.md, run M).
fn default_event_flush() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_shutdown_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_negative_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_header_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_serve_max_connections() -> usize {
    10_000
}
fn default_max_fills() -> usize {
    64
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: default_listen(),
            validate_every: None,
            purge_unused_every: None,
            archive_every: None,
            rate_limit: 0.0,
            rate_burst: default_rate_burst(),
            spool_dir: None,
            event_flush: default_event_flush(),
            shutdown_timeout: default_shutdown_timeout(),
            pull_through: None,
            negative_ttl: default_negative_ttl(),
            admin_listen: None,
            admin_token: None,
            catalog_sync_every: None,
            header_timeout: default_header_timeout(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_serve_max_connections(),
            max_fills: default_max_fills(),
            trusted_proxies: Vec::new(),
            peer_url: None,
            s3_listen: None,
        }
    }
}

/// The S3 front (`serve.s3_listen`, seed 004): apps talk plain S3 to it with keys it issues;
/// it forwards to the main bucket with the bucket's own credentials, records each write in
/// `backup_inventory` with a replication task, and its workers copy main -> backup.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3FrontConfig {
    /// The region clients sign their requests for.
    #[serde(default = "default_front_region")]
    pub region: String,
    /// Replication tasks copied at once by each serve process (0: this process replicates
    /// nothing; others on the database still do).
    #[serde(default = "default_replication_workers")]
    pub replication_workers: usize,
    /// Attempts before a task is marked failed; it then waits for `replication retry`.
    #[serde(default = "default_replication_attempts")]
    pub max_attempts: u32,
    /// The keys clients sign with, each allowed some buckets.
    #[serde(default)]
    pub clients: Vec<FrontClient>,
}

/// One client of the S3 front.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontClient {
    /// Who it is, for logs and the audit of failures.
    pub name: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// The bucket names it may use (the front serves the main bucket under its own name).
    pub buckets: Vec<String>,
}

fn default_front_region() -> String {
    "us-east-1".into()
}
fn default_replication_workers() -> usize {
    16
}
/// With retries 1 s apart doubling to 1 min: about 25 minutes of failures.
fn default_replication_attempts() -> u32 {
    30
}

impl Default for S3FrontConfig {
    fn default() -> Self {
        S3FrontConfig {
            region: default_front_region(),
            replication_workers: default_replication_workers(),
            max_attempts: default_replication_attempts(),
            clients: Vec::new(),
        }
    }
}

/// `[alerts]`: the thresholds `check` and the dashboard compare against. Each key is the
/// critical threshold and its `warn_` twin the warning one; every key is optional and an unset
/// one is not checked.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Hit rate (0..1) of the window under which it is critical / a warning.
    pub hit_rate_below: Option<f64>,
    pub warn_hit_rate_below: Option<f64>,
    /// Error rate (0..1) of the window over which it is critical / a warning.
    pub error_rate_above: Option<f64>,
    pub warn_error_rate_above: Option<f64>,
    /// Storage cost per month (in `costs.currency`) over which it is critical / a warning.
    pub storage_cost_above: Option<f64>,
    pub warn_storage_cost_above: Option<f64>,
    /// The last successful `validate` older than this (or none at all) is critical / a warning.
    pub validation_older_than: Option<HumanDuration>,
    pub warn_validation_older_than: Option<HumanDuration>,
    /// The replication lag (age of the oldest task not done) over this is critical / a warning.
    pub replication_lag_above: Option<HumanDuration>,
    pub warn_replication_lag_above: Option<HumanDuration>,
}

impl AlertsConfig {
    /// Whether any threshold is set.
    pub fn any(&self) -> bool {
        self != &AlertsConfig::default()
    }
}

/// `[costs]`: prices for the cost estimates. GB is 10^9 bytes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CostsConfig {
    /// A label printed with amounts ("USD", "EUR", "$").
    #[serde(default = "default_currency")]
    pub currency: String,
    /// Price of one GB stored for a month in the mirror bucket.
    pub storage_per_gb_month: Option<f64>,
    /// Price of one GB fetched from the origin (its egress): each byte served from the mirror
    /// instead saves it.
    pub egress_per_gb: Option<f64>,
    /// Price of 1,000 GET requests to the mirror bucket: each hit costs one.
    pub per_1000_requests: Option<f64>,
}

fn default_currency() -> String {
    "USD".into()
}

impl Default for CostsConfig {
    fn default() -> Self {
        CostsConfig {
            currency: default_currency(),
            storage_per_gb_month: None,
            egress_per_gb: None,
            per_1000_requests: None,
        }
    }
}

impl CostsConfig {
    /// Whether any price is set.
    pub fn any(&self) -> bool {
        self.storage_per_gb_month.is_some()
            || self.egress_per_gb.is_some()
            || self.per_1000_requests.is_some()
    }
}

/// Where the configuration was found, for messages.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    Defaults,
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "{}", p.display()),
            ConfigSource::Defaults => f.write_str("(no config file)"),
        }
    }
}

/// The default config path from the platform's config directory.
pub fn default_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "mirrorctl").map(|d| d.config_dir().join("config.toml"))
}

/// Loads the configuration following the documented lookup order and applies env overrides.
pub fn load(explicit: Option<&Path>) -> Result<(Config, ConfigSource), ConfigError> {
    let env_path = std::env::var_os("MIRRORCTL_CONFIG").map(PathBuf::from);
    let (path, strict) = match (explicit, env_path) {
        (Some(p), _) => (Some(p.to_path_buf()), true),
        (None, Some(p)) => (Some(p), true),
        (None, None) => (default_path(), false),
    };
    let (mut config, source) = match path {
        Some(p) if strict || p.exists() => (load_file(&p)?, ConfigSource::File(p)),
        _ => (Config::default(), ConfigSource::Defaults),
    };
    if let Ok(url) = std::env::var("MIRRORCTL_DATABASE_URL") {
        if !url.is_empty() {
            config.database.url = Some(Secret::new(url));
        }
    }
    validate(&config).map_err(|message| ConfigError {
        file: source.to_string(),
        message,
    })?;
    Ok((config, source))
}

/// Reads and parses one file; the error names the file and the key.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        message: format!("cannot read: {e}"),
    })?;
    parse(&text).map_err(|message| ConfigError { file, message })
}

/// Parses TOML text into a Config; the error names the key and what is wrong.
pub fn parse(text: &str) -> Result<Config, String> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.message().replace('\n', " ");
        let line = inner
            .span()
            .map(|s| text.get(..s.start).unwrap_or(text).matches('\n').count() + 1);
        match (key.as_str(), line) {
            ("." | "", Some(l)) => format!("line {l}: {msg}"),
            ("." | "", None) => msg,
            (k, Some(l)) => format!("key `{k}` (line {l}): {msg}"),
            (k, None) => format!("key `{k}`: {msg}"),
        }
    })
}

/// Checks values that parse but cannot work.
pub fn validate(c: &Config) -> Result<(), String> {
    if let Some(url) = &c.database.url {
        check_database_url(url.expose()).map_err(|m| format!("key `database.url`: {m}"))?;
    }
    if c.database.max_connections == 0 {
        return Err("key `database.max_connections`: must be at least 1".into());
    }
    if c.database.lock_lease.0 < std::time::Duration::from_secs(2) {
        return Err("key `database.lock_lease`: must be at least 2s".into());
    }
    for (name, b) in [
        ("mirror", &c.buckets.mirror),
        ("main", &c.buckets.main),
        ("backup", &c.buckets.backup),
        ("archive", &c.buckets.archive),
        ("origin", &c.buckets.origin),
    ] {
        let Some(b) = b else { continue };
        if b.bucket.trim().is_empty() {
            return Err(format!("key `buckets.{name}.bucket`: must not be empty"));
        }
        if let Some(ep) = &b.endpoint {
            match url::Url::parse(ep) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => {
                    return Err(format!(
                        "key `buckets.{name}.endpoint`: bad URL {ep:?} (expected http:// or https://host:port)"
                    ))
                }
            }
        }
        if b.access_key_id.is_some() != b.secret_access_key.is_some() {
            return Err(format!(
                "key `buckets.{name}`: set both access_key_id and secret_access_key, or neither"
            ));
        }
        if b.part_size.0 < 5 * 1024 * 1024 {
            return Err(format!(
                "key `buckets.{name}.part_size`: must be at least 5MiB (S3's minimum part size)"
            ));
        }
    }
    if let Some(base) = &c.origin.base_url {
        match url::Url::parse(base) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => return Err(format!("key `origin.base_url`: bad URL {base:?}")),
        }
    }
    if let Some(u) = &c.origin.catalog_url {
        match url::Url::parse(u) {
            Ok(p) if matches!(p.scheme(), "http" | "https") => {}
            _ => match &c.origin.base_url {
                Some(_) if url::Url::parse(u) == Err(url::ParseError::RelativeUrlWithoutBase) => {}
                _ => {
                    return Err(format!(
                        "key `origin.catalog_url`: bad URL {:?}",
                        crate::engine::origin::redact_query(u)
                    ))
                }
            },
        }
    }
    for p in &c.origin.allow_prefixes {
        if p.is_empty() || p.starts_with('/') || p.chars().any(char::is_control) {
            return Err(format!(
                "key `origin.allow_prefixes`: bad prefix {p:?} (a key prefix like \"pkgs/\", no leading '/')"
            ));
        }
    }
    if c.serve.pull_through == Some(true) && c.origin.base_url.is_none() {
        return Err(
            "key `serve.pull_through`: needs origin.base_url (where unknown keys are fetched from)"
                .into(),
        );
    }
    if let Some(admin) = &c.serve.admin_listen {
        let addr = admin.parse::<std::net::SocketAddr>().map_err(|_| {
            format!("key `serve.admin_listen`: bad address {admin:?} (expected IP:PORT, e.g. \"127.0.0.1:8081\")")
        })?;
        if Some(addr) == c.serve.listen.parse().ok() && addr.port() != 0 {
            return Err(
                "key `serve.admin_listen`: must not be the public download address serve.listen"
                    .into(),
            );
        }
        match &c.serve.admin_token {
            Some(t) if t.expose().len() >= 16 => {}
            Some(_) => return Err("key `serve.admin_token`: must be at least 16 characters".into()),
            None => return Err("key `serve.admin_listen`: needs serve.admin_token (the bearer token the admin API requires)".into()),
        }
    }
    if c.origin.kind == OriginKind::S3 && c.buckets.origin.is_none() {
        return Err("key `origin.kind`: \"s3\" needs a [buckets.origin] section".into());
    }
    if c.tui.refresh.0 < Duration::from_millis(200) {
        return Err("key `tui.refresh`: must be at least 200ms".into());
    }
    if c.serve.listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(format!(
            "key `serve.listen`: bad address {:?} (expected IP:PORT, e.g. \"127.0.0.1:8080\")",
            c.serve.listen
        ));
    }
    for (name, every) in [
        ("validate_every", c.serve.validate_every),
        ("purge_unused_every", c.serve.purge_unused_every),
        ("archive_every", c.serve.archive_every),
        ("catalog_sync_every", c.serve.catalog_sync_every),
    ] {
        if every.is_some_and(|d| d.0 < Duration::from_secs(60)) {
            return Err(format!("key `serve.{name}`: must be at least 1m"));
        }
    }
    if !c.serve.rate_limit.is_finite() || c.serve.rate_limit < 0.0 {
        return Err(
            "key `serve.rate_limit`: must be 0 (off) or a positive number of requests per second"
                .into(),
        );
    }
    if c.serve.rate_limit > 0.0 && c.serve.rate_burst == 0 {
        return Err("key `serve.rate_burst`: must be at least 1".into());
    }
    c.serve.trusted_proxy_nets()?;
    if c.serve.max_connections == 0 {
        return Err("key `serve.max_connections`: must be at least 1".into());
    }
    for (name, d) in [
        ("header_timeout", c.serve.header_timeout),
        ("idle_timeout", c.serve.idle_timeout),
    ] {
        if d.0.is_zero() {
            return Err(format!("key `serve.{name}`: must be more than 0s"));
        }
    }
    validate_front(c)?;
    validate_alerts(&c.alerts, &c.costs)
}

/// Rates are fractions, prices and amounts not negative, and a warning threshold comes before
/// its critical one.
fn validate_alerts(a: &AlertsConfig, costs: &CostsConfig) -> Result<(), String> {
    for (name, v) in [
        ("hit_rate_below", a.hit_rate_below),
        ("warn_hit_rate_below", a.warn_hit_rate_below),
        ("error_rate_above", a.error_rate_above),
        ("warn_error_rate_above", a.warn_error_rate_above),
    ] {
        if v.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
            return Err(format!(
                "key `alerts.{name}`: a fraction between 0 and 1 (0.70 is 70 %)"
            ));
        }
    }
    let amounts = [
        ("alerts.storage_cost_above", a.storage_cost_above),
        ("alerts.warn_storage_cost_above", a.warn_storage_cost_above),
        ("costs.storage_per_gb_month", costs.storage_per_gb_month),
        ("costs.egress_per_gb", costs.egress_per_gb),
        ("costs.per_1000_requests", costs.per_1000_requests),
    ];
    for (key, v) in amounts {
        if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
            return Err(format!("key `{key}`: must be a number of at least 0"));
        }
    }
    if costs.currency.trim().is_empty() {
        return Err("key `costs.currency`: must not be empty (e.g. \"USD\")".into());
    }
    let below = [("hit_rate_below", a.warn_hit_rate_below, a.hit_rate_below)];
    for (name, warn, crit) in below {
        if let (Some(w), Some(c)) = (warn, crit) {
            if w < c {
                return Err(format!(
                    "key `alerts.warn_{name}`: must be at least alerts.{name} ({c}): the warning comes first"
                ));
            }
        }
    }
    let secs = |d: Option<HumanDuration>| d.map(|d| d.0.as_secs_f64());
    let above = [
        (
            "error_rate_above",
            a.warn_error_rate_above,
            a.error_rate_above,
        ),
        (
            "storage_cost_above",
            a.warn_storage_cost_above,
            a.storage_cost_above,
        ),
        (
            "validation_older_than",
            secs(a.warn_validation_older_than),
            secs(a.validation_older_than),
        ),
        (
            "replication_lag_above",
            secs(a.warn_replication_lag_above),
            secs(a.replication_lag_above),
        ),
    ];
    for (name, warn, crit) in above {
        if let (Some(w), Some(c)) = (warn, crit) {
            if w > c {
                return Err(format!(
                    "key `alerts.warn_{name}`: must not exceed alerts.{name}: the warning comes first"
                ));
            }
        }
    }
    for (name, set) in [
        ("storage_cost_above", a.storage_cost_above.is_some()),
        (
            "warn_storage_cost_above",
            a.warn_storage_cost_above.is_some(),
        ),
    ] {
        if set && costs.storage_per_gb_month.is_none() {
            return Err(format!(
                "key `alerts.{name}`: needs costs.storage_per_gb_month (the price the cost is computed from)"
            ));
        }
    }
    Ok(())
}

/// The S3 front's keys: a listener needs clients and a backup to replicate to; every client
/// names only the bucket the front serves (the main bucket).
fn validate_front(c: &Config) -> Result<(), String> {
    let f = &c.s3_front;
    let served = c.main_bucket().ok().map(|b| b.bucket.as_str());
    let mut seen = std::collections::HashSet::new();
    for (i, client) in f.clients.iter().enumerate() {
        let key = format!("s3_front.clients[{i}]");
        if client.name.trim().is_empty() {
            return Err(format!("key `{key}.name`: must not be empty"));
        }
        let id = client.access_key_id.as_str();
        if id.len() < 3 || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!(
                "key `{key}.access_key_id`: 3 to 128 letters and digits (S3 access key ids have no other characters)"
            ));
        }
        if !seen.insert(id) {
            return Err(format!(
                "key `{key}.access_key_id`: {id:?} is given to two clients"
            ));
        }
        if client.secret_access_key.expose().len() < 16 {
            return Err(format!(
                "key `{key}.secret_access_key`: must be at least 16 characters"
            ));
        }
        if client.buckets.is_empty() {
            return Err(format!(
                "key `{key}.buckets`: name the buckets this client may use"
            ));
        }
        for b in &client.buckets {
            if Some(b.as_str()) != served {
                return Err(format!(
                    "key `{key}.buckets`: {b:?} is not served by the front (it serves the main bucket, {})",
                    served.map_or("none configured".to_string(), |s| format!("{s:?}"))
                ));
            }
        }
    }
    if f.max_attempts == 0 {
        return Err("key `s3_front.max_attempts`: must be at least 1".into());
    }
    if f.region.trim().is_empty() {
        return Err("key `s3_front.region`: must not be empty".into());
    }
    let Some(listen) = &c.serve.s3_listen else {
        return Ok(());
    };
    let addr = listen.parse::<std::net::SocketAddr>().map_err(|_| {
        format!("key `serve.s3_listen`: bad address {listen:?} (expected IP:PORT, e.g. \"127.0.0.1:9000\")")
    })?;
    let taken = [
        Some(c.serve.listen.as_str()),
        c.serve.admin_listen.as_deref(),
    ];
    if addr.port() != 0 && taken.iter().flatten().any(|t| t.parse().ok() == Some(addr)) {
        return Err(
            "key `serve.s3_listen`: must differ from serve.listen and serve.admin_listen".into(),
        );
    }
    if f.clients.is_empty() {
        return Err("key `serve.s3_listen`: needs at least one [[s3_front.clients]] (the keys apps sign with)".into());
    }
    if c.buckets.backup.is_none() {
        return Err(
            "key `serve.s3_listen`: needs [buckets.backup] (where the front replicates writes)"
                .into(),
        );
    }
    Ok(())
}

/// Accepts postgres://, postgresql:// and sqlite: URLs.
pub fn check_database_url(url: &str) -> Result<(), String> {
    if url.starts_with("sqlite:") {
        return Ok(());
    }
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") && u.host().is_some() => Ok(()),
        Ok(u) => Err(format!(
            "unsupported scheme {:?} (expected postgres:// or sqlite://)",
            u.scheme()
        )),
        Err(e) => Err(format!("bad URL: {e}")),
    }
}

impl Config {
    /// The mirror bucket, or a usage error naming the key to set.
    pub fn mirror_bucket(&self) -> Result<&BucketConfig, String> {
        self.buckets.mirror.as_ref().ok_or_else(|| {
            "no mirror bucket configured: set [buckets.mirror] bucket = \"...\"".into()
        })
    }
    /// The main copy for drift: `buckets.main`, else the mirror bucket.
    pub fn main_bucket(&self) -> Result<&BucketConfig, String> {
        match &self.buckets.main {
            Some(b) => Ok(b),
            None => self.mirror_bucket(),
        }
    }
    /// The backup copy for drift.
    pub fn backup_bucket(&self) -> Result<&BucketConfig, String> {
        self.buckets.backup.as_ref().ok_or_else(|| {
            "no backup bucket configured: set [buckets.backup] bucket = \"...\"".into()
        })
    }
    /// Where archives go: `buckets.archive`, else the mirror bucket under `archive/`.
    pub fn archive_bucket(&self) -> Result<BucketConfig, String> {
        match &self.buckets.archive {
            Some(b) => Ok(b.clone()),
            None => {
                let mut b = self.mirror_bucket()?.clone();
                b.prefix = "archive/".into();
                Ok(b)
            }
        }
    }
    pub fn database_url(&self) -> Result<&str, String> {
        self.database
            .url
            .as_ref()
            .map(|s| s.expose())
            .ok_or_else(|| {
                "no database configured: set [database] url = \"...\" or MIRRORCTL_DATABASE_URL"
                    .into()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[database]\nurl = \"sqlite://x.db\"\nmax_conections = 3\n").unwrap_err();
        assert!(err.contains("max_conections"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = parse("[database]\nmax_connections = \"many\"\n").unwrap_err();
        assert!(err.contains("database.max_connections"), "{err}");
    }

    #[test]
    fn sizes_and_durations_parse() {
        let c = parse("[origin]\nmax_file_size = \"256MiB\"\ntimeout = \"5s\"\n").unwrap();
        assert_eq!(c.origin.max_file_size.0, 256 * 1024 * 1024);
        assert_eq!(c.origin.timeout.0, Duration::from_secs(5));
        let err = parse("[origin]\nmax_file_size = \"lots\"\n").unwrap_err();
        assert!(err.contains("origin.max_file_size"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let c = parse(
            "[database]\nurl = \"postgres://u:hunter2@db/x\"\n[buckets.mirror]\nbucket = \"b\"\naccess_key_id = \"AKIAXX\"\nsecret_access_key = \"topsecret\"\n",
        )
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("topsecret") && !dbg.contains("AKIAXX"),
            "{dbg}"
        );
    }

    #[test]
    fn bad_urls_are_refused() {
        let c = parse("[database]\nurl = \"mysql://x/y\"\n").unwrap();
        assert!(validate(&c).unwrap_err().contains("database.url"));
        let c = parse("[buckets.mirror]\nbucket = \"b\"\nendpoint = \"not a url\"\n").unwrap();
        assert!(validate(&c)
            .unwrap_err()
            .contains("buckets.mirror.endpoint"));
    }
}

#[cfg(test)]
mod example_tests {
    /// The documented example must stay a valid config.
    #[test]
    fn example_config_parses() {
        let text = include_str!("../config.example.toml");
        let c = super::parse(text).expect("config.example.toml parses");
        super::validate(&c).expect("config.example.toml validates");
    }
}
