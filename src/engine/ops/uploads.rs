//! `uploads list | abort`: multipart uploads started and never completed or aborted in the
//! configured buckets. Their parts take space (and cost money) until a lifecycle rule or an
//! abort removes them. Abort never touches an upload younger than its threshold: each one's
//! start time is read again from a fresh listing right before it is aborted.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::Serialize;

use crate::config::{BucketConfig, Config};
use crate::engine::error::{Error, Result};
use crate::engine::jobs::{audited, Progress, Report};
use crate::engine::s3::{AbortOutcome, S3Bucket, S3Cause, S3Failure, UploadInfo};
use crate::engine::Ctx;

/// The mirror's lifecycle rule deletes incomplete multipart uploads after this long; doctor
/// counts the ones older than it.
pub const LIFECYCLE_AGE: Duration = Duration::from_secs(7 * 86_400);
/// Keys named in an abort's report.
const SAMPLE: usize = 50;
/// Per-upload errors kept in an abort's report.
const MAX_ERRORS: usize = 20;

/// A configured bucket by what it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BucketRole {
    Mirror,
    Main,
    Backup,
    Archive,
}

impl BucketRole {
    pub fn name(self) -> &'static str {
        match self {
            BucketRole::Mirror => "mirror",
            BucketRole::Main => "main",
            BucketRole::Backup => "backup",
            BucketRole::Archive => "archive",
        }
    }
}

/// One distinct bucket of the configuration and every role it plays (the main and archive
/// buckets default to the mirror bucket).
#[derive(Debug, Clone)]
pub struct ConfiguredBucket {
    pub roles: Vec<BucketRole>,
    pub config: BucketConfig,
}

impl ConfiguredBucket {
    /// "mirror/main/archive".
    pub fn label(&self) -> String {
        let names: Vec<&str> = self.roles.iter().map(|r| r.name()).collect();
        names.join("/")
    }
}

/// The distinct buckets the configuration names (mirror, main, backup, archive), one entry per
/// endpoint and bucket name.
pub fn configured_buckets(config: &Config) -> Vec<ConfiguredBucket> {
    let candidates = [
        (BucketRole::Mirror, config.mirror_bucket().ok().cloned()),
        (BucketRole::Main, config.main_bucket().ok().cloned()),
        (BucketRole::Backup, config.backup_bucket().ok().cloned()),
        (BucketRole::Archive, config.archive_bucket().ok()),
    ];
    let mut out: Vec<ConfiguredBucket> = Vec::new();
    for (role, cfg) in candidates {
        let Some(cfg) = cfg else { continue };
        match out.iter_mut().find(|b| {
            b.config.bucket == cfg.bucket && b.config.endpoint_label() == cfg.endpoint_label()
        }) {
            Some(b) => b.roles.push(role),
            None => out.push(ConfiguredBucket {
                roles: vec![role],
                config: cfg,
            }),
        }
    }
    out
}

/// One upload as reported.
#[derive(Debug, Clone, Serialize)]
pub struct UploadRow {
    /// The roles of its bucket, e.g. "mirror/main".
    pub role: String,
    pub bucket: String,
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<DateTime<Utc>>,
    /// Seconds since it was initiated (by this host's clock).
    pub age_s: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListParams {
    /// Only uploads at least this old.
    pub older_than: Option<Duration>,
    /// Only this bucket.
    pub bucket: Option<BucketRole>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct UploadsReport {
    pub older_than_s: Option<u64>,
    /// The buckets looked at, by role ("mirror/main" bucket at endpoint).
    pub buckets: Vec<String>,
    pub uploads: Vec<UploadRow>,
}

impl Report for UploadsReport {}

/// The buckets selected by `role` (all when `None`), or a usage error naming the role.
fn selected(ctx: &Ctx, role: Option<BucketRole>) -> Result<Vec<ConfiguredBucket>> {
    let all = configured_buckets(&ctx.config);
    if all.is_empty() {
        return Err(Error::Usage(
            "no bucket configured: set [buckets.mirror] bucket = \"...\"".into(),
        ));
    }
    let Some(role) = role else { return Ok(all) };
    let picked: Vec<ConfiguredBucket> = all
        .into_iter()
        .filter(|b| b.roles.contains(&role))
        .collect();
    if picked.is_empty() {
        return Err(Error::Usage(format!(
            "no {} bucket configured: set [buckets.{}]",
            role.name(),
            role.name()
        )));
    }
    Ok(picked)
}

/// A listing failure as an error; on a server without ListMultipartUploads, one line saying so.
fn list_error(f: S3Failure) -> Error {
    if f.cause == S3Cause::NotImplemented {
        return Error::S3 {
            bucket: f.bucket,
            endpoint: f.endpoint,
            message: "this S3 server does not implement ListMultipartUploads: incomplete uploads cannot be listed or aborted here".into(),
        };
    }
    f.into()
}

fn age_s(initiated: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<i64> {
    initiated.map(|t| (now - t).num_seconds())
}

/// True when the upload is known to be at least `older_than` old at `now`. An upload without
/// a start time is never old enough: nothing proves it is not in progress.
fn is_older(u: &UploadInfo, older_than: Duration, now: DateTime<Utc>) -> bool {
    let Some(initiated) = u.initiated else {
        return false;
    };
    let Ok(min) = chrono::TimeDelta::from_std(older_than) else {
        return false;
    };
    now - initiated >= min
}

/// Every upload of one bucket, at least `older_than` old when given, page by page.
pub async fn list_bucket(
    bucket: &S3Bucket,
    older_than: Option<Duration>,
) -> std::result::Result<Vec<UploadInfo>, S3Failure> {
    let mut out = Vec::new();
    let mut pages = std::pin::pin!(bucket.list_uploads(String::new()));
    while let Some(page) = pages.try_next().await? {
        let now = Utc::now();
        out.extend(
            page.into_iter()
                .filter(|u| older_than.is_none_or(|d| is_older(u, d, now))),
        );
    }
    Ok(out)
}

/// Counts one bucket's uploads at least `older_than` old, page by page (nothing kept).
pub async fn count_older(
    bucket: &S3Bucket,
    older_than: Duration,
) -> std::result::Result<u64, S3Failure> {
    let mut n = 0u64;
    let mut pages = std::pin::pin!(bucket.list_uploads(String::new()));
    while let Some(page) = pages.try_next().await? {
        let now = Utc::now();
        n += page.iter().filter(|u| is_older(u, older_than, now)).count() as u64;
    }
    Ok(n)
}

fn row(b: &ConfiguredBucket, u: UploadInfo, now: DateTime<Utc>) -> UploadRow {
    UploadRow {
        role: b.label(),
        bucket: b.config.bucket.clone(),
        age_s: age_s(u.initiated, now),
        key: u.key,
        upload_id: u.upload_id,
        initiated: u.initiated,
    }
}

/// `uploads list`: the incomplete uploads of the selected buckets, oldest first.
pub async fn list(ctx: &Ctx, p: &ListParams) -> Result<UploadsReport> {
    check_threshold(p.older_than)?;
    let buckets = selected(ctx, p.bucket)?;
    let mut report = UploadsReport {
        older_than_s: p.older_than.map(|d| d.as_secs()),
        ..Default::default()
    };
    for b in &buckets {
        let s3 = S3Bucket::connect(&b.config).await?;
        let found = list_bucket(&s3, p.older_than).await.map_err(list_error)?;
        report.buckets.push(format!(
            "{} ({} at {})",
            b.label(),
            s3.name(),
            s3.endpoint()
        ));
        let now = Utc::now();
        report
            .uploads
            .extend(found.into_iter().map(|u| row(b, u, now)));
    }
    report
        .uploads
        .sort_by(|a, b| a.initiated.cmp(&b.initiated).then(a.key.cmp(&b.key)));
    Ok(report)
}

fn check_threshold(d: Option<Duration>) -> Result<()> {
    if d.is_some_and(|d| d.is_zero()) {
        return Err(Error::Usage(
            "--older-than must be more than 0s (an upload in progress is young)".into(),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct AbortParams {
    /// Only uploads at least this old are aborted.
    pub older_than: Duration,
    pub bucket: Option<BucketRole>,
    pub dry_run: bool,
    /// The confirmation: aborting is refused without it (headless `--yes`).
    pub yes: bool,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct AbortReport {
    pub older_than_s: u64,
    pub dry_run: bool,
    /// Uploads old enough when listed.
    pub candidates: u64,
    pub aborted: u64,
    /// Completed or aborted by someone else between the listing and the abort.
    pub already_gone: u64,
    /// Left alone: the fresh listing right before the abort did not show it old enough.
    pub skipped: u64,
    pub failed: u64,
    /// The first candidates, oldest first.
    pub uploads: Vec<UploadRow>,
    pub errors: Vec<String>,
}

/// The one-line summary the TUI's job list and headless mode show.
impl std::fmt::Display for AbortReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.dry_run {
            return write!(
                f,
                "would abort {} incomplete upload(s) older than {}",
                self.candidates,
                humantime::format_duration(Duration::from_secs(self.older_than_s))
            );
        }
        write!(
            f,
            "aborted {} of {} incomplete upload(s) older than {}",
            self.aborted,
            self.candidates,
            humantime::format_duration(Duration::from_secs(self.older_than_s))
        )?;
        if self.already_gone > 0 {
            write!(f, ", {} already gone", self.already_gone)?;
        }
        if self.skipped > 0 {
            write!(f, ", {} left alone (not old enough)", self.skipped)?;
        }
        if self.failed > 0 {
            write!(f, ", {} failed", self.failed)?;
        }
        Ok(())
    }
}

impl Report for AbortReport {
    fn failures(&self) -> u64 {
        self.failed
    }

    fn is_dry_run(&self) -> bool {
        self.dry_run
    }
}

/// `uploads abort`: previews (`dry_run`) or aborts the uploads older than the threshold.
pub async fn abort(ctx: &Ctx, p: AbortParams, progress: &Progress) -> Result<AbortReport> {
    check_threshold(Some(p.older_than))?;
    if !p.dry_run {
        ctx.check_writable("uploads abort")?;
        if !p.yes {
            return Err(Error::Refused(
                "uploads abort deletes the parts of incomplete uploads: pass --yes to go ahead (or --dry-run to preview)".into(),
            ));
        }
    }
    let buckets = selected(ctx, p.bucket)?;
    let mut connected = Vec::with_capacity(buckets.len());
    for b in buckets {
        let s3 = S3Bucket::connect(&b.config).await?;
        connected.push((b, s3));
    }
    audited(ctx, "uploads-abort", &p, !p.dry_run, progress, || {
        plan_and_abort(&connected, &p, progress)
    })
    .await
}

async fn plan_and_abort(
    buckets: &[(ConfiguredBucket, S3Bucket)],
    p: &AbortParams,
    progress: &Progress,
) -> Result<AbortReport> {
    let mut report = AbortReport {
        older_than_s: p.older_than.as_secs(),
        dry_run: p.dry_run,
        ..Default::default()
    };
    let mut plan: Vec<(usize, UploadInfo)> = Vec::new();
    for (i, (_, s3)) in buckets.iter().enumerate() {
        progress.check()?;
        let found = list_bucket(s3, Some(p.older_than))
            .await
            .map_err(list_error)?;
        plan.extend(found.into_iter().map(|u| (i, u)));
    }
    plan.sort_by_key(|a| a.1.initiated);
    report.candidates = plan.len() as u64;
    let now = Utc::now();
    report.uploads = plan
        .iter()
        .take(if p.dry_run { usize::MAX } else { SAMPLE })
        .map(|(i, u)| row(&buckets[*i].0, u.clone(), now))
        .collect();
    if p.dry_run {
        return Ok(report);
    }
    let total = report.candidates;
    for (done, (i, u)) in plan.into_iter().enumerate() {
        progress.check()?;
        let s3 = &buckets[i].1;
        let outcome = recheck_and_abort(s3, &u, p.older_than).await;
        match outcome {
            Ok(Step::Aborted) => report.aborted += 1,
            Ok(Step::Gone) => report.already_gone += 1,
            Ok(Step::TooYoung) => report.skipped += 1,
            Err(e) => {
                report.failed += 1;
                if report.errors.len() < MAX_ERRORS {
                    report
                        .errors
                        .push(format!("{}/{} ({}): {e}", s3.name(), u.key, u.upload_id));
                }
            }
        }
        progress.update(done as u64 + 1, Some(total), u.key);
    }
    Ok(report)
}

enum Step {
    Aborted,
    Gone,
    TooYoung,
}

/// Reads the upload's start time again from a fresh listing and aborts it only when it is
/// still there and at least `older_than` old now.
async fn recheck_and_abort(
    s3: &S3Bucket,
    u: &UploadInfo,
    older_than: Duration,
) -> std::result::Result<Step, S3Failure> {
    let mut pages = std::pin::pin!(s3.list_uploads(u.key.clone()));
    let mut current = None;
    while let Some(page) = pages.try_next().await? {
        if let Some(found) = page
            .into_iter()
            .find(|x| x.key == u.key && x.upload_id == u.upload_id)
        {
            current = Some(found);
            break;
        }
    }
    let Some(current) = current else {
        return Ok(Step::Gone);
    };
    if !is_older(&current, older_than, Utc::now()) {
        return Ok(Step::TooYoung);
    }
    Ok(match s3.abort_upload(&u.key, &u.upload_id).await? {
        AbortOutcome::Aborted => Step::Aborted,
        AbortOutcome::AlreadyGone => Step::Gone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(initiated: Option<DateTime<Utc>>) -> UploadInfo {
        UploadInfo {
            key: "k".into(),
            upload_id: "u".into(),
            initiated,
        }
    }

    #[test]
    fn only_uploads_known_to_be_old_enough_are_old() {
        let now = Utc::now();
        let day = Duration::from_secs(86_400);
        assert!(is_older(
            &upload(Some(now - chrono::TimeDelta::days(2))),
            day,
            now
        ));
        assert!(!is_older(
            &upload(Some(now - chrono::TimeDelta::hours(23))),
            day,
            now
        ));
        // A start time in the future (clock skew) is young.
        assert!(!is_older(
            &upload(Some(now + chrono::TimeDelta::hours(1))),
            day,
            now
        ));
        assert!(!is_older(&upload(None), day, now));
    }

    #[test]
    fn buckets_are_deduplicated_with_their_roles() {
        let mut c = Config::default();
        let b = BucketConfig::with_static_keys("m", "http://127.0.0.1:9000", "k", "s");
        c.buckets.mirror = Some(b.clone());
        c.buckets.backup = Some(BucketConfig::with_static_keys(
            "b",
            "http://127.0.0.1:9000",
            "k",
            "s",
        ));
        let got = configured_buckets(&c);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].label(), "mirror/main/archive");
        assert_eq!(got[1].label(), "backup");
    }
}
