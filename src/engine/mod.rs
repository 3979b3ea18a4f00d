//! The core of mirrorctl: database, S3, origin and the operations. Knows nothing of the
//! terminal UI or the command line; both call the same operation functions.

pub mod background;
pub mod db;
pub mod error;
pub mod jobs;
pub mod keys;
pub mod model;
pub mod ops;
pub mod origin;
pub mod s3;
pub mod tls;

use tokio::sync::OnceCell;

use crate::config::{BucketConfig, Config, OriginKind};
use db::Db;
use error::{Error, Result};
use origin::{HttpOrigin, Origin};
use s3::S3Bucket;

/// Everything an operation needs: the configuration, the database, the buckets (connected on
/// first use), who is acting and whether mutations are allowed.
pub struct Ctx {
    pub config: Config,
    pub db: Db,
    pub operator: String,
    pub read_only: bool,
    mirror: OnceCell<S3Bucket>,
    main: OnceCell<S3Bucket>,
    backup: OnceCell<S3Bucket>,
    archive: OnceCell<S3Bucket>,
    origin: OnceCell<Origin>,
}

impl Ctx {
    pub fn new(config: Config, db: Db, read_only: bool) -> Ctx {
        let read_only = read_only || config.tui.read_only;
        Ctx {
            config,
            db,
            operator: default_operator(),
            read_only,
            mirror: OnceCell::new(),
            main: OnceCell::new(),
            backup: OnceCell::new(),
            archive: OnceCell::new(),
            origin: OnceCell::new(),
        }
    }

    async fn bucket(
        cell: &OnceCell<S3Bucket>,
        cfg: std::result::Result<BucketConfig, String>,
    ) -> Result<&S3Bucket> {
        let cfg = cfg.map_err(Error::Usage)?;
        cell.get_or_try_init(|| S3Bucket::connect(&cfg)).await
    }

    /// The configured mirror bucket's name, if any (no connection needed): key lookups look
    /// there.
    pub fn mirror_bucket_name(&self) -> Option<&str> {
        self.config.mirror_bucket().ok().map(|b| b.bucket.as_str())
    }

    pub async fn mirror(&self) -> Result<&S3Bucket> {
        Self::bucket(&self.mirror, self.config.mirror_bucket().cloned()).await
    }
    pub async fn main(&self) -> Result<&S3Bucket> {
        Self::bucket(&self.main, self.config.main_bucket().cloned()).await
    }
    pub async fn backup(&self) -> Result<&S3Bucket> {
        Self::bucket(&self.backup, self.config.backup_bucket().cloned()).await
    }
    pub async fn archive(&self) -> Result<&S3Bucket> {
        Self::bucket(&self.archive, self.config.archive_bucket()).await
    }
    pub async fn origin(&self) -> Result<&Origin> {
        self.origin
            .get_or_try_init(|| async {
                match self.config.origin.kind {
                    OriginKind::Http => Ok(Origin::Http(HttpOrigin::new(&self.config.origin)?)),
                    OriginKind::S3 => {
                        let cfg = self.config.buckets.origin.as_ref().ok_or_else(|| {
                            Error::Usage("origin.kind = \"s3\" needs [buckets.origin]".into())
                        })?;
                        Ok(Origin::S3(S3Bucket::connect(cfg).await?))
                    }
                }
            })
            .await
    }

    /// Fails with a refusal when mutations are not allowed.
    pub fn check_writable(&self, what: &str) -> Result<()> {
        if self.read_only {
            return Err(Error::Refused(format!(
                "{what} is not allowed in read-only mode"
            )));
        }
        Ok(())
    }
}

/// `user@host`, for the audit log.
pub fn default_operator() -> String {
    let user = std::env::var("MIRRORCTL_OPERATOR")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{user}@{host}")
}
