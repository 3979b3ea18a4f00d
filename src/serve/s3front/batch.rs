//! Group commit for the front's database writes. Requests that arrive while a batch is being
//! written wait together and go to the database as the next batch: one transaction for many
//! writes' intents, one for many writes' records. A lone request is written at once (no timer,
//! no added wait); under load the batches grow by themselves, and the database does a
//! fraction of the commits and round trips it would do for one request each.
//!
//! A batch that fails is written again one request at a time, so a request gets its own error
//! and never another one's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::engine::error::{Error, Result};

/// At most this many items in one batch.
const MAX_ITEMS: usize = 128;
/// Requests waiting for a batch, before a sender waits too.
const QUEUE: usize = 1024;

type Write<I, O> =
    Arc<dyn Fn(Vec<I>) -> Pin<Box<dyn Future<Output = Result<Vec<O>>> + Send>> + Send + Sync>;

struct Job<I, O> {
    items: Vec<I>,
    reply: oneshot::Sender<Result<Vec<O>>>,
}

/// Writes items in batches through `write`, which must return one output per item, in order.
pub struct Batcher<I, O> {
    jobs: mpsc::Sender<Job<I, O>>,
}

impl<I, O> Batcher<I, O>
where
    I: Clone + Send + 'static,
    O: Send + 'static,
{
    /// Starts the batching task: up to `parallel` batches are written at once.
    pub fn new<F, Fut>(parallel: usize, write: F) -> Batcher<I, O>
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<O>>> + Send + 'static,
    {
        let write: Write<I, O> = Arc::new(move |items| Box::pin(write(items)));
        let (jobs, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(rx, write, Arc::new(Semaphore::new(parallel.max(1)))));
        Batcher { jobs }
    }

    /// Writes `items` in the next batch; their outputs, in order.
    pub async fn write(&self, items: Vec<I>) -> Result<Vec<O>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        let stopped = || Error::runtime("the database writer has stopped");
        self.jobs
            .send(Job { items, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run<I, O>(mut rx: mpsc::Receiver<Job<I, O>>, write: Write<I, O>, slots: Arc<Semaphore>)
where
    I: Clone + Send + 'static,
    O: Send + 'static,
{
    loop {
        // A free slot first: requests arriving meanwhile join the batch gathered next.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut n = first.items.len();
        let mut batch = vec![first];
        while n < MAX_ITEMS {
            match rx.try_recv() {
                Ok(job) => {
                    n += job.items.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let write = write.clone();
        tokio::spawn(async move {
            write_batch(batch, &write).await;
            drop(slot);
        });
    }
}

async fn write_batch<I: Clone, O>(batch: Vec<Job<I, O>>, write: &Write<I, O>) {
    if batch.len() == 1 {
        for job in batch {
            let out = write(job.items).await;
            let _ = job.reply.send(out);
        }
        return;
    }
    let items: Vec<I> = batch.iter().flat_map(|j| j.items.iter().cloned()).collect();
    let total = items.len();
    match write(items).await {
        Ok(outs) if outs.len() == total => {
            let mut outs = outs.into_iter();
            for job in batch {
                let mine = outs.by_ref().take(job.items.len()).collect();
                let _ = job.reply.send(Ok(mine));
            }
        }
        // One request alone, so each gets its own answer.
        _ => {
            for job in batch {
                let out = write(job.items).await;
                let _ = job.reply.send(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_requests_share_batches_and_get_their_own_answers() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let b = Arc::new(Batcher::new(1, move |items: Vec<i64>| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                if items.contains(&-1) && items.len() > 1 {
                    return Err(Error::runtime("a bad item spoils the batch"));
                }
                if items == [-1] {
                    return Err(Error::runtime("bad item"));
                }
                Ok(items.iter().map(|i| i * 10).collect::<Vec<i64>>())
            }
        }));
        let mut tasks = Vec::new();
        for i in 0..40i64 {
            let b = b.clone();
            tasks.push(tokio::spawn(
                async move { b.write(vec![i, i + 1000]).await },
            ));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let i = i as i64;
            assert_eq!(t.await.unwrap().unwrap(), vec![i * 10, (i + 1000) * 10]);
        }
        let batched = calls.load(Ordering::SeqCst);
        assert!(batched < 40, "40 requests took {batched} writes");

        // A failing batch is written again request by request: only the bad one fails. The
        // slow first write holds the only slot, so the two after it make one batch.
        let before = calls.load(Ordering::SeqCst);
        let slow = {
            let b = b.clone();
            tokio::spawn(async move { b.write(vec![5]).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let good = {
            let b = b.clone();
            tokio::spawn(async move { b.write(vec![7]).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        let bad = b.write(vec![-1]).await;
        assert!(bad.is_err());
        assert_eq!(good.await.unwrap().unwrap(), vec![70]);
        assert_eq!(slow.await.unwrap().unwrap(), vec![50]);
        // The slow write, the failed batch of two, then each of the two alone.
        assert_eq!(calls.load(Ordering::SeqCst) - before, 4);
    }
}
