//! `history`: the `operations` audit log, newest first.

use serde::Serialize;

use crate::engine::error::{Error, Result};
use crate::engine::jobs::Report;
use crate::engine::model::OperationRecord;
use crate::engine::Ctx;

#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct HistoryReport {
    pub operations: Vec<OperationRecord>,
}

impl Report for HistoryReport {}

pub async fn run(ctx: &Ctx, limit: i64) -> Result<HistoryReport> {
    if limit <= 0 {
        return Err(Error::Usage("--limit must be at least 1".into()));
    }
    Ok(HistoryReport {
        operations: ctx.db.list_operations(limit).await?,
    })
}
