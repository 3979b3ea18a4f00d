//! A circuit breaker for the mirror bucket's reads on hits: after `THRESHOLD` failures in a row
//! (timeouts, 5xx, refused URLs) it opens for `COOLDOWN`, and hits go straight to the origin
//! instead of waiting on a bucket that is browning out. Then one request tries the bucket
//! again (half-open): a success closes the breaker, a failure opens it for another cooldown.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;

const THRESHOLD: u32 = 5;
const COOLDOWN: Duration = Duration::from_secs(10);

pub struct Breaker {
    failures: AtomicU32,
    /// While set and in the future, the breaker is open.
    open_until: Mutex<Option<Instant>>,
    gauge: Gauge,
}

impl Breaker {
    pub fn new(gauge: Gauge) -> Breaker {
        Breaker {
            failures: AtomicU32::new(0),
            open_until: Mutex::new(None),
            gauge,
        }
    }

    /// Whether a hit may read the mirror now. Past the cooldown one caller is let through
    /// (and the others kept out for another cooldown) to try it.
    pub fn allow(&self) -> bool {
        let mut open = self.open_until.lock().unwrap_or_else(|p| p.into_inner());
        match *open {
            None => true,
            Some(t) if Instant::now() < t => false,
            Some(_) => {
                *open = Some(Instant::now() + COOLDOWN);
                true
            }
        }
    }

    pub fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        let mut open = self.open_until.lock().unwrap_or_else(|p| p.into_inner());
        if open.take().is_some() {
            self.gauge.set(0);
            tracing::info!("mirror reads work again: circuit closed");
        }
    }

    pub fn failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= THRESHOLD {
            let mut open = self.open_until.lock().unwrap_or_else(|p| p.into_inner());
            if open.is_none() {
                tracing::warn!(
                    "mirror reads failed {n} times in a row: hits go to the origin for {COOLDOWN:?}"
                );
            }
            *open = Some(Instant::now() + COOLDOWN);
            self.gauge.set(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_and_closes_on_success() {
        let b = Breaker::new(Gauge::default());
        for _ in 0..THRESHOLD - 1 {
            b.failure();
            assert!(b.allow());
        }
        b.failure();
        assert!(!b.allow());
        b.success();
        assert!(b.allow());
    }
}
