//! The tables of `lock status` and `lock release`.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::fleet::age;
use super::table;
use crate::engine::ops::lock::{LockReleaseReport, LockReport, LockState};

/// A timestamp to the second, with its age: "2026-01-02 03:04:05 UTC (12s ago)".
fn stamp(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let d = (now - t).num_seconds();
    let rel = if d >= 0 {
        format!("{} ago", age(d))
    } else {
        format!("in {}", age(-d))
    };
    format!("{} ({rel})", t.format("%Y-%m-%d %H:%M:%S UTC"))
}

pub fn status_table(r: &LockReport) -> String {
    let now = r.generated_at;
    let mut out = String::new();
    if r.state == LockState::Free {
        let _ = writeln!(out, "The mutation lock is free ({}).", r.backend);
        return out;
    }
    let mut rows: Vec<Vec<String>> = vec![
        vec![
            "State".into(),
            match r.state {
                LockState::Held => "held".into(),
                LockState::Expired => "expired (its holder is gone; it blocks nobody)".into(),
                LockState::Free => "free".into(),
            },
        ],
        vec!["Operation".into(), r.kind.clone().unwrap_or("-".into())],
        vec!["Operator".into(), r.operator.clone().unwrap_or("-".into())],
        vec!["Holder".into(), r.holder.clone().unwrap_or("-".into())],
        vec![
            "Started".into(),
            r.started_at.map_or("-".into(), |t| stamp(t, now)),
        ],
        vec![
            "Last heartbeat".into(),
            r.heartbeat_at
                .map_or("- (written before leases existed)".into(), |t| {
                    stamp(t, now)
                }),
        ],
        vec![
            "Lease ends".into(),
            r.expires_at.map_or("-".into(), |t| stamp(t, now)),
        ],
        vec![
            "Holder alive".into(),
            match (r.holder_alive, r.backend) {
                (true, "postgres") => "yes (its session holds the advisory lock)".into(),
                (true, _) => "yes (lease renewed in time)".into(),
                (false, "postgres") => "no (no session holds the advisory lock)".into(),
                (false, _) if r.holder_process_gone => "no (its process is gone)".into(),
                (false, _) => "no (its lease ended)".into(),
            },
        ],
    ];
    if let Some(id) = r.operation_id {
        rows.push(vec![
            "Operation row".into(),
            format!("{id} (see `history`)"),
        ]);
    }
    if let Some(s) = &r.session {
        rows.push(vec![
            "PostgreSQL session".into(),
            format!(
                "backend pid {}, client {}, started {}{}",
                s.pid,
                s.client_addr.as_deref().unwrap_or("local socket or hidden"),
                s.backend_start.map_or("-".into(), |t| stamp(t, now)),
                s.application_name
                    .as_deref()
                    .filter(|a| !a.is_empty())
                    .map(|a| format!(", application {a}"))
                    .unwrap_or_default()
            ),
        ]);
    }
    // A two-column list: no header line.
    let t = table(&["", ""], &[false, false], &rows);
    out.push_str(t.split_once('\n').map_or(t.as_str(), |(_, body)| body));
    match r.state {
        LockState::Held if !r.lease_fresh => {
            let _ = writeln!(
                out,
                "\nThe session holds the lock but the holder stopped renewing its lease: the \
                 process may be hung. `mirrorctl --headless lock release --force` terminates \
                 the session."
            );
        }
        LockState::Held => {
            let _ = writeln!(
                out,
                "\n`mirrorctl --headless lock release --force` takes it away from the live holder."
            );
        }
        LockState::Expired => {
            let _ = writeln!(
                out,
                "\n`mirrorctl --headless lock release` removes the row; the next mutating \
                 operation would replace it anyway."
            );
        }
        LockState::Free => {}
    }
    out
}

pub fn release_table(r: &LockReleaseReport) -> String {
    format!("{}\n", r.message)
}
