//! Connection threads: one single-threaded runtime per thread, each serving the download
//! connections handed to it, as nginx's workers do. A connection's socket, its timers and its
//! mirror connections are registered with that thread's runtime, so their readiness wakes no
//! other thread. On the shared multi-threaded runtime serve switched context 3.0–3.6 times per
//! 64 KiB hit, against nginx's 1.9 and 2.18 on connection threads (BENCHMARKS.md).
//!
//! The acceptor hands each new connection to the thread with the fewest open ones. Work a
//! request starts (a fill's upload, a pooled mirror connection) runs on its thread's runtime,
//! which lives until `Cores` is dropped: drop it only after such work drained.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::engine::error::{Error, Result};

thread_local! {
    /// Which connection thread this is (`None` off them).
    static CORE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The connection thread the caller runs on, if any.
pub fn current() -> Option<usize> {
    CORE.with(|c| c.get())
}

/// Connection threads when `--threads` is not given: one per core but one, which is left to the
/// rest of `serve` (the S3 front, replication, fills' uploads, the event writer) and to the
/// host; at least one. On 2 cores shared with the S3 server and the load generator, one
/// connection thread served more 1 KiB hits than two at two thirds of the CPU per hit
/// (BENCHMARKS.md, "serve: hits against nginx").
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

struct Core {
    handle: Handle,
    open: Arc<AtomicUsize>,
    /// Dropping it ends the thread's runtime.
    _stop: oneshot::Sender<()>,
}

pub struct Cores {
    cores: Vec<Core>,
}

impl Cores {
    /// Starts `n` connection threads (at least one).
    pub fn start(n: usize) -> Result<Cores> {
        let mut cores = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::runtime(format!("connection thread {i}: {e}")))?;
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("serve-conn-{i}"))
                .spawn(move || {
                    CORE.with(|c| c.set(Some(i)));
                    // Ends when `Cores` is dropped; what is still running on it is dropped
                    // here, off any runtime.
                    let _ = rt.block_on(stopped);
                    drop(rt);
                })
                .map_err(|e| Error::runtime(format!("connection thread {i}: {e}")))?;
            cores.push(Core {
                handle,
                open: Arc::new(AtomicUsize::new(0)),
                _stop: stop,
            });
        }
        Ok(Cores { cores })
    }

    /// Runs a connection on the thread with the fewest open ones.
    pub fn spawn(&self, conn: impl Future<Output = ()> + Send + 'static) {
        let core = self
            .cores
            .iter()
            .min_by_key(|c| c.open.load(Ordering::Relaxed))
            .expect("at least one connection thread");
        let open = core.open.clone();
        open.fetch_add(1, Ordering::Relaxed);
        core.handle.spawn(async move {
            let _open = Open(open);
            conn.await
        });
    }
}

/// Counts a connection open until its task ends or is dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_are_spread_over_the_threads_and_run_there() {
        let cores = Cores::start(2).expect("threads");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (hold, held) = tokio::sync::watch::channel(false);
        for _ in 0..4 {
            let (tx, mut held) = (tx.clone(), held.clone());
            cores.spawn(async move {
                tx.send(current()).expect("send");
                let _ = held.wait_for(|h| *h).await;
            });
        }
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(rx.recv().await.expect("a connection ran"));
        }
        seen.sort();
        assert_eq!(seen, [Some(0), Some(0), Some(1), Some(1)]);
        assert_eq!(current(), None);
        hold.send(true).expect("release");
    }
}
