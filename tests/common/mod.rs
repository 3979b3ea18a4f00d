//! Shared test fixtures: real S3 servers (s3s-fs in-process, Garage out of process), real
//! SQLite files and fresh PostgreSQL databases. Nothing here is a mock.
#![allow(dead_code)]

pub mod origin;
pub mod proxy;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use mirrorctl::config::{BucketConfig, Config, Secret};
use mirrorctl::engine::db::Db;
use mirrorctl::engine::s3::S3Bucket;
use mirrorctl::engine::Ctx;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, usable as a bucket or database name.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{:x}", std::process::id(), t & 0xffff)
}

/// True when scripts/test.sh promised that every server is there: then a missing one fails.
pub fn servers_required() -> bool {
    std::env::var("MIRRORCTL_REQUIRE_SERVERS").is_ok_and(|v| v == "1")
}

/// An S3-compatible endpoint and credentials that tests can create buckets on.
pub struct S3Server {
    pub name: &'static str,
    pub endpoint: String,
    pub key: String,
    pub secret: String,
    _dir: Option<tempfile::TempDir>,
    _task: Option<tokio::task::JoinHandle<()>>,
}

impl S3Server {
    /// A `[buckets.<section>]` table of a config file: `bucket` on this server, path-style, with
    /// its credentials.
    pub fn bucket_toml(&self, section: &str, bucket: &str) -> String {
        format!(
            "[buckets.{section}]\nbucket = \"{bucket}\"\nendpoint = \"{}\"\npath_style = true\n\
             access_key_id = \"{}\"\nsecret_access_key = \"{}\"\n\n",
            self.endpoint, self.key, self.secret
        )
    }

    /// s3s-fs in this process, over a temporary directory.
    pub async fn s3s() -> S3Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let (addr, task) = mirrorctl::demo::start_s3(dir.path(), 0)
            .await
            .expect("start s3s-fs");
        S3Server {
            name: "s3s-fs",
            endpoint: format!("http://{addr}"),
            key: mirrorctl::demo::ACCESS_KEY.into(),
            secret: mirrorctl::demo::SECRET_KEY.into(),
            _dir: Some(dir),
            _task: Some(task),
        }
    }

    /// The Garage server scripts/test.sh started, or `None` when it did not (then a test
    /// should return early, unless `servers_required()`, when it panics).
    pub fn garage() -> Option<S3Server> {
        let endpoint = std::env::var("MIRRORCTL_TEST_GARAGE_ENDPOINT").ok();
        match endpoint {
            Some(endpoint) => Some(S3Server {
                name: "garage",
                endpoint,
                key: std::env::var("MIRRORCTL_TEST_GARAGE_KEY").expect("MIRRORCTL_TEST_GARAGE_KEY"),
                secret: std::env::var("MIRRORCTL_TEST_GARAGE_SECRET")
                    .expect("MIRRORCTL_TEST_GARAGE_SECRET"),
                _dir: None,
                _task: None,
            }),
            None => {
                assert!(
                    !servers_required(),
                    "MIRRORCTL_TEST_GARAGE_ENDPOINT is not set"
                );
                eprintln!("Garage not configured (run scripts/test.sh): skipping the Garage half");
                None
            }
        }
    }

    /// The nodes of the Garage cluster scripts/test.sh started (one `S3Server` per node, all
    /// serving the same buckets), else the single Garage, else `None`.
    pub fn garage_cluster() -> Option<Vec<S3Server>> {
        let Ok(endpoints) = std::env::var("MIRRORCTL_TEST_GARAGE_CLUSTER_ENDPOINTS") else {
            return S3Server::garage().map(|g| vec![g]);
        };
        let key = std::env::var("MIRRORCTL_TEST_GARAGE_CLUSTER_KEY").expect("cluster key");
        let secret = std::env::var("MIRRORCTL_TEST_GARAGE_CLUSTER_SECRET").expect("cluster secret");
        Some(
            endpoints
                .split_whitespace()
                .map(|e| S3Server {
                    name: "garage-cluster",
                    endpoint: e.to_string(),
                    key: key.clone(),
                    secret: secret.clone(),
                    _dir: None,
                    _task: None,
                })
                .collect(),
        )
    }

    /// Both servers: s3s-fs always, Garage when configured.
    pub async fn all() -> Vec<S3Server> {
        let mut v = vec![S3Server::s3s().await];
        v.extend(S3Server::garage());
        v
    }

    pub fn bucket_config(&self, bucket: &str) -> BucketConfig {
        BucketConfig::with_static_keys(bucket, &self.endpoint, &self.key, &self.secret)
    }

    /// A new, empty bucket with a unique name.
    pub async fn new_bucket(&self, prefix: &str) -> (BucketConfig, S3Bucket) {
        let cfg = self.bucket_config(&unique(prefix));
        let b = S3Bucket::connect(&cfg).await.expect("connect");
        b.ensure_bucket().await.expect("create bucket");
        (cfg, b)
    }
}

/// A database for one test: a SQLite file, or a fresh PostgreSQL database.
pub struct TestDb {
    pub url: String,
    pub db: Db,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let db = Db::connect(&url, 4, std::time::Duration::from_secs(5))
            .await
            .expect("sqlite");
        db.migrate().await.expect("migrate sqlite");
        TestDb {
            url,
            db,
            _dir: Some(dir),
        }
    }

    /// A new database on the server at MIRRORCTL_TEST_DATABASE_URL, migrated.
    pub async fn postgres() -> Option<TestDb> {
        let url = empty_postgres().await?;
        let db = Db::connect(&url, 4, std::time::Duration::from_secs(5))
            .await
            .expect("postgres");
        db.migrate().await.expect("migrate postgres");
        Some(TestDb {
            url,
            db,
            _dir: None,
        })
    }

    /// SQLite always, PostgreSQL when configured.
    pub async fn all() -> Vec<TestDb> {
        let mut v = vec![TestDb::sqlite().await];
        v.extend(TestDb::postgres().await);
        v
    }
}

/// The URL of a new, empty database (no schema) on the server at MIRRORCTL_TEST_DATABASE_URL;
/// `None` when PostgreSQL is not configured (an error when servers are required).
pub async fn empty_postgres() -> Option<String> {
    let Ok(admin_url) = std::env::var("MIRRORCTL_TEST_DATABASE_URL") else {
        assert!(
            !servers_required(),
            "MIRRORCTL_TEST_DATABASE_URL is not set"
        );
        eprintln!("PostgreSQL not configured (run scripts/test.sh): skipping the PostgreSQL half");
        return None;
    };
    let name = unique("mt").replace('-', "_");
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create database");
    }
    let mut url = url::Url::parse(&admin_url).expect("url");
    url.set_path(&format!("/{name}"));
    Some(url.to_string())
}

/// A config with the database and a mirror bucket.
pub fn config(db_url: &str, mirror: BucketConfig) -> Config {
    let mut c = Config::default();
    c.database.url = Some(Secret::new(db_url));
    c.buckets.mirror = Some(mirror);
    c
}

/// A context over a test database and config.
pub fn ctx(db: &TestDb, config: Config) -> Ctx {
    Ctx::new(config, db.db.clone(), false)
}

/// The built binary, for tests that run it as a user would.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mirrorctl"))
}

/// The binary with `--config PATH`, as an operator runs it; `MIRRORCTL_DATABASE_URL` is unset
/// so the file's database is the one used.
pub fn command(config: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(binary());
    cmd.arg("--config")
        .arg(config)
        .env_remove("MIRRORCTL_DATABASE_URL");
    cmd
}

/// Writes `text` as `config.toml` in `dir` and returns its path.
pub fn write_config_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// An HTTP client builder for tests, on the TLS provider the program installs.
pub fn http_client() -> reqwest::ClientBuilder {
    mirrorctl::engine::tls::install_provider();
    reqwest::Client::builder()
}
