//! Renders engine reports for scripts: aligned tables, one JSON document, or Prometheus text.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::engine::ops::files::{FileReport, FilesReport, LiveOrigin};
use crate::engine::ops::history::HistoryReport;
use crate::engine::ops::stats::StatsReport;

/// Bytes as "1.23 GiB".
pub fn bytes(n: i64) -> String {
    humansize::format_size(n.max(0) as u64, humansize::BINARY)
}

/// A rate as "87.3%", or "-" when undefined.
pub fn percent(r: Option<f64>) -> String {
    r.map(|r| format!("{:.1}%", r * 100.0)).unwrap_or_else(|| "-".into())
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
        if i > 0 && (s.len() - i) % 3 == 0 {
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

/// Columns aligned to their widest cell; `right` marks right-aligned (numeric) columns.
pub fn table(headers: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len() - 1;
        for (i, c) in cells.into_iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            if right.get(i).copied().unwrap_or(false) {
                out.push_str(&" ".repeat(pad));
                out.push_str(c);
            } else {
                out.push_str(c);
                if i != last {
                    out.push_str(&" ".repeat(pad));
                }
            }
            if i != last {
                out.push_str("  ");
            }
        }
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
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
    ];
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{k:<16} {v}");
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
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{window=\"{w}\"}} {v}");
    };
    metric("mirrorctl_requests", "Downloads served in the window.", r.requests as f64);
    metric("mirrorctl_hits", "Downloads served from the mirror in the window.", r.hits as f64);
    metric("mirrorctl_misses", "Downloads fetched from the origin in the window.", r.misses as f64);
    metric("mirrorctl_hit_rate", "hits / (hits + misses) in the window.", r.hit_rate.unwrap_or(0.0));
    metric("mirrorctl_bytes_served", "Bytes served in the window.", r.bytes_served as f64);
    metric("mirrorctl_bandwidth_saved_bytes", "Bytes served from the mirror in the window.", r.bandwidth_saved_bytes as f64);
    metric("mirrorctl_storage_objects", "Live mirrored objects.", r.storage_objects as f64);
    metric("mirrorctl_storage_bytes", "Bytes of live mirrored objects.", r.storage_bytes as f64);
    metric("mirrorctl_stale_files", "Mirrored files marked stale.", r.stale_files as f64);
    metric("mirrorctl_errors", "Failed downloads in the window.", r.errors as f64);
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
                if f.is_stale { "stale".into() } else { String::new() },
            ]
        })
        .collect();
    table(
        &["ID", "KEY", "SIZE", "DOWNLOADS", "SERVED", "LAST DOWNLOADED", "STALE"],
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
    kv("downloads", format!("{} ({} served)", count(f.downloads), bytes(f.bytes_served)));
    kv(
        "stale",
        if f.is_stale {
            format!("yes: {}", f.stale_reason.as_deref().unwrap_or("no reason recorded"))
        } else {
            "no".into()
        },
    );
    if let Some(d) = f.deleted_at {
        kv("deleted at", time(Some(d)));
    }
    kv("origin file", format!("{} ({}:{})", f.origin_file_id, f.origin_source, f.origin_remote_id));
    kv("origin url", r.origin.url.clone());
    kv(
        "origin (recorded)",
        format!(
            "size {} etag {}",
            r.origin.size.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
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
        let max = r.downloads_per_day.iter().map(|d| d.downloads).max().unwrap_or(1).max(1);
        for d in &r.downloads_per_day {
            let bar = "#".repeat(((d.downloads * 40) / max) as usize);
            let _ = writeln!(out, "  {}  {:>6}  {bar}", d.day, count(d.downloads));
        }
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
                    .map(|f| format!("{:.1}s", (f - o.started_at).num_milliseconds() as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into()),
                summary_line(o.summary.as_ref()),
            ]
        })
        .collect();
    table(
        &["ID", "STARTED", "KIND", "STATUS", "OPERATOR", "TOOK", "SUMMARY"],
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
        let t = table(&["A", "BB"], &[true, false], &[vec!["10".into(), "x".into()]]);
        assert_eq!(t, " A  BB\n10  x\n");
    }
}
