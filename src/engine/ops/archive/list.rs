//! `archive list`: every month with events in the database or an archive record.

use std::collections::BTreeMap;

use serde::Serialize;

use super::PartitionState;
use crate::engine::db::{partition_name, Month};
use crate::engine::error::Result;
use crate::engine::jobs::Report;
use crate::engine::Ctx;

/// One month in `archive list`.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionEntry {
    pub partition: String,
    pub year: i32,
    pub month: u32,
    /// Rows in the database, or in the archive when archived.
    pub rows: i64,
    /// `rows` is PostgreSQL's catalog estimate (`archive list --exact` counts); archived
    /// months' rows are the count recorded when they were archived.
    pub rows_estimated: bool,
    /// Size in the database (PostgreSQL), or of the Parquet parts when archived.
    pub bytes: Option<i64>,
    pub state: PartitionState,
    /// `s3://bucket/key` of the archive's manifest, when there is one.
    pub object: Option<String>,
    /// Rows in the database now (differs from `rows` when late events arrived after archiving).
    pub live_rows: i64,
}

/// `archive list`: every month with rows or an archive, oldest first. Serialises as an array.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct ArchiveListReport {
    pub partitions: Vec<PartitionEntry>,
}

impl Report for ArchiveListReport {}

/// Every month with rows in the database or an archive record. Live months' rows are the
/// catalog's estimate unless `exact` (which counts every partition: minutes at 100M rows).
pub async fn list(ctx: &Ctx, exact: bool) -> Result<ArchiveListReport> {
    let live = ctx.db.live_months(exact).await?;
    let records = ctx.db.archive_records().await?;
    let mut by_month: BTreeMap<Month, PartitionEntry> = BTreeMap::new();
    for l in &live {
        by_month.insert(
            l.month,
            PartitionEntry {
                partition: partition_name(l.month),
                year: l.month.year,
                month: l.month.month,
                rows: l.rows,
                rows_estimated: l.rows_estimated,
                bytes: l.bytes,
                state: if l.detached {
                    PartitionState::Archiving
                } else {
                    PartitionState::Live
                },
                object: None,
                live_rows: l.rows,
            },
        );
    }
    for r in records {
        let Some(m) = Month::from_partition_name(&r.partition) else {
            continue;
        };
        let live_rows = by_month.get(&m).map(|e| e.live_rows).unwrap_or(0);
        let object = Some(format!("s3://{}/{}", r.bucket, r.object_key));
        let entry = by_month.entry(m).or_insert_with(|| PartitionEntry {
            partition: r.partition.clone(),
            year: m.year,
            month: m.month,
            rows: 0,
            rows_estimated: false,
            bytes: None,
            state: PartitionState::Live,
            object: None,
            live_rows: 0,
        });
        entry.object = object;
        if entry.state == PartitionState::Archiving {
            // A restored month being archived again: the run under way decides.
        } else if r.state == "restored" {
            entry.state = PartitionState::Restored;
        } else {
            entry.state = PartitionState::Archived;
            entry.rows = r.row_count;
            entry.rows_estimated = false;
            entry.bytes = Some(r.bytes);
        }
        entry.live_rows = live_rows;
    }
    Ok(ArchiveListReport {
        partitions: by_month.into_values().collect(),
    })
}
