//! The tables of `replication`: the backlog and its failures, retries, resyncs.

use std::fmt::Write as _;

use super::{bytes, count, table, time};
use crate::engine::db::TaskRow;
use crate::engine::ops::replication::{ReplicationStatus, ResyncReport, RetryReport};

pub fn status_table(r: &ReplicationStatus) -> String {
    let mut out = String::new();
    let rows = vec![
        vec![
            "Pending".into(),
            format!("{} tasks, {}", count(r.pending), bytes(r.pending_bytes)),
        ],
        vec!["Copying now".into(), count(r.running)],
        vec!["Failed".into(), count(r.failed)],
        vec![
            "Lag".into(),
            match r.oldest_pending_at {
                Some(t) => format!("{:.1}s (oldest pending since {})", r.lag_s, time(Some(t))),
                None => "0s (nothing pending)".into(),
            },
        ],
        vec![
            "Drain rate".into(),
            format!(
                "{:.1} tasks/s (last minute, since the first that finished)",
                r.drain_per_s
            ),
        ],
        vec![
            "ETA".into(),
            match r.eta_s {
                Some(s) => format!("{s:.0}s"),
                None => format!(
                    "unknown (nothing drained in the last {} s)",
                    crate::engine::ops::replication::STALL_S
                ),
            },
        ],
    ];
    out.push_str(&table(&["", ""], &[false, false], &rows));
    if !r.troubled.is_empty() {
        let _ = writeln!(out, "\nFailed and failing tasks (latest first):");
        out.push_str(&tasks_table(&r.troubled));
        if r.failed > 0 {
            let _ = writeln!(
                out,
                "\n`mirrorctl --headless replication retry --failed` puts the failed ones back in the queue."
            );
        }
    }
    out
}

fn tasks_table(tasks: &[TaskRow]) -> String {
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.state.clone(),
                t.op.clone(),
                t.path.clone(),
                t.attempts.to_string(),
                time(Some(t.created_at)),
                t.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "STATE",
            "OP",
            "KEY",
            "ATTEMPTS",
            "RECORDED",
            "LAST ERROR",
        ],
        &[true, false, false, false, true, false, false],
        &rows,
    )
}

pub fn retry_table(r: &RetryReport) -> String {
    let mut out = format!("{r}\n");
    if !r.unknown_ids.is_empty() {
        let ids: Vec<String> = r.unknown_ids.iter().map(i64::to_string).collect();
        let _ = writeln!(out, "not open or failed (skipped): {}", ids.join(", "));
    }
    if !r.tasks.is_empty() {
        out.push('\n');
        out.push_str(&tasks_table(&r.tasks));
    }
    out
}

pub fn resync_table(r: &ResyncReport) -> String {
    let mut out = format!("{r}\n");
    for k in &r.sample {
        let _ = writeln!(out, "  {k}");
    }
    if r.found > r.sample.len() {
        let _ = writeln!(out, "  … and {} more", r.found - r.sample.len());
    }
    out
}
