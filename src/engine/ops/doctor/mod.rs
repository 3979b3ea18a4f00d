//! `doctor`: checks the configuration, the database (reachable, schema, lock), every
//! configured bucket (reachable, listable, optionally writable, orphaned uploads) and the
//! origin, one check at a time, each with what to do next when it fails. It runs without a
//! working database or a current schema, so it builds what it needs itself instead of taking
//! a `Ctx`, and every check is bounded in time.

mod database;
mod storage;

use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, OriginKind};
use crate::engine::db::Db;
use crate::engine::jobs::Report;
use crate::engine::origin::{redact_query, HttpOrigin, Origin};
use crate::engine::s3::S3Bucket;

/// How long one check may take by default.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct DoctorParams {
    /// Also PUT, GET and DELETE a small object in every bucket.
    pub write: bool,
    /// The most one check may take.
    pub timeout: Duration,
}

impl Default for DoctorParams {
    fn default() -> Self {
        DoctorParams {
            write: false,
            timeout: CHECK_TIMEOUT,
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Ok,
    /// Works, but something needs attention (pending migrations, orphaned uploads, a stale lock).
    Warn,
    /// Does not work (unreachable, denied, missing).
    Fail,
    /// Not run: nothing to check, or an earlier check failed.
    Skip,
}

/// One line of the diagnosis.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked, e.g. "bucket mirror/main".
    pub name: String,
    pub status: CheckStatus,
    /// What was found, in one line.
    pub detail: String,
    /// What to do next (failures and warnings).
    pub hint: Option<String>,
}

impl Check {
    pub fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: CheckStatus::Ok,
            detail: detail.into(),
            hint: None,
        }
    }
    pub fn warn(
        name: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            status: CheckStatus::Warn,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }
    pub fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            status: CheckStatus::Fail,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }
    pub fn skip(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: CheckStatus::Skip,
            detail: detail.into(),
            hint: None,
        }
    }
}

/// Every check, in the order run.
#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    /// The config file used, "(no config file)" or "demo".
    pub config: String,
    /// "ok", "warn" or "fail": the worst check.
    pub status: CheckStatus,
    pub checks: Vec<Check>,
    /// The configuration itself could not be loaded (nothing else was checked).
    #[serde(skip)]
    config_failed: bool,
}

impl DoctorReport {
    fn new(config: String, checks: Vec<Check>, config_failed: bool) -> DoctorReport {
        let status = if checks.iter().any(|c| c.status == CheckStatus::Fail) {
            CheckStatus::Fail
        } else if checks.iter().any(|c| c.status == CheckStatus::Warn) {
            CheckStatus::Warn
        } else {
            CheckStatus::Ok
        };
        DoctorReport {
            config,
            status,
            checks,
            config_failed,
        }
    }

    /// The report of a configuration that did not load: one failed check, nothing else run.
    pub fn config_failed(source: &str, error: &str) -> DoctorReport {
        DoctorReport::new(
            source.to_string(),
            vec![Check::fail(
                "config",
                error.replace('\n', " "),
                "fix the file (see config.example.toml), then run doctor again",
            )],
            true,
        )
    }

    /// The documented exit code: 2 the configuration did not load, 1 a check failed, 3 a
    /// warning, 0 all passed.
    pub fn exit_code(&self) -> u8 {
        match self.status {
            _ if self.config_failed => 2,
            CheckStatus::Fail => 1,
            CheckStatus::Warn => 3,
            CheckStatus::Ok | CheckStatus::Skip => 0,
        }
    }
}

impl Report for DoctorReport {
    fn found_problems(&self) -> bool {
        self.status == CheckStatus::Warn
    }
    fn failures(&self) -> u64 {
        self.checks
            .iter()
            .filter(|c| c.status == CheckStatus::Fail)
            .count() as u64
    }
}

/// Runs every check against a configuration that loaded from `source`.
pub async fn run(config: &Config, source: &str, p: &DoctorParams) -> DoctorReport {
    let mut checks = vec![Check::ok("config", format!("{source}: parsed and valid"))];
    let db = database::check(config, p, &mut checks).await;
    checks.extend(storage::check(config, p).await);
    checks.push(origin(config, db.as_ref(), p).await);
    if let Some(db) = db {
        db.close().await;
    }
    DoctorReport::new(source.to_string(), checks, false)
}

/// `f` within `limit`, else `None`.
async fn bounded<T>(limit: Duration, f: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(limit, f).await.ok()
}

/// "5s", "7d": whole days as days, else humantime's form.
fn secs(d: Duration) -> String {
    let s = d.as_secs().max(1);
    if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else {
        humantime::format_duration(Duration::from_secs(s)).to_string()
    }
}

/// HEAD of one catalog entry at the origin.
async fn origin(config: &Config, db: Option<&Db>, p: &DoctorParams) -> Check {
    const NAME: &str = "origin";
    let Some(db) = db else {
        return Check::skip(NAME, "needs the database and its schema (see above)");
    };
    let Ok(mirror) = config.mirror_bucket() else {
        return Check::skip(NAME, "needs [buckets.mirror] (see above)");
    };
    let entry = match bounded(
        p.timeout,
        db.catalog_page(&mirror.bucket, 0, 1, false, None),
    )
    .await
    {
        Some(Ok(rows)) => rows.into_iter().next(),
        Some(Err(e)) => {
            return Check::skip(NAME, format!("cannot read the catalog: {e}"));
        }
        None => return Check::skip(NAME, "the catalog did not answer in time"),
    };
    let Some(entry) = entry else {
        return Check::skip(
            NAME,
            "the catalog is empty: nothing to ask the origin about",
        );
    };
    let origin = match config.origin.kind {
        OriginKind::S3 => {
            let Some(cfg) = &config.buckets.origin else {
                return Check::fail(
                    NAME,
                    "origin.kind = \"s3\" but no [buckets.origin]",
                    "add [buckets.origin] or set origin.kind = \"http\"",
                );
            };
            match S3Bucket::connect_probe(cfg, p.timeout).await {
                Ok(b) => Origin::S3(b),
                Err(e) => return Check::fail(NAME, e.to_string(), "check [buckets.origin]"),
            }
        }
        OriginKind::Http => {
            if url::Url::parse(&entry.url).is_err() && config.origin.base_url.is_none() {
                return Check::skip(
                    NAME,
                    format!(
                        "no origin configured: catalog entry {} has a relative URL and origin.base_url is unset",
                        entry.id
                    ),
                );
            }
            let mut cfg = config.origin.clone();
            cfg.retries = 0;
            cfg.timeout.0 = cfg.timeout.0.min(p.timeout);
            match HttpOrigin::new(&cfg) {
                Ok(h) => Origin::Http(h),
                Err(e) => return Check::fail(NAME, e.to_string(), "check origin.base_url"),
            }
        }
    };
    let shown = match &origin {
        Origin::Http(h) => h
            .resolve(&entry.url)
            .map(|u| redact_query(u.as_str()))
            .unwrap_or_else(|_| redact_query(&entry.url)),
        Origin::S3(b) => format!("{} at {}: {}", b.name(), b.endpoint(), entry.url),
    };
    let key = match config.origin.kind {
        OriginKind::Http => "origin.base_url",
        OriginKind::S3 => "[buckets.origin]",
    };
    match bounded(p.timeout, origin.head(&entry.url)).await {
        Some(Ok(Some(meta))) => Check::ok(
            NAME,
            format!(
                "HEAD {shown} (catalog entry {}): {}",
                entry.id,
                match meta.size {
                    Some(n) => humansize::format_size(n, humansize::BINARY),
                    None => "size unknown".into(),
                }
            ),
        ),
        Some(Ok(None)) => Check::warn(
            NAME,
            format!(
                "HEAD {shown}: catalog entry {} is gone at the origin (404)",
                entry.id
            ),
            "the catalog may be out of date: `mirrorctl --headless catalog sync` or import it again",
        ),
        Some(Err(e)) => Check::fail(
            NAME,
            e.to_string(),
            format!("check {key} and that the origin is up"),
        ),
        None => Check::fail(
            NAME,
            format!("HEAD {shown}: no answer within {}", secs(p.timeout)),
            format!("check {key} and that the origin is up"),
        ),
    }
}
