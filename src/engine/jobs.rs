//! The job runner: progress events, cancellation, the mutation lock and the audit row that
//! every operation gets. Operations report through `Progress`; the TUI and headless mode
//! listen to the same events.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::{Error, Result};
use super::Ctx;

/// What a running job tells its listener.
#[derive(Debug, Clone)]
pub enum JobEvent {
    Started {
        kind: String,
    },
    Progress {
        done: u64,
        total: Option<u64>,
        msg: String,
    },
    Finished {
        ok: bool,
        msg: String,
    },
}

/// A progress sink and cancellation token handed to an operation.
#[derive(Clone, Default)]
pub struct Progress {
    sink: Option<Arc<dyn Fn(JobEvent) + Send + Sync>>,
    cancel: CancellationToken,
}

impl Progress {
    /// Progress that goes nowhere (tests, quiet runs).
    pub fn none() -> Progress {
        Progress::default()
    }

    /// Progress that goes nowhere, cancelled when `cancel` is (scheduled runs).
    pub fn quiet(cancel: CancellationToken) -> Progress {
        Progress { sink: None, cancel }
    }

    /// Progress delivered to a channel.
    pub fn channel() -> (Progress, mpsc::UnboundedReceiver<JobEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let p = Progress {
            sink: Some(Arc::new(move |e| {
                let _ = tx.send(e);
            })),
            cancel: CancellationToken::new(),
        };
        (p, rx)
    }

    /// Progress delivered to a callback.
    pub fn with_sink(f: impl Fn(JobEvent) + Send + Sync + 'static) -> Progress {
        Progress {
            sink: Some(Arc::new(f)),
            cancel: CancellationToken::new(),
        }
    }

    pub fn emit(&self, e: JobEvent) {
        if let Some(s) = &self.sink {
            s(e);
        }
    }

    pub fn update(&self, done: u64, total: Option<u64>, msg: impl Into<String>) {
        self.emit(JobEvent::Progress {
            done,
            total,
            msg: msg.into(),
        });
    }

    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// `Err(Cancelled)` once cancellation was asked for: call between units of work.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

/// A report that can say whether it found problems (exit 3, status `found_problems`).
pub trait Report: Serialize {
    fn found_problems(&self) -> bool {
        false
    }

    /// Items that failed while the run as a whole completed (status `partial`, exit 1).
    fn failures(&self) -> u64 {
        0
    }

    /// A preview that changed nothing (status `dry_run`).
    fn is_dry_run(&self) -> bool {
        false
    }
}

/// Runs an operation with its audit row and, when it mutates, the mutation lock.
/// The row records who, what, the params and the outcome (`ok`, `found_problems`, `partial`,
/// `failed`, `cancelled`, `dry_run`).
pub async fn audited<T, F, Fut>(
    ctx: &Ctx,
    kind: &str,
    params: &impl Serialize,
    mutating: bool,
    progress: &Progress,
    f: F,
) -> Result<T>
where
    T: Report,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    audited_with_id(ctx, kind, params, mutating, progress, |_| f()).await
}

/// `audited`, for an operation that needs the id of its own `operations` row (to name it in
/// what it leaves behind, such as a checkpoint).
pub async fn audited_with_id<T, F, Fut>(
    ctx: &Ctx,
    kind: &str,
    params: &impl Serialize,
    mutating: bool,
    progress: &Progress,
    f: F,
) -> Result<T>
where
    T: Report,
    F: FnOnce(i64) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let params = serde_json::to_value(params).unwrap_or(serde_json::Value::Null);
    let lock = if mutating {
        Some(ctx.db.acquire_lock(kind, &ctx.operator).await?)
    } else {
        None
    };
    let id = ctx.db.start_operation(kind, &params, &ctx.operator).await?;
    // The row's lease is renewed while the operation runs: a row whose lease ended belongs to
    // a process that is gone and is closed as `interrupted` by the next process to start.
    let beat = ctx.db.keep_operation_alive(id);
    if let Some(lock) = &lock {
        lock.cancel_on_loss(progress.token());
        if let Err(e) = lock.set_operation(id).await {
            tracing::warn!("naming operation {id} in the lock row: {e}");
        }
    }
    progress.emit(JobEvent::Started {
        kind: kind.to_string(),
    });
    let mut out = f(id).await;
    if lock.as_ref().is_some_and(|l| l.is_lost()) && matches!(out, Err(Error::Cancelled)) {
        out = Err(Error::Runtime(
            "stopped: the mutation lock was taken away while this ran (`lock release --force`, \
             or its lease ended while the process was stalled)"
                .into(),
        ));
    }
    let (status, summary) = match &out {
        Ok(r) => (
            if r.failures() > 0 {
                "partial"
            } else if r.is_dry_run() {
                "dry_run"
            } else if r.found_problems() {
                "found_problems"
            } else {
                "ok"
            },
            serde_json::to_value(r).unwrap_or(serde_json::Value::Null),
        ),
        Err(Error::Cancelled) => ("cancelled", serde_json::json!({ "error": "cancelled" })),
        Err(e) => ("failed", serde_json::json!({ "error": e.to_string() })),
    };
    let summary = strip_items(summary);
    beat.stop().await;
    let finish = ctx.db.finish_operation(id, status, &summary).await;
    if let Some(lock) = lock {
        // A lock taken away has nothing left to release (its session may be gone).
        let lost = lock.is_lost();
        let released = lock.release().await;
        if !lost {
            released?;
        }
    }
    progress.emit(JobEvent::Finished {
        ok: out.is_ok(),
        msg: match &out {
            Ok(_) => status.to_string(),
            Err(e) => e.to_string(),
        },
    });
    finish?;
    out
}

/// The audit summary keeps counts, not per-item lists that can be huge.
fn strip_items(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(obj) = v.as_object_mut() {
        obj.retain(|_, val| !matches!(val, serde_json::Value::Array(a) if a.len() > 20));
    }
    v
}
