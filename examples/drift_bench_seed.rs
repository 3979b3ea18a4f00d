//! Seeds a main and a backup bucket (and a SQLite inventory) with N objects and drift of every
//! kind, for scripts/bench-drift.sh. Usage:
//!
//!   drift_bench_seed ENDPOINT KEY SECRET MAIN BACKUP N SQLITE_PATH
//!
//! Per 1,000 keys: one missing in backup, one extra in backup, one of another size, one of
//! the same size with other bytes, one without an inventory row; plus N/1,000 orphaned rows.
//! Keys are `mods/<game>/<mod>/file-<i>-v<n>.zip`: 9,700 directories, as a mod mirror has.

use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use mirrorctl::config::BucketConfig;
use mirrorctl::engine::db::Db;
use mirrorctl::engine::model::InventoryRow;
use mirrorctl::engine::s3::S3Bucket;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, endpoint, key, secret, main_name, backup_name, n, sqlite] = args.as_slice() else {
        anyhow::bail!("usage: drift_bench_seed ENDPOINT KEY SECRET MAIN BACKUP N SQLITE_PATH");
    };
    let n: u64 = n.parse()?;
    let main = S3Bucket::connect(&BucketConfig::with_static_keys(
        main_name, endpoint, key, secret,
    ))
    .await?;
    let backup = S3Bucket::connect(&BucketConfig::with_static_keys(
        backup_name,
        endpoint,
        key,
        secret,
    ))
    .await?;
    main.ensure_bucket().await?;
    backup.ensure_bucket().await?;
    let db = Db::connect(
        &format!("sqlite://{sqlite}"),
        4,
        std::time::Duration::from_secs(10),
    )
    .await?;
    db.migrate().await?;

    let key_of = |i: u64| format!("mods/{}/{}/file-{i}-v{}.zip", i % 97, (i / 97) % 100, i % 7);
    let started = std::time::Instant::now();
    let puts = futures::stream::iter(0..n)
        .map(|i| {
            let (main, backup) = (&main, &backup);
            let k = key_of(i);
            async move {
                let body = format!("{k}:{}", "x".repeat((i % 200) as usize));
                let mut etag = None;
                if i % 1000 != 2 {
                    etag = main
                        .put_bytes(&k, Bytes::from(body.clone()), None)
                        .await?
                        .etag;
                }
                if i % 1000 != 1 {
                    let b = match i % 1000 {
                        3 => format!("{body}-longer"),
                        4 => body.replace(':', ";"),
                        _ => body.clone(),
                    };
                    backup.put_bytes(&k, Bytes::from(b), None).await?;
                }
                Ok::<_, mirrorctl::engine::error::Error>((i, k, body.len(), etag))
            }
        })
        .buffer_unordered(64);
    futures::pin_mut!(puts);
    let mut rows = Vec::new();
    let mut done = 0u64;
    while let Some(r) = puts.next().await {
        let (i, k, size, etag) = r?;
        done += 1;
        if done.is_multiple_of(20_000) {
            eprintln!("{done}/{n} in {:.0}s", started.elapsed().as_secs_f64());
        }
        if i % 1000 == 2 || i % 1000 == 5 {
            continue;
        }
        rows.push(InventoryRow {
            path: k,
            size: size as i64,
            etag,
            content_type: Some("application/zip".into()),
            is_backed_up: i % 1000 != 1,
            last_modified: Some(Utc::now()),
            deleted: false,
            updated_at: Utc::now(),
        });
        if rows.len() >= 10_000 {
            db.upsert_inventory(&rows).await?;
            rows.clear();
        }
    }
    for i in 0..n / 1000 {
        rows.push(InventoryRow {
            path: format!("mods/ghost/{i}.zip"),
            size: 1,
            etag: None,
            content_type: None,
            is_backed_up: true,
            last_modified: None,
            deleted: false,
            updated_at: Utc::now(),
        });
    }
    db.upsert_inventory(&rows).await?;
    eprintln!("seeded {n} keys in {:.0}s", started.elapsed().as_secs_f64());
    Ok(())
}
