//! The `validate_checkpoints` table: how far a `validate --all` of a bucket got (the last key
//! whose result is written, and the run's counts up to it), so that `validate --resume`
//! continues a run that stopped instead of starting over.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;

use super::{on_pool, ts, Db};
use crate::engine::error::Result;

/// What a validation run has found so far. Kept with the checkpoint, so that the report of a
/// resumed run counts the whole walk, not only the part after the checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ValidateCounts {
    pub checked: u64,
    pub fresh: u64,
    pub stale: u64,
    pub newly_stale: u64,
    pub missing_in_mirror: u64,
    pub origin_errors: u64,
    pub mirror_errors: u64,
}

/// How far a `validate --all` of `bucket` got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidateCheckpoint {
    pub bucket: String,
    /// The `operations` row of the run that wrote it.
    pub operation_id: i64,
    /// The last key (in byte order) whose result is written; `None` before the first batch.
    pub after_key: Option<String>,
    /// The run's counts up to and including `after_key`.
    pub counts: ValidateCounts,
}

/// Writes the checkpoint of a bucket, replacing the one there: binds bucket, operation id,
/// after key, counts (JSON) and the time.
pub(super) const UPSERT_CHECKPOINT: &str =
    "INSERT INTO validate_checkpoints (bucket, operation_id, after_key, counts, updated_at) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (bucket) DO UPDATE SET \
     operation_id = excluded.operation_id, after_key = excluded.after_key, \
     counts = excluded.counts, updated_at = excluded.updated_at";

impl Db {
    /// The checkpoint a stopped `validate --all` of `bucket` left, if any.
    pub async fn validate_checkpoint(&self, bucket: &str) -> Result<Option<ValidateCheckpoint>> {
        type Row = (String, i64, Option<String>, Json<ValidateCounts>);
        let r: Result<Option<Row>, sqlx::Error> = on_pool!(self, |p| {
            sqlx::query_as(
                "SELECT bucket, operation_id, after_key, counts FROM validate_checkpoints \
                 WHERE bucket = $1",
            )
            .bind(bucket)
            .fetch_optional(p)
            .await
        });
        let row = r.map_err(|e| self.err(e))?;
        Ok(row.map(
            |(bucket, operation_id, after_key, Json(counts))| ValidateCheckpoint {
                bucket,
                operation_id,
                after_key,
                counts,
            },
        ))
    }

    /// Writes `c` as the checkpoint of its bucket (a run's starting point, before any batch).
    pub async fn save_validate_checkpoint(
        &self,
        c: &ValidateCheckpoint,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let r: Result<(), sqlx::Error> = on_pool!(self, |p| {
            sqlx::query(UPSERT_CHECKPOINT)
                .bind(&c.bucket)
                .bind(c.operation_id)
                .bind(&c.after_key)
                .bind(Json(&c.counts))
                .bind(ts(at))
                .execute(p)
                .await
                .map(|_| ())
        });
        r.map_err(|e| self.err(e))
    }

    /// Deletes the checkpoint of `bucket`: its walk completed.
    pub async fn clear_validate_checkpoint(&self, bucket: &str) -> Result<()> {
        let r: Result<(), sqlx::Error> = on_pool!(self, |p| {
            sqlx::query("DELETE FROM validate_checkpoints WHERE bucket = $1")
                .bind(bucket)
                .execute(p)
                .await
                .map(|_| ())
        });
        r.map_err(|e| self.err(e))
    }
}
