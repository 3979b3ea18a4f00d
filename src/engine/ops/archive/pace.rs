//! The export's pace: batches pass from the database to the Parquet writer at most so many
//! rows a second, so that an archive shares the machine with the data plane instead of taking
//! every core it can for the length of the export. The queues on both sides are short, so
//! the database reads only as fast as batches pass.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::QUEUE_BATCHES;
use crate::engine::db::EventRow;

/// Forwards the batches of `rx` at most `rows_per_second` rows a second on average (`0`: as
/// they come). Ends when `rx` ends or the receiver returned is dropped.
pub(super) fn paced(
    mut rx: mpsc::Receiver<Vec<EventRow>>,
    rows_per_second: u64,
) -> mpsc::Receiver<Vec<EventRow>> {
    if rows_per_second == 0 {
        return rx;
    }
    let (tx, out) = mpsc::channel(QUEUE_BATCHES);
    tokio::spawn(async move {
        let start = Instant::now();
        let mut rows = 0u64;
        while let Some(batch) = rx.recv().await {
            // A batch may leave once the rows before it have had their time.
            tokio::time::sleep_until(start + due(rows, rows_per_second)).await;
            rows += batch.len() as u64;
            if tx.send(batch).await.is_err() {
                break;
            }
        }
    });
    out
}

/// How long `rows` rows take at `rows_per_second`.
fn due(rows: u64, rows_per_second: u64) -> Duration {
    Duration::from_secs_f64(rows as f64 / rows_per_second.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> Vec<EventRow> {
        (0..n)
            .map(|i| EventRow {
                id: i as i64,
                occurred_at: chrono::Utc::now(),
                file_id: 1,
                cache_hit: true,
                bytes: 1,
                duration_ms: 1,
                status: 200,
            })
            .collect()
    }

    #[tokio::test]
    async fn batches_pass_at_the_rate_and_unpaced_is_the_same_channel() {
        let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
        let mut out = paced(rx, 10_000);
        tokio::spawn(async move {
            for _ in 0..4 {
                tx.send(batch(500)).await.unwrap();
            }
        });
        let t0 = Instant::now();
        let mut got = 0;
        while let Some(b) = out.recv().await {
            got += b.len();
        }
        assert_eq!(got, 2_000);
        // The 4th batch leaves after the first 1,500 rows' time: 150 ms.
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(150), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert_eq!(due(250_000, 250_000), Duration::from_secs(1));
    }
}
