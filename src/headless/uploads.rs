//! `uploads list | abort`: the command line's selection to engine params, and the tables.

use std::fmt::Write as _;
use std::io::Write as _;

use super::{table, time};
use crate::cli::{BucketArg, OutputFormat, UploadsAction};
use crate::engine::error::Error;
use crate::engine::ops::uploads::{self, AbortReport, BucketRole, UploadRow, UploadsReport};
use crate::engine::Ctx;

/// Runs `uploads list|abort` and prints the report; the exit code (abort: 1 when some failed).
pub async fn run(ctx: &Ctx, action: &UploadsAction, output: OutputFormat) -> anyhow::Result<u8> {
    let json = match output {
        OutputFormat::Json => true,
        OutputFormat::Table => false,
        OutputFormat::Prometheus => {
            return Err(Error::Usage("--output prometheus is only for `stats`".into()).into())
        }
    };
    let (text, code) = match action {
        UploadsAction::List { older_than, bucket } => {
            let p = uploads::ListParams {
                older_than: older_than.as_deref().map(threshold).transpose()?,
                bucket: bucket.map(role),
            };
            let r = uploads::list(ctx, &p).await?;
            (render(&r, json, list_table), 0)
        }
        UploadsAction::Abort {
            older_than,
            bucket,
            dry_run,
            yes,
        } => {
            let p = uploads::AbortParams {
                older_than: threshold(older_than)?,
                bucket: bucket.map(role),
                dry_run: *dry_run,
                yes: *yes,
            };
            let r = uploads::abort(ctx, p, &super::progress()).await;
            super::clear_progress_line();
            let r = r?;
            (
                render(&r, json, abort_table),
                if r.failed > 0 { 1 } else { 0 },
            )
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    Ok(code)
}

fn render<T: serde::Serialize>(r: &T, json: bool, table: fn(&T) -> String) -> String {
    if json {
        super::json(r) + "\n"
    } else {
        table(r)
    }
}

fn threshold(s: &str) -> Result<std::time::Duration, Error> {
    crate::config::parse_duration(s).map_err(|e| Error::Usage(format!("--older-than: {e}")))
}

fn role(b: BucketArg) -> BucketRole {
    match b {
        BucketArg::Mirror => BucketRole::Mirror,
        BucketArg::Main => BucketRole::Main,
        BucketArg::Backup => BucketRole::Backup,
        BucketArg::Archive => BucketRole::Archive,
    }
}

/// An age as "8d 3h", "3h 12m", "4m 5s".
pub fn age(secs: Option<i64>) -> String {
    let Some(s) = secs else { return "?".into() };
    let s = s.max(0);
    let (d, h, m) = (s / 86_400, s / 3_600 % 24, s / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m {}s", s % 60),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

fn rows_table(rows: &[UploadRow]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|u| {
            vec![
                u.bucket.clone(),
                u.key.clone(),
                u.upload_id.clone(),
                time(u.initiated),
                age(u.age_s),
            ]
        })
        .collect();
    table(
        &["BUCKET", "KEY", "UPLOAD ID", "INITIATED", "AGE"],
        &[false, false, false, false, true],
        &rows,
    )
}

pub fn list_table(r: &UploadsReport) -> String {
    let mut out = String::new();
    let older = r
        .older_than_s
        .map(|s| format!(" older than {}", age(Some(s as i64))))
        .unwrap_or_default();
    if r.uploads.is_empty() {
        let _ = writeln!(out, "no incomplete multipart uploads{older}");
    } else {
        out.push_str(&rows_table(&r.uploads));
        let _ = writeln!(
            out,
            "\n{} incomplete multipart upload(s){older}",
            r.uploads.len()
        );
    }
    let _ = writeln!(out, "buckets: {}", r.buckets.join(", "));
    out
}

pub fn abort_table(r: &AbortReport) -> String {
    let mut out = String::new();
    if !r.uploads.is_empty() {
        out.push_str(&rows_table(&r.uploads));
        if (r.uploads.len() as u64) < r.candidates {
            let _ = writeln!(out, "… and {} more", r.candidates - r.uploads.len() as u64);
        }
        out.push('\n');
    }
    let _ = writeln!(out, "{r}");
    for e in &r.errors {
        let _ = writeln!(out, "  {e}");
    }
    out
}
