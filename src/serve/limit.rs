//! The optional per-client rate limit (`serve.rate_limit`, `serve.rate_burst`): a token bucket
//! per client address; over the limit a request gets 429 with `Retry-After`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::Shared;

/// Client buckets kept before idle (full) ones are forgotten.
const MAX_CLIENTS: usize = 100_000;

pub struct Limiter {
    rate: f64,
    burst: f64,
    clients: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl Limiter {
    pub fn new(rate: f64, burst: u32) -> Limiter {
        Limiter {
            rate,
            burst: f64::from(burst.max(1)),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `ip`, or says how long until one is available.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&ip) {
            let full_after = Duration::from_secs_f64(self.burst / self.rate);
            clients.retain(|_, (_, at)| now.duration_since(*at) < full_after);
        }
        let (tokens, at) = clients.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.rate))
        }
    }
}

pub async fn middleware(
    State(s): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(limiter) = &s.limiter {
        if let Err(wait) = limiter.check(peer.ip(), Instant::now()) {
            s.metrics.rate_limited.inc();
            let mut r = super::json_error(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "rate limit: more than {} requests per second from {}",
                    limiter.rate,
                    peer.ip()
                ),
            );
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return r;
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_the_rate() {
        let l = Limiter::new(10.0, 2);
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let t0 = Instant::now();
        assert!(l.check(ip, t0).is_ok());
        assert!(l.check(ip, t0).is_ok());
        let wait = l.check(ip, t0).expect_err("burst spent");
        assert!(wait <= Duration::from_millis(100));
        assert!(l.check(ip, t0 + Duration::from_millis(100)).is_ok());
        let other: IpAddr = "127.0.0.2".parse().expect("ip");
        assert!(l.check(other, t0).is_ok());
    }
}
