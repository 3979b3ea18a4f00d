//! `catalog sync`: the catalog read from the origin itself. An S3 origin's bucket is listed
//! (source `s3`, the key as remote id, URL and mirror key); an HTTP origin serves a JSON Lines
//! manifest at `origin.catalog_url`, read like `catalog import`.

use futures::TryStreamExt;
use tokio::sync::mpsc;

use super::{parse, stage_and_merge, BatchResult, Format, ImportInput, ImportParams, ImportReport};
use crate::engine::error::{Error, Result};
use crate::engine::jobs::{audited, Progress};
use crate::engine::origin::Origin;
use crate::engine::Ctx;

/// Reads the origin's catalog and merges it (`p.input` is ignored; `p.prune` and its guards
/// apply as for an import).
pub async fn sync(ctx: &Ctx, mut p: ImportParams, progress: &Progress) -> Result<ImportReport> {
    super::check_guards(ctx, &p)?;
    let origin = ctx.origin().await?;
    let (label, rx) = match origin {
        Origin::S3(bucket) => {
            let label = format!("s3://{}/{}", bucket.name(), bucket.prefix());
            (label, list_in_task(bucket.clone()))
        }
        Origin::Http(http) => {
            let url = ctx.config.origin.catalog_url.clone().ok_or_else(|| {
                Error::Usage(
                    "catalog sync needs origin.catalog_url (a JSON Lines manifest) or origin.kind = \"s3\""
                        .into(),
                )
            })?;
            let body = http.get(&url).await?.ok_or_else(|| Error::Origin {
                url: crate::engine::origin::redact_query(&url),
                message: "catalog manifest not found (HTTP 404)".into(),
            })?;
            let label = crate::engine::origin::redact_query(&url);
            let input = tokio_util::io::SyncIoBridge::new(body.body);
            let defaults = super::defaults_for(ctx)?;
            let rx = super::read_in_thread(Box::new(input), Format::Jsonl, defaults, label.clone());
            (label, rx)
        }
    };
    p.input = ImportInput::Origin(label.clone());
    audited(ctx, "catalog-sync", &p, !p.dry_run, progress, || {
        stage_and_merge(ctx, rx, &p, label.clone(), progress)
    })
    .await
}

/// Lists the origin bucket into batches of entries (keys the mirror cannot store are skipped
/// with a line error naming the key).
fn list_in_task(bucket: crate::engine::s3::S3Bucket) -> mpsc::Receiver<BatchResult> {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let pages = bucket.list_pages(bucket.prefix().to_string(), None, 1000);
        futures::pin_mut!(pages);
        let mut n = 0u64;
        loop {
            let page = match pages.try_next().await {
                Ok(Some(page)) => page,
                Ok(None) => {
                    let _ = tx
                        .send(Ok(parse::Batch {
                            end: true,
                            ..Default::default()
                        }))
                        .await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string())).await;
                    return;
                }
            };
            let mut batch = parse::Batch::default();
            for o in &page {
                n += 1;
                batch.lines += 1;
                match super::entry_of_object(o) {
                    Some(e) => batch.entries.push((n, e)),
                    None => batch.bad.push(parse::LineError {
                        line: n,
                        field: Some("key".into()),
                        message: format!("{:?} cannot be a mirror key", o.key),
                    }),
                }
            }
            if tx.send(Ok(batch)).await.is_err() {
                return;
            }
        }
    });
    rx
}
