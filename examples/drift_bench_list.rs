//! The floor for `drift`'s wall time, for scripts/bench-drift.sh: lists a main and a backup
//! bucket at the same time, each from its first key to its last in pages of 1,000, with the
//! same S3 client as mirrorctl, and compares nothing: no range planning, no inventory, no
//! merge, no output per key. Prints the keys listed and the seconds. Usage:
//!
//!   drift_bench_list ENDPOINT KEY SECRET MAIN BACKUP

use futures::TryStreamExt;
use mirrorctl::config::BucketConfig;
use mirrorctl::engine::s3::S3Bucket;

async fn count(bucket: &S3Bucket) -> anyhow::Result<u64> {
    let pages = bucket.list_pages(String::new(), None, 1000);
    futures::pin_mut!(pages);
    let mut n = 0u64;
    while let Some(page) = pages.try_next().await? {
        n += page.len() as u64;
    }
    Ok(n)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, endpoint, key, secret, main_name, backup_name] = args.as_slice() else {
        anyhow::bail!("usage: drift_bench_list ENDPOINT KEY SECRET MAIN BACKUP");
    };
    let main_cfg = BucketConfig::with_static_keys(main_name, endpoint, key, secret);
    let backup_cfg = BucketConfig::with_static_keys(backup_name, endpoint, key, secret);
    let (main, backup) =
        tokio::try_join!(S3Bucket::connect(&main_cfg), S3Bucket::connect(&backup_cfg))?;
    let started = std::time::Instant::now();
    let (m, b) = tokio::try_join!(count(&main), count(&backup))?;
    println!(
        "listed main {m} and backup {b} keys in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
