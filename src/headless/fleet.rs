//! The table of `fleet`: the serve replicas on this database.

use std::fmt::Write as _;

use super::{count, table, time};
use crate::engine::ops::fleet::{FleetReport, ReplicaStatus};

/// Seconds as "4s", "12m", "3h", "2d": the largest whole unit.
pub fn age(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

pub fn fleet_table(r: &FleetReport) -> String {
    if r.replicas.is_empty() {
        return "no serve replica has written a heartbeat to this database\n".into();
    }
    let mut out = format!("{r}\n");
    match &r.metrics_holder {
        Some(h) => {
            let _ = writeln!(out, "DB-wide metrics exported by {h}");
        }
        None if r.totals.up > 0 => {
            let _ = writeln!(out, "DB-wide metrics: no replica holds the lease now");
        }
        None => {}
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = r
        .replicas
        .iter()
        .map(|x| {
            let status = match (x.status, x.stopped_at) {
                (ReplicaStatus::Stopped, Some(at)) => format!("stopped {}", time(Some(at))),
                (s, _) => s.label().to_string(),
            };
            vec![
                x.instance_id.clone(),
                status,
                x.version.clone(),
                x.hostname.clone(),
                time(Some(x.started_at)),
                format!("{} ago", age(x.heartbeat_age_s)),
                format!("{:.1}", x.requests_per_s),
                count(x.fills_in_flight),
                count(x.queue_depth),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "INSTANCE",
            "STATUS",
            "VERSION",
            "HOST",
            "STARTED",
            "HEARTBEAT",
            "REQ/S",
            "FILLS",
            "QUEUE",
        ],
        &[false, false, false, false, false, true, true, true, true],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_in_the_largest_whole_unit() {
        assert_eq!(age(-3), "0s");
        assert_eq!(age(59), "59s");
        assert_eq!(age(60), "1m");
        assert_eq!(age(7200), "2h");
        assert_eq!(age(200_000), "2d");
    }
}
