//! Small in-memory caches of the data plane (file rows, presigned URLs, origin 404s): bounded,
//! with a time-to-live per entry, and scan-resistant. Eviction is `quick_cache`'s S3-FIFO: a
//! new key has to be read again before it may displace keys that are read often, so a client
//! asking for a million random keys cannot push the popular files' rows out.

use std::borrow::Borrow;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Entries kept by `TtlCache::new`.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// Values kept for a while: at most `capacity` entries (the least useful are evicted first), each
/// forgotten `ttl` after it was put.
pub struct TtlCache<K, V> {
    ttl: Duration,
    entries: quick_cache::sync::Cache<K, (Instant, V)>,
}

impl<K: Hash + Eq, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration) -> Self {
        TtlCache::with_capacity(ttl, DEFAULT_CAPACITY)
    }

    pub fn with_capacity(ttl: Duration, capacity: usize) -> Self {
        TtlCache {
            ttl,
            entries: quick_cache::sync::Cache::new(capacity.max(1)),
        }
    }

    pub fn get<Q>(&self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (at, v) = self.entries.get(k)?;
        if at.elapsed() < self.ttl {
            return Some(v);
        }
        // Only the expired entry: a fresh one put since the read stays.
        self.entries.remove_if(k, |(put_at, _)| *put_at == at);
        None
    }

    pub fn put(&self, k: K, v: V) {
        self.entries.insert(k, (Instant::now(), v));
    }

    pub fn remove(&self, k: &K) {
        self.entries.remove(k);
    }

    pub fn clear(&self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_the_ttl() {
        let c = TtlCache::new(Duration::from_millis(50));
        c.put("a".to_string(), 1);
        assert_eq!(c.get("a"), Some(1));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get("a"), None);
        c.put("a".to_string(), 2);
        assert_eq!(c.get("a"), Some(2));
        c.remove(&"a".to_string());
        assert_eq!(c.get("a"), None);
        c.put("b".to_string(), 3);
        c.clear();
        assert_eq!(c.get("b"), None);
    }

    #[test]
    fn a_hot_key_survives_a_scan_of_ten_times_the_capacity() {
        let capacity = 1_000;
        let c = TtlCache::with_capacity(Duration::from_secs(3600), capacity);
        c.put(u64::MAX, "hot");
        for _ in 0..5 {
            assert_eq!(c.get(&u64::MAX), Some("hot"));
        }
        // A scan: each random key looked up once (a miss) and put, as a lookup of a file row
        // does. The hot key is read again only every two capacities' worth of keys: an LRU
        // or a FIFO would have evicted it in between.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..10 * capacity {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            assert_eq!(c.get(&x), None);
            c.put(x, "cold");
            if i % (2 * capacity) == 0 {
                assert_eq!(
                    c.get(&u64::MAX),
                    Some("hot"),
                    "hot key evicted after {i} keys"
                );
            }
        }
        assert_eq!(c.get(&u64::MAX), Some("hot"));
        assert!(
            c.entries.len() <= capacity + capacity / 10,
            "{}",
            c.entries.len()
        );
    }
}
