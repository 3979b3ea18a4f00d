//! The optional per-client rate limit (`serve.rate_limit`, `serve.rate_burst`): a GCRA bucket
//! per client (`governor`); over the limit a request gets 429 with `Retry-After`. The client is
//! the peer address, or, when the peer is one of `serve.trusted_proxies`, the right-most
//! `X-Forwarded-For` address that is not a trusted proxy. IPv6 clients are counted by their /64,
//! which one subscriber usually holds whole.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;

use super::Shared;
use crate::config::ServeConfig;
use crate::engine::error::{Error, Result};

/// Clients remembered before those whose bucket has refilled are forgotten.
const MAX_CLIENTS: usize = 100_000;
/// The client count is looked at once per this many requests (counting takes every shard's
/// lock).
const COUNT_EVERY: usize = 1024;

pub struct Limiter {
    rate: f64,
    clients: DefaultKeyedRateLimiter<IpAddr>,
    trusted: Vec<IpNet>,
    checks: AtomicUsize,
    /// Clients above which the refilled ones are dropped: `MAX_CLIENTS`, or twice what was
    /// left after the last pruning when most were still counting, so an address churn that
    /// outpaces refilling costs one pass over the map per doubling, not one per check.
    prune_above: AtomicUsize,
}

impl Limiter {
    /// The limiter `cfg` asks for, or `None` when `serve.rate_limit` is 0.
    pub fn from_config(cfg: &ServeConfig) -> Result<Option<Limiter>> {
        if cfg.rate_limit <= 0.0 {
            return Ok(None);
        }
        let trusted = cfg.trusted_proxy_nets().map_err(Error::Usage)?;
        Ok(Some(Limiter::new(cfg.rate_limit, cfg.rate_burst, trusted)))
    }

    /// `rate` requests per second per client (positive), up to `burst` at once.
    pub fn new(rate: f64, burst: u32, trusted: Vec<IpNet>) -> Limiter {
        let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Limiter {
            rate,
            clients: DefaultKeyedRateLimiter::keyed(quota),
            trusted,
            checks: AtomicUsize::new(0),
            prune_above: AtomicUsize::new(MAX_CLIENTS),
        }
    }

    /// The key a request from `peer` with `headers` is counted under.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return key(peer);
        }
        // Each proxy appends the address it got the request from, so only the right end of
        // the list is trustworthy: walk it from the right while the hops are our proxies.
        let mut client = peer;
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect::<Vec<_>>();
        for hop in hops.into_iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                // Garbage is not an address to count: the last good hop answers for it.
                break;
            };
            client = ip;
            if !self.is_trusted(ip) {
                break;
            }
        }
        key(client)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// Takes one request from `client`'s budget, or says how long until there is one.
    pub fn check(&self, client: IpAddr) -> std::result::Result<(), Duration> {
        let verdict = self
            .clients
            .check_key(&client)
            .map_err(|not_until| not_until.wait_time_from(self.clients.clock().now()));
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(COUNT_EVERY)
        {
            self.prune();
        }
        verdict
    }

    /// Forgets the clients whose bucket is full again (a new request would find it the same)
    /// once there are more than `prune_above`.
    fn prune(&self) {
        let above = self.prune_above.load(Ordering::Relaxed);
        if self.clients.len() <= above {
            return;
        }
        self.clients.retain_recent();
        self.clients.shrink_to_fit();
        let left = self.clients.len();
        self.prune_above
            .store(MAX_CLIENTS.max(left.saturating_mul(2)), Ordering::Relaxed);
    }

    #[cfg(test)]
    fn clients(&self) -> usize {
        self.clients.len()
    }
}

/// What a client is counted as: its address, or its /64 for IPv6.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & (u128::MAX << 64))),
    }
}

/// A client as an operator reads it: the address, or `2001:db8::/64`.
fn label(client: IpAddr) -> String {
    match client {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("{v6}/64"),
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

pub async fn middleware(
    State(s): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(limiter) = &s.limiter {
        let client = limiter.client(peer.ip(), req.headers());
        if let Err(wait) = limiter.check(client) {
            s.metrics.rate_limited.inc();
            let mut r = super::json_error(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "rate limit: more than {} requests per second from {}",
                    limiter.rate,
                    label(client)
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

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn nets(v: &[&str]) -> Vec<IpNet> {
        let cfg = ServeConfig {
            trusted_proxies: v.iter().map(|s| s.to_string()).collect(),
            ..ServeConfig::default()
        };
        cfg.trusted_proxy_nets().expect("trusted proxies")
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn the_burst_is_spent_then_refills_at_the_rate() {
        let l = Limiter::new(10.0, 2, Vec::new());
        let a = ip("127.0.0.1");
        assert!(l.check(a).is_ok());
        assert!(l.check(a).is_ok());
        let wait = l.check(a).expect_err("burst spent");
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        std::thread::sleep(Duration::from_millis(110));
        assert!(l.check(a).is_ok());
        assert!(
            l.check(ip("127.0.0.2")).is_ok(),
            "another client has its own budget"
        );
    }

    #[test]
    fn a_fractional_rate_works() {
        let l = Limiter::new(0.5, 1, Vec::new());
        let a = ip("10.1.2.3");
        assert!(l.check(a).is_ok());
        let wait = l.check(a).expect_err("spent");
        assert!(wait > Duration::from_millis(1500) && wait <= Duration::from_secs(2));
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let l = Limiter::new(1.0, 1, nets(&["10.0.0.0/8", "192.0.2.7"]));
        let h = xff(&["203.0.113.9"]);
        // From an untrusted peer the header is ignored.
        assert_eq!(l.client(ip("198.51.100.1"), &h), ip("198.51.100.1"));
        // From a trusted one, the right-most address that is not a proxy.
        assert_eq!(l.client(ip("10.2.3.4"), &h), ip("203.0.113.9"));
        let h = xff(&["1.1.1.1, 203.0.113.9, 10.9.9.9", "192.0.2.7"]);
        assert_eq!(l.client(ip("192.0.2.7"), &h), ip("203.0.113.9"));
        // A spoofed left part does not matter: the proxy appended the real peer.
        let h = xff(&["6.6.6.6, 203.0.113.10"]);
        assert_eq!(l.client(ip("10.0.0.1"), &h), ip("203.0.113.10"));
        // Ports and brackets are accepted; garbage ends the walk at the last good hop.
        let h = xff(&["203.0.113.11:4711"]);
        assert_eq!(l.client(ip("10.0.0.1"), &h), ip("203.0.113.11"));
        let h = xff(&["[2001:db8::5]:443"]);
        assert_eq!(l.client(ip("10.0.0.1"), &h), ip("2001:db8::"));
        let h = xff(&["unknown, 10.0.0.2"]);
        assert_eq!(l.client(ip("10.0.0.1"), &h), ip("10.0.0.2"));
        // No header: the proxy itself.
        assert_eq!(l.client(ip("10.0.0.1"), &HeaderMap::new()), ip("10.0.0.1"));
    }

    #[test]
    fn ipv6_clients_share_their_64_and_mapped_ipv4_stays_ipv4() {
        let l = Limiter::new(1.0, 1, Vec::new());
        let none = HeaderMap::new();
        let a = l.client(ip("2001:db8:1:2:aaaa::1"), &none);
        let b = l.client(ip("2001:db8:1:2:bbbb::2"), &none);
        let c = l.client(ip("2001:db8:1:3::1"), &none);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(l.check(a).is_ok());
        assert!(l.check(b).is_err(), "same /64, same budget");
        assert!(l.check(c).is_ok());
        assert_eq!(label(a), "2001:db8:1:2::/64");
        // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d: they must not all land
        // in ::ffff:0:0/64.
        let v4 = l.client(ip("::ffff:192.0.2.1"), &none);
        assert_eq!(v4, ip("192.0.2.1"));
        assert_ne!(v4, l.client(ip("::ffff:192.0.2.2"), &none));
    }

    #[test]
    fn address_churn_does_not_keep_every_address() {
        // 1000 per second: a client's bucket is full again 1 ms after its request.
        let l = Limiter::new(1000.0, 1, Vec::new());
        let n: u32 = 200_000;
        for i in 0..n {
            let a = IpAddr::V4(std::net::Ipv4Addr::from_bits(0x0a00_0000 + i));
            assert!(l.check(a).is_ok());
        }
        let left = l.clients();
        assert!(
            left <= MAX_CLIENTS + COUNT_EVERY,
            "{left} of {n} addresses still remembered"
        );
    }
}
