//! Renders engine reports for scripts: aligned tables, one JSON document, or Prometheus text.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::engine::ops::files::{FileReport, FilesReport, LiveOrigin};
use crate::engine::ops::history::HistoryReport;
use crate::engine::ops::stats::StatsReport;

pub mod catalog;
pub mod check;
pub mod docs;
pub mod doctor;
pub mod fleet;
pub mod lock;
pub mod migrate;
pub mod purge;
pub mod replication;
pub mod uploads;

pub use migrate::migrate_table;

pub use purge::purge_table;

/// Bytes as "1.23 GiB".
pub fn bytes(n: i64) -> String {
    humansize::format_size(n.max(0) as u64, humansize::BINARY)
}

/// A rate as "87.3%", or "-" when undefined.
pub fn percent(r: Option<f64>) -> String {
    r.map(|r| format!("{:.1}%", r * 100.0))
        .unwrap_or_else(|| "-".into())
}

/// A timestamp as "2026-11-22 14:05", or "never".
pub fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| "never".into())
}

/// A count with thousands separators.
pub fn count(n: i64) -> String {
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// One JSON document, pretty-printed.
pub fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Columns aligned to their widest cell by display width (a CJK character takes two columns);
/// `right` marks right-aligned (numeric) columns. Two spaces between columns, no borders.
pub fn table(headers: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    use comfy_table::{CellAlignment, ContentArrangement, Table};
    let mut t = Table::new();
    t.load_style(comfy_table::presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.iter().copied())
        .add_rows(rows.iter().map(|r| r.iter().map(String::as_str)));
    for (i, column) in t.column_iter_mut().enumerate() {
        column.set_padding((0, 2));
        if right.get(i).copied().unwrap_or(false) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut out = String::new();
    for line in t.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn stats_table(r: &StatsReport) -> String {
    let rows = vec![
        ("window", r.window_label()),
        ("requests", count(r.requests)),
        ("hits", count(r.hits)),
        ("misses", count(r.misses)),
        ("hit rate", percent(r.hit_rate)),
        ("bytes served", bytes(r.bytes_served)),
        ("bandwidth saved", bytes(r.bandwidth_saved_bytes)),
        ("storage objects", count(r.storage_objects)),
        ("storage bytes", bytes(r.storage_bytes)),
        ("stale files", count(r.stale_files)),
        ("errors", count(r.errors)),
        ("error rate", percent(r.error_rate)),
        ("revalidations", count(r.revalidations)),
    ];
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{k:<16} {v}");
    }
    if !r.archived_months.is_empty() {
        let _ = writeln!(
            out,
            "{:<16} {} (events on S3; totals above include them)",
            "archived months",
            r.archived_months.join(", ")
        );
    }
    out
}

impl StatsReport {
    fn window_label(&self) -> String {
        match self.since {
            Some(s) => format!("{} (since {})", self.window.label(), time(Some(s))),
            None => "all".into(),
        }
    }
}

pub fn stats_prometheus(r: &StatsReport) -> String {
    let w = r.window.label();
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, v: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{window=\"{w}\"}} {v}"
        );
    };
    metric(
        "mirrorctl_requests",
        "Downloads served in the window.",
        r.requests as f64,
    );
    metric(
        "mirrorctl_hits",
        "Downloads served from the mirror in the window.",
        r.hits as f64,
    );
    metric(
        "mirrorctl_misses",
        "Downloads fetched from the origin in the window.",
        r.misses as f64,
    );
    metric(
        "mirrorctl_hit_rate",
        "hits / (hits + misses) in the window.",
        r.hit_rate.unwrap_or(0.0),
    );
    metric(
        "mirrorctl_bytes_served",
        "Bytes served in the window.",
        r.bytes_served as f64,
    );
    metric(
        "mirrorctl_bandwidth_saved_bytes",
        "Bytes served from the mirror in the window.",
        r.bandwidth_saved_bytes as f64,
    );
    metric(
        "mirrorctl_storage_objects",
        "Live mirrored objects.",
        r.storage_objects as f64,
    );
    metric(
        "mirrorctl_storage_bytes",
        "Bytes of live mirrored objects.",
        r.storage_bytes as f64,
    );
    metric(
        "mirrorctl_stale_files",
        "Mirrored files marked stale.",
        r.stale_files as f64,
    );
    metric(
        "mirrorctl_errors",
        "Failed downloads in the window.",
        r.errors as f64,
    );
    metric(
        "mirrorctl_revalidations",
        "Conditional requests answered 304 in the window (not downloads).",
        r.revalidations as f64,
    );
    out
}

pub fn files_table(r: &FilesReport) -> String {
    let rows: Vec<Vec<String>> = r
        .files
        .iter()
        .map(|f| {
            vec![
                f.id.to_string(),
                f.key.clone(),
                bytes(f.size),
                count(f.downloads),
                bytes(f.bytes_served),
                time(f.last_downloaded_at),
                if f.is_stale {
                    "stale".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "KEY",
            "SIZE",
            "DOWNLOADS",
            "SERVED",
            "LAST DOWNLOADED",
            "STALE",
        ],
        &[true, false, true, true, true, false, false],
        &rows,
    )
}

pub fn file_table(r: &FileReport) -> String {
    let f = &r.file;
    let mut out = String::new();
    let mut kv = |k: &str, v: String| {
        let _ = writeln!(out, "{k:<20} {v}");
    };
    kv("id", f.id.to_string());
    kv("key", format!("{} (bucket {})", f.key, f.bucket));
    kv("size", format!("{} ({} bytes)", bytes(f.size), f.size));
    kv("sha256", f.sha256.clone().unwrap_or_else(|| "-".into()));
    kv("etag", f.etag.clone().unwrap_or_else(|| "-".into()));
    kv("mirrored at", time(Some(f.mirrored_at)));
    kv("last downloaded", time(f.last_downloaded_at));
    kv("last validated", time(f.last_validated_at));
    kv(
        "downloads",
        format!("{} ({} served)", count(f.downloads), bytes(f.bytes_served)),
    );
    kv(
        "stale",
        if f.is_stale {
            format!(
                "yes: {}",
                f.stale_reason.as_deref().unwrap_or("no reason recorded")
            )
        } else {
            "no".into()
        },
    );
    if let Some(d) = f.deleted_at {
        kv("deleted at", time(Some(d)));
    }
    kv(
        "origin file",
        format!(
            "{} ({}:{})",
            f.origin_file_id, f.origin_source, f.origin_remote_id
        ),
    );
    kv("origin url", r.origin.url.clone());
    kv(
        "origin (recorded)",
        format!(
            "size {} etag {}",
            r.origin
                .size
                .map(|s| s.to_string())
                .unwrap_or_else(|| "?".into()),
            r.origin.etag.as_deref().unwrap_or("-")
        ),
    );
    match &r.origin.live {
        Some(LiveOrigin::Found(m)) => kv(
            "origin (now)",
            format!(
                "size {} etag {}",
                m.size.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
                m.etag.as_deref().unwrap_or("-")
            ),
        ),
        Some(LiveOrigin::Gone) => kv("origin (now)", "gone (404)".into()),
        Some(LiveOrigin::Error { message }) => kv("origin (now)", format!("error: {message}")),
        None => {}
    }
    if let Some(m) = &r.mirror_object {
        kv(
            "mirror object (now)",
            if m.exists {
                format!(
                    "size {} etag {}",
                    m.size.unwrap_or(0),
                    m.etag.as_deref().unwrap_or("-")
                )
            } else {
                "missing".into()
            },
        );
    }
    if !r.downloads_per_day.is_empty() {
        out.push_str("\ndownloads per day:\n");
        let max = r
            .downloads_per_day
            .iter()
            .map(|d| d.downloads)
            .max()
            .unwrap_or(1)
            .max(1);
        for d in &r.downloads_per_day {
            let bar = "#".repeat(((d.downloads * 40) / max) as usize);
            let source = if d.from_archive { "archive" } else { "       " };
            let _ = writeln!(
                out,
                "  {}  {:>6}  {source}  {bar}",
                d.day,
                count(d.downloads)
            );
        }
        if r.downloads_per_day.iter().any(|d| d.from_archive) {
            out.push_str("  (archive: read from the month's Parquet archive on S3)\n");
        }
    }
    for u in &r.archive_unavailable {
        let _ = writeln!(
            out,
            "note: archived month not read, its days are missing: {u}"
        );
    }
    out
}

pub fn history_table(r: &HistoryReport) -> String {
    let rows: Vec<Vec<String>> = r
        .operations
        .iter()
        .map(|o| {
            vec![
                o.id.to_string(),
                time(Some(o.started_at)),
                o.kind.clone(),
                o.status.clone(),
                o.operator.clone(),
                o.finished_at
                    .map(|f| {
                        format!(
                            "{:.1}s",
                            (f - o.started_at).num_milliseconds() as f64 / 1000.0
                        )
                    })
                    .unwrap_or_else(|| "-".into()),
                summary_line(o.summary.as_ref()),
            ]
        })
        .collect();
    table(
        &[
            "ID", "STARTED", "KIND", "STATUS", "OPERATOR", "TOOK", "SUMMARY",
        ],
        &[true, false, false, false, false, true, false],
        &rows,
    )
}

/// `key=value` pairs of a summary's scalar fields, short enough for one line.
fn summary_line(v: Option<&serde_json::Value>) -> String {
    let Some(serde_json::Value::Object(m)) = v else {
        return String::new();
    };
    let mut s = m
        .iter()
        .filter(|(_, v)| !v.is_object() && !v.is_array())
        .map(|(k, v)| format!("{k}={}", v.to_string().trim_matches('"')))
        .collect::<Vec<_>>()
        .join(" ");
    if s.chars().count() > 80 {
        s = s.chars().take(79).collect::<String>() + "…";
    }
    s
}

pub fn validate_table(r: &crate::engine::ops::validate::ValidateReport) -> String {
    use crate::engine::ops::validate::ValidateStatus;
    let mut out = String::new();
    for (k, v) in [
        ("scope", r.scope.clone()),
        ("checked", count(r.checked as i64)),
        ("fresh", count(r.fresh as i64)),
        ("stale", count(r.stale as i64)),
        ("newly stale", count(r.newly_stale as i64)),
        ("missing in mirror", count(r.missing_in_mirror as i64)),
        ("origin errors", count(r.origin_errors as i64)),
        ("mirror errors", count(r.mirror_errors as i64)),
    ] {
        let _ = writeln!(out, "{k:<18} {v}");
    }
    if let Some(from) = &r.resumed_from {
        let _ = writeln!(
            out,
            "{:<18} operation {} after key {}, {} files checked there (counted above)",
            "resumed",
            from.operation_id,
            from.after_key
                .as_deref()
                .map_or("(none)".into(), |k| format!("{k:?}")),
            count(from.checked as i64)
        );
    }
    if !r.recorded {
        out.push_str("(read-only: results were not written to the database)\n");
    }
    if !r.items.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = r
            .items
            .iter()
            .map(|i| {
                let status = match i.status {
                    ValidateStatus::Fresh => "fresh",
                    ValidateStatus::Stale => "stale",
                    ValidateStatus::Missing => "missing",
                    ValidateStatus::OriginError => "origin_error",
                    ValidateStatus::MirrorError => "mirror_error",
                };
                vec![
                    i.id.to_string(),
                    i.key.clone(),
                    status.into(),
                    i.reason.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["ID", "KEY", "STATUS", "REASON"],
            &[true, false, false, false],
            &rows,
        ));
    }
    if r.items_omitted > 0 {
        let _ = writeln!(
            out,
            "… and {} more (see --output json or `files --stale`)",
            count(r.items_omitted as i64)
        );
    }
    out
}

pub fn remirror_table(r: &crate::engine::ops::remirror::RemirrorReport) -> String {
    use crate::engine::ops::remirror::RemirrorStatus;
    let mut out = String::new();
    if r.dry_run {
        let _ = writeln!(
            out,
            "dry run: would remirror {} files ({} recorded); nothing was changed",
            count(r.candidates as i64),
            bytes(r.bytes as i64)
        );
    } else {
        let _ = writeln!(
            out,
            "remirrored {} of {} files ({}), {} failed",
            count(r.remirrored as i64),
            count(r.candidates as i64),
            bytes(r.bytes as i64),
            count(r.failed as i64)
        );
    }
    if !r.items.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = r
            .items
            .iter()
            .map(|i| {
                let status = match i.status {
                    RemirrorStatus::Remirrored => "remirrored",
                    RemirrorStatus::Failed => "failed",
                    RemirrorStatus::Planned => "planned",
                };
                vec![
                    i.id.to_string(),
                    i.key.clone(),
                    status.into(),
                    bytes(i.bytes as i64),
                    i.error
                        .clone()
                        .or_else(|| i.sha256.clone())
                        .unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["ID", "KEY", "STATUS", "SIZE", "SHA-256 / ERROR"],
            &[true, false, false, true, false],
            &rows,
        ));
    }
    if r.items_omitted > 0 {
        let _ = writeln!(
            out,
            "… and {} more (see --output json)",
            count(r.items_omitted as i64)
        );
    }
    out
}

pub fn archive_list_table(r: &crate::engine::ops::archive::ArchiveListReport) -> String {
    use crate::engine::ops::archive::PartitionState;
    let rows: Vec<Vec<String>> = r
        .partitions
        .iter()
        .map(|p| {
            let state = match p.state {
                PartitionState::Live => "live",
                PartitionState::Archiving => "archiving (detached)",
                PartitionState::Archived if p.live_rows > 0 => "archived (+late rows)",
                PartitionState::Archived => "archived",
                PartitionState::Restored => "restored",
            };
            vec![
                p.partition.clone(),
                estimated_count(p.rows, p.rows_estimated),
                p.bytes.map(bytes).unwrap_or_else(|| "-".into()),
                state.into(),
                p.object.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut out = table(
        &["PARTITION", "ROWS", "BYTES", "STATE", "OBJECT"],
        &[false, true, true, false, false],
        &rows,
    );
    if r.partitions.iter().any(|p| p.rows_estimated) {
        out.push_str("~ estimated from the database catalog; --exact counts\n");
    }
    out
}

/// A row count, with `~` in front when it is the catalog's estimate.
pub fn estimated_count(n: i64, estimated: bool) -> String {
    if estimated {
        format!("~{}", count(n))
    } else {
        count(n)
    }
}

pub fn archive_health_table(r: &crate::engine::ops::archive::ArchiveHealthReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {}, read back in {:.2} s (threshold {} s): {} of {} rows, {} part(s), {} from {}",
        r.partition,
        if r.healthy { "healthy" } else { "UNHEALTHY" },
        r.seconds,
        r.threshold_seconds,
        count(r.rows as i64),
        count(r.expected_rows as i64),
        r.parts,
        bytes(r.bytes as i64),
        r.object
    );
    for p in &r.problems {
        let _ = writeln!(out, "problem: {p}");
    }
    out
}

pub fn archive_run_table(r: &crate::engine::ops::archive::ArchiveRunReport) -> String {
    use crate::engine::ops::archive::RunStatus;
    let rows: Vec<Vec<String>> = r
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.partition.clone(),
                match p.status {
                    RunStatus::Archived => "archived".into(),
                    RunStatus::WouldArchive => "would archive".into(),
                    RunStatus::Skipped => "skipped".into(),
                },
                estimated_count(p.rows as i64, p.rows_estimated),
                p.bytes
                    .map(|b| bytes(b as i64))
                    .unwrap_or_else(|| "-".into()),
                p.object
                    .clone()
                    .or_else(|| p.reason.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let mut out = if rows.is_empty() {
        format!(
            "nothing to archive: no month up to {} has events\n",
            r.last_eligible_month
        )
    } else {
        table(
            &["PARTITION", "RESULT", "ROWS", "BYTES", "OBJECT"],
            &[false, false, true, true, false],
            &rows,
        )
    };
    if r.dry_run {
        let n = r
            .partitions
            .iter()
            .filter(|p| p.status == RunStatus::WouldArchive)
            .count();
        let _ = writeln!(
            out,
            "dry run: would archive {n} partition(s), {} rows (months up to {}); run with --yes to archive",
            count(r.rows as i64),
            r.last_eligible_month
        );
    } else {
        let _ = writeln!(
            out,
            "archived {} partition(s): {} rows, {} of Parquet",
            r.archived,
            count(r.rows as i64),
            bytes(r.bytes as i64)
        );
    }
    out
}

pub fn archive_verify_table(r: &crate::engine::ops::archive::ArchiveVerifyReport) -> String {
    let rows: Vec<Vec<String>> = r
        .parts
        .iter()
        .map(|p| {
            vec![
                p.key.clone(),
                p.footer_rows
                    .map(|n| count(n as i64))
                    .unwrap_or_else(|| "-".into()),
                p.bytes
                    .map(|b| bytes(b as i64))
                    .unwrap_or_else(|| "-".into()),
                if p.ok { "ok".into() } else { "MISMATCH".into() },
            ]
        })
        .collect();
    let mut out = table(
        &["PART", "ROWS", "BYTES", "CHECK"],
        &[false, true, true, false],
        &rows,
    );
    for p in &r.problems {
        let _ = writeln!(out, "problem: {p}");
    }
    let _ = writeln!(
        out,
        "{}: {} ({} of {} rows)",
        r.partition,
        if r.ok { "verified" } else { "DOES NOT VERIFY" },
        count(r.rows as i64),
        count(r.expected_rows as i64)
    );
    out
}

pub fn archive_restore_table(r: &crate::engine::ops::archive::ArchiveRestoreReport) -> String {
    format!(
        "restored {}: {} rows from {}\n",
        r.partition,
        count(r.rows as i64),
        r.object
    )
}

/// `drift --combined` output: lines written through one buffered, locked stdout so that
/// range workers never interleave within a line and a million keys cost few syscalls.
pub struct DriftLines {
    out: std::sync::Arc<std::sync::Mutex<std::io::BufWriter<std::io::Stdout>>>,
}

impl DriftLines {
    pub fn stdout() -> DriftLines {
        DriftLines {
            out: std::sync::Arc::new(std::sync::Mutex::new(std::io::BufWriter::with_capacity(
                64 * 1024,
                std::io::stdout(),
            ))),
        }
    }

    /// The callback the drift engine calls per key.
    pub fn sink(&self) -> crate::engine::ops::drift::LineSink {
        let out = self.out.clone();
        std::sync::Arc::new(move |mark, key| {
            use std::io::Write as _;
            if let Ok(mut w) = out.lock() {
                // A closed pipe (`| head`) is not an error worth reporting.
                let _ = writeln!(w, "{mark} {key}");
            }
        })
    }

    pub fn finish(self) {
        use std::io::Write as _;
        if let Ok(mut w) = self.out.lock() {
            let _ = w.flush();
        }
    }
}

/// The bar of the running headless job, so the result can clear it before it is printed.
static BAR: std::sync::Mutex<Option<indicatif::ProgressBar>> = std::sync::Mutex::new(None);

/// Progress of a long headless run on stderr: on a terminal a bar with done/total, rate and
/// ETA (a spinner with the count when the total is unknown), cleared when the job finishes so
/// nothing is printed over the result; otherwise a plain line every 5 seconds for logs and
/// cron mail.
pub fn progress() -> crate::engine::jobs::Progress {
    use crate::engine::jobs::{JobEvent, Progress};
    use std::io::IsTerminal as _;
    use std::time::{Duration, Instant};
    if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::with_draw_target(
            None,
            indicatif::ProgressDrawTarget::stderr_with_hz(10),
        );
        bar.set_style(bar_style(false));
        if let Ok(mut slot) = BAR.lock() {
            *slot = Some(bar.clone());
        }
        return Progress::with_sink(move |e| match e {
            JobEvent::Progress { done, total, msg } => {
                if bar.is_finished() {
                    return;
                }
                if total.is_some() != bar.length().is_some() {
                    bar.set_style(bar_style(total.is_some()));
                }
                match total {
                    Some(t) => bar.set_length(t),
                    None => bar.unset_length(),
                }
                bar.set_position(done);
                bar.set_message(msg);
                bar.enable_steady_tick(Duration::from_millis(200));
            }
            JobEvent::Finished { .. } => bar.finish_and_clear(),
            JobEvent::Started { .. } => {}
        });
    }
    let last = std::sync::Mutex::new(Instant::now());
    Progress::with_sink(move |e| {
        if let JobEvent::Progress {
            done, total, msg, ..
        } = e
        {
            let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() >= Duration::from_secs(5) {
                *last = Instant::now();
                match total {
                    Some(t) => eprintln!("mirrorctl: {msg} ({done}/{t})"),
                    None => eprintln!("mirrorctl: {msg}"),
                }
            }
        }
    })
}

fn bar_style(with_total: bool) -> indicatif::ProgressStyle {
    let template = if with_total {
        "{spinner} {msg} [{bar:30}] {human_pos}/{human_len} {rate} ETA {eta}"
    } else {
        "{spinner} {msg} {human_pos} {rate} {elapsed}"
    };
    indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .with_key(
            "rate",
            |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", s.per_sec());
            },
        )
        .progress_chars("=> ")
}

/// Clears the progress bar (if any) before the result is printed.
pub fn clear_progress_line() {
    if let Some(bar) = BAR.lock().ok().and_then(|mut b| b.take()) {
        bar.finish_and_clear();
    }
}

/// The drift counts on one line (stderr, under `--combined`).
pub fn drift_summary_line(r: &crate::engine::ops::drift::DriftReport) -> String {
    let s = &r.summary;
    format!(
        "drift: {} same, {} missing in backup, {} extra in backup, {} differ, {} unverifiable, {} errors, \
         {} pending replication; inventory: {} missing, {} orphaned, {} differ ({:.1}s)",
        s.same,
        s.missing_in_backup,
        s.extra_in_backup,
        s.differ,
        s.unverifiable,
        s.errors,
        s.pending,
        s.inventory_missing,
        s.inventory_orphaned,
        s.inventory_differ,
        r.elapsed_seconds
    )
}

pub fn drift_table(r: &crate::engine::ops::drift::DriftReport) -> String {
    use crate::engine::ops::drift::{InventoryStatus, PairStatus};
    let s = &r.summary;
    let mut out = String::new();
    let _ =
        writeln!(
        out,
        "main   {} at {} ({} objects)\nbackup {} at {} ({} objects)\ninventory {} live rows{}{}\n",
        r.main.bucket,
        r.main.endpoint,
        count(r.main_objects as i64),
        r.backup.bucket,
        r.backup.endpoint,
        count(r.backup_objects as i64),
        count(r.inventory_rows as i64),
        if r.prefix.is_empty() { String::new() } else { format!(", prefix {:?}", r.prefix) },
        match &r.excluded_prefix {
            Some(x) => format!("\nnot compared: {x:?} (the archive, in the main bucket)"),
            None => String::new(),
        }
    );
    for (k, v) in [
        ("same", s.same),
        ("missing in backup", s.missing_in_backup),
        ("extra in backup", s.extra_in_backup),
        ("differ", s.differ),
        ("unverifiable", s.unverifiable),
        ("errors", s.errors),
        ("pending replication", s.pending),
        ("inventory missing", s.inventory_missing),
        ("inventory orphaned", s.inventory_orphaned),
        ("inventory differ", s.inventory_differ),
    ] {
        let _ = writeln!(out, "{k:<20} {:>12}", count(v as i64));
    }
    let _ = writeln!(out, "{:<20} {:>11.1}s", "took", r.elapsed_seconds);
    if !r.items.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = r
            .items
            .iter()
            .map(|i| {
                vec![
                    match i.status {
                        Some(PairStatus::Same) | None => "",
                        Some(PairStatus::MissingInBackup) => "missing in backup",
                        Some(PairStatus::ExtraInBackup) => "extra in backup",
                        Some(PairStatus::Differ) => "differ",
                        Some(PairStatus::Unverifiable) => "unverifiable",
                        Some(PairStatus::Error) => "error",
                        Some(PairStatus::Pending) => "pending replication",
                    }
                    .to_string(),
                    match i.inventory_status {
                        None => "",
                        Some(InventoryStatus::InventoryMissing) => "no row",
                        Some(InventoryStatus::InventoryOrphaned) => "orphaned row",
                        Some(InventoryStatus::InventoryDiffer) => "row differs",
                    }
                    .to_string(),
                    format!("{:?}", i.key).trim_matches('"').to_string(),
                    i.detail.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["BUCKETS", "INVENTORY", "KEY", "DETAIL"],
            &[false; 4],
            &rows,
        ));
    }
    if let Some(rep) = &r.repair {
        let verb = if rep.dry_run { "would" } else { "did" };
        let _ = writeln!(
            out,
            "\nrepair ({verb}): copy {} objects ({}, {}), delete {} extra, keep {} extra, skip {} unverifiable/error, \
             leave {} changed in main since the listing, write {} inventory rows, soft-delete {}",
            count(rep.copied as i64),
            bytes(rep.copied_bytes as i64),
            if rep.server_side_copy { "server-side" } else { "streamed" },
            count(rep.deleted as i64),
            count(rep.kept_extra as i64),
            count(rep.skipped as i64),
            count(rep.main_changed as i64),
            count(rep.inventory_written as i64),
            count(rep.inventory_soft_deleted as i64),
        );
        for f in &rep.failures {
            let _ = writeln!(out, "  failed {} {:?}: {}", f.action, f.key, f.error);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_group_thousands() {
        assert_eq!(count(0), "0");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(-1000), "-1,000");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "BB"],
            &[true, false],
            &[vec!["10".into(), "x".into()]],
        );
        assert_eq!(t, " A  BB\n10  x\n");
    }

    #[test]
    fn tables_align_wide_characters_by_display_width() {
        let t = table(
            &["KEY", "SIZE"],
            &[false, true],
            &[
                vec!["日本語.zip".into(), "1 KiB".into()],
                vec!["abc.zip".into(), "10 KiB".into()],
            ],
        );
        // "日本語.zip" is 10 columns wide (each CJK character takes two).
        assert_eq!(
            t,
            "KEY           SIZE\n日本語.zip   1 KiB\nabc.zip     10 KiB\n"
        );
    }
}
