//! A PUT load generator for scripts/bench-s3front.sh: N objects of SIZE bytes under PREFIX,
//! CONCURRENCY at once, either as fast as they go or paced at RATE PUTs per second, through
//! the AWS SDK (the engine's bucket type), against any S3 endpoint: the front or a bucket
//! directly. Prints one JSON line: puts, errors, seconds, puts_per_s, p50_ms, p99_ms, and
//! `acked`, the keys written (to check nothing acknowledged was lost), when KEYS_OUT is given.
//!
//! With COPY_TO=BUCKET in the environment, each object is also copied server-side into BUCKET
//! (same endpoint) right after its PUT, and counts once both are done: what a replicated write
//! costs the S3 server itself, with nothing in front of it.
//!
//!   s3_put_load ENDPOINT KEY SECRET BUCKET PREFIX N SIZE CONCURRENCY [RATE] [KEYS_OUT]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use mirrorctl::config::BucketConfig;
use mirrorctl::engine::s3::S3Bucket;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (endpoint, key, secret, bucket, prefix, n, size, conc, rate, keys_out) = match args.as_slice() {
        [_, e, k, s, b, p, n, z, c] => (e, k, s, b, p, n, z, c, None, None),
        [_, e, k, s, b, p, n, z, c, r] => (e, k, s, b, p, n, z, c, Some(r), None),
        [_, e, k, s, b, p, n, z, c, r, o] => (e, k, s, b, p, n, z, c, Some(r), Some(o)),
        _ => anyhow::bail!(
            "usage: s3_put_load ENDPOINT KEY SECRET BUCKET PREFIX N SIZE CONCURRENCY [RATE] [KEYS_OUT]"
        ),
    };
    let n: usize = n.parse()?;
    let size: usize = size.parse()?;
    let conc: usize = conc.parse()?;
    let rate: f64 = rate.map(|r| r.parse()).transpose()?.unwrap_or(0.0);
    let b = S3Bucket::connect(&BucketConfig::with_static_keys(
        bucket, endpoint, key, secret,
    ))
    .await?;
    let copy_to = match std::env::var("COPY_TO") {
        Ok(dst) => Some(
            S3Bucket::connect(&BucketConfig::with_static_keys(&dst, endpoint, key, secret)).await?,
        ),
        Err(_) => None,
    };
    let body = Bytes::from((0..size).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>());
    let start = Instant::now();
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let results: Vec<Result<Duration, String>> = futures::stream::iter(0..n)
        .map(|i| {
            let (b, body, acked, prefix) = (b.clone(), body.clone(), acked.clone(), prefix.clone());
            let copy_to = copy_to.clone();
            async move {
                if rate > 0.0 {
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let k = format!("{prefix}{i:08}.bin");
                let t = Instant::now();
                b.put_bytes(&k, body, None)
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some(dst) = &copy_to {
                    dst.copy_from(&b, &k, &k).await.map_err(|e| e.to_string())?;
                }
                if let Ok(mut a) = acked.lock() {
                    a.push(k);
                }
                Ok(t.elapsed())
            }
        })
        .buffer_unordered(conc)
        .collect()
        .await;
    let secs = start.elapsed().as_secs_f64();
    let mut ok: Vec<Duration> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    ok.sort();
    let pct = |p: f64| {
        ok.get(((ok.len() as f64 * p) as usize).min(ok.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    if let Some(path) = keys_out {
        let keys = acked.lock().map(|a| a.join("\n")).unwrap_or_default();
        std::fs::write(path, keys + "\n")?;
    }
    println!(
        "{}",
        serde_json::json!({
            "puts": ok.len(),
            "errors": errors.len(),
            "first_error": errors.first(),
            "seconds": secs,
            "puts_per_s": ok.len() as f64 / secs,
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
        })
    );
    Ok(())
}
