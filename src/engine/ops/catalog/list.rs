//! `catalog list` and `catalog show`: entries with the state of their mirrored copy, URLs
//! printed without credentials or query strings.

use serde::Serialize;

use crate::engine::db::CatalogRow;
use crate::engine::error::{Error, Result};
use crate::engine::origin::redact_query;
use crate::engine::Ctx;

#[derive(Debug, Clone, Default)]
pub struct CatalogListParams {
    /// Only entries without a fresh mirrored copy.
    pub unmirrored: bool,
    /// Only keys (or URLs) containing this text.
    pub filter: Option<String>,
    pub limit: i64,
    /// Entries with ids above this one (paging).
    pub after_id: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CatalogList {
    /// Live entries in the catalog.
    pub total: i64,
    /// Of those, without a fresh mirrored copy.
    pub unmirrored: i64,
    pub entries: Vec<CatalogRow>,
}

/// A page of the catalog, URLs redacted.
pub async fn list(ctx: &Ctx, p: &CatalogListParams) -> Result<CatalogList> {
    if p.limit < 0 {
        return Err(Error::Usage("--limit must not be negative".into()));
    }
    let bucket = mirror_bucket(ctx)?;
    let (total, unmirrored) = ctx.db.catalog_counts(&bucket).await?;
    let entries = ctx
        .db
        .catalog_page(
            &bucket,
            p.after_id,
            p.limit,
            p.unmirrored,
            p.filter.as_deref(),
        )
        .await?
        .into_iter()
        .map(redacted)
        .collect();
    Ok(CatalogList {
        total,
        unmirrored,
        entries,
    })
}

/// One entry by id or `source/remote_id`; unknown ones are a usage error (exit 2).
pub async fn show(ctx: &Ctx, id: &str) -> Result<CatalogRow> {
    ctx.db
        .catalog_get(&mirror_bucket(ctx)?, id)
        .await?
        .map(redacted)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "no catalog entry with id or source/remote_id {id:?}"
            ))
        })
}

/// The configured mirror bucket's name (no connection needed).
fn mirror_bucket(ctx: &Ctx) -> Result<String> {
    Ok(ctx
        .config
        .mirror_bucket()
        .map_err(Error::Usage)?
        .bucket
        .clone())
}

fn redacted(mut r: CatalogRow) -> CatalogRow {
    r.url = redact_query(&r.url);
    r
}
