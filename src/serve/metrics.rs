//! Prometheus metrics of the data plane (`GET /metrics`, OpenMetrics text). Counters live in
//! memory; the storage and stale gauges are read from the database's counters at scrape time,
//! by the one replica of a fleet that holds the metrics lease (so a sum over replicas is right).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::Shared;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabel {
    cache: &'static str,
}

const HIT: CacheLabel = CacheLabel { cache: "hit" };
const MISS: CacheLabel = CacheLabel { cache: "miss" };

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabel {
    instance: String,
    version: String,
}

/// The metrics of one cache outcome, looked up in their families once (a lookup takes a lock).
#[derive(Clone)]
pub struct Outcome {
    pub downloads: Counter,
    pub bytes_served: Counter,
    pub duration: Histogram,
}

/// Handles to every metric; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub hit: Outcome,
    pub miss: Outcome,
    pub origin_fetches: Counter,
    pub origin_errors: Counter,
    pub mirror_errors: Counter,
    pub upload_errors: Counter,
    pub rate_limited: Counter,
    pub events_written: Counter,
    pub events_dropped: Counter,
    pub fills_in_flight: Gauge,
    pub revalidations: Counter,
    pub mirror_fallbacks: Counter,
    pub mirror_circuit_open: Gauge,
    pub fills_rejected: Counter,
    pub fills_from_peer: Counter,
    pub uploads: Counter,
    pub connections_open: Gauge,
    pub connections_timed_out: Counter,
    /// Writes through the S3 front recorded with their replication task.
    pub writes_recorded: Counter,
    /// Body bytes the S3 front passed to the main bucket.
    pub bytes_in: Counter,
    /// Replication tasks this replica finished, and attempts that failed.
    pub replicated: Counter,
    pub replication_errors: Counter,
    stale_files: Gauge,
    replication_pending: Gauge,
    replication_pending_bytes: Gauge,
    replication_failed: Gauge,
    replication_lag: Gauge<f64, std::sync::atomic::AtomicU64>,
    storage_bytes: Gauge,
    storage_objects: Gauge,
    /// The three DB-wide gauges above, encoded only while `metrics_lease` is held.
    db_registry: Arc<Registry>,
    instance_info: Family<InstanceLabel, Gauge>,
    /// Whether this replica exports the DB-wide gauges (the fleet heartbeat keeps it).
    pub metrics_lease: MetricsLease,
}

impl Metrics {
    pub fn new() -> Metrics {
        let downloads = Family::<CacheLabel, Counter>::default();
        let bytes_served = Family::<CacheLabel, Counter>::default();
        let request_duration = Family::<CacheLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 300.0,
            ])
        });
        let outcome = |label: &CacheLabel| Outcome {
            downloads: downloads.get_or_create(label).clone(),
            bytes_served: bytes_served.get_or_create(label).clone(),
            duration: request_duration.get_or_create(label).clone(),
        };
        let (hit, miss) = (outcome(&HIT), outcome(&MISS));
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            hit,
            miss,
            origin_fetches: Counter::default(),
            origin_errors: Counter::default(),
            mirror_errors: Counter::default(),
            upload_errors: Counter::default(),
            rate_limited: Counter::default(),
            events_written: Counter::default(),
            events_dropped: Counter::default(),
            fills_in_flight: Gauge::default(),
            revalidations: Counter::default(),
            mirror_fallbacks: Counter::default(),
            mirror_circuit_open: Gauge::default(),
            fills_rejected: Counter::default(),
            fills_from_peer: Counter::default(),
            uploads: Counter::default(),
            connections_open: Gauge::default(),
            connections_timed_out: Counter::default(),
            writes_recorded: Counter::default(),
            bytes_in: Counter::default(),
            replicated: Counter::default(),
            replication_errors: Counter::default(),
            stale_files: Gauge::default(),
            replication_pending: Gauge::default(),
            replication_pending_bytes: Gauge::default(),
            replication_failed: Gauge::default(),
            replication_lag: Gauge::default(),
            storage_bytes: Gauge::default(),
            storage_objects: Gauge::default(),
            db_registry: Arc::new(Registry::default()),
            instance_info: Family::default(),
            metrics_lease: Default::default(),
        };
        let mut r = Registry::default();
        r.register(
            "mirrorctl_downloads",
            "Downloads served, by cache outcome",
            downloads,
        );
        r.register(
            "mirrorctl_bytes_served",
            "Body bytes sent to clients, by cache outcome",
            bytes_served,
        );
        r.register(
            "mirrorctl_request_duration_seconds",
            "Time from request to the last body byte, by cache outcome",
            request_duration,
        );
        r.register(
            "mirrorctl_origin_fetches",
            "Origin fetches started by misses (concurrent misses of one file share one)",
            m.origin_fetches.clone(),
        );
        r.register(
            "mirrorctl_origin_errors",
            "Origin fetches that failed",
            m.origin_errors.clone(),
        );
        r.register(
            "mirrorctl_mirror_errors",
            "Mirror bucket reads that failed (served from the origin instead)",
            m.mirror_errors.clone(),
        );
        r.register(
            "mirrorctl_upload_errors",
            "Misses whose upload to the mirror failed (the client was still served)",
            m.upload_errors.clone(),
        );
        r.register(
            "mirrorctl_rate_limited",
            "Requests refused by the per-client rate limit",
            m.rate_limited.clone(),
        );
        r.register(
            "mirrorctl_download_events_written",
            "Download events written to the database",
            m.events_written.clone(),
        );
        r.register(
            "mirrorctl_download_events_dropped",
            "Download events lost because the queue was full or the database kept failing",
            m.events_dropped.clone(),
        );
        r.register(
            "mirrorctl_fills_in_flight",
            "Misses fetching from the origin or uploading to the mirror now",
            m.fills_in_flight.clone(),
        );
        r.register(
            "mirrorctl_revalidations",
            "Conditional GETs answered 304 Not Modified (not downloads: not in mirrorctl_downloads)",
            m.revalidations.clone(),
        );
        r.register(
            "mirrorctl_mirror_fallbacks",
            "Hits whose mirror read failed, served straight from the origin without a new upload",
            m.mirror_fallbacks.clone(),
        );
        r.register(
            "mirrorctl_mirror_circuit_open",
            "1 while the mirror bucket's circuit breaker is open (hits go to the origin)",
            m.mirror_circuit_open.clone(),
        );
        r.register(
            "mirrorctl_fills_rejected",
            "Misses answered 503 because serve.max_fills fills were running",
            m.fills_rejected.clone(),
        );
        r.register(
            "mirrorctl_fills_from_peer",
            "Misses streamed from another replica's fill in flight instead of the origin",
            m.fills_from_peer.clone(),
        );
        r.register(
            "mirrorctl_uploads",
            "Copies stored in the mirror bucket by fills",
            m.uploads.clone(),
        );
        r.register(
            "mirrorctl_connections_open",
            "Client connections open now",
            m.connections_open.clone(),
        );
        r.register(
            "mirrorctl_connections_timed_out",
            "Client connections closed by serve.header_timeout (slow headers) or serve.idle_timeout",
            m.connections_timed_out.clone(),
        );
        r.register(
            "mirrorctl_s3_front_writes",
            "Writes through the S3 front (puts, completed uploads, copies, deletes) recorded with a replication task",
            m.writes_recorded.clone(),
        );
        r.register(
            "mirrorctl_s3_front_bytes_in",
            "Body bytes the S3 front passed to the main bucket",
            m.bytes_in.clone(),
        );
        r.register(
            "mirrorctl_replication_tasks_done",
            "Replication tasks this replica finished (the backup matches the inventory)",
            m.replicated.clone(),
        );
        r.register(
            "mirrorctl_replication_errors",
            "Replication attempts of this replica that failed (retried with backoff)",
            m.replication_errors.clone(),
        );
        r.register(
            "mirrorctl_instance_info",
            "This replica: its instance id (as in the fleet table) and version",
            m.instance_info.clone(),
        );
        let mut db = Registry::default();
        db.register(
            "mirrorctl_stale_files",
            "Live mirrored files marked stale",
            m.stale_files.clone(),
        );
        db.register(
            "mirrorctl_storage_bytes",
            "Bytes of the live mirrored files",
            m.storage_bytes.clone(),
        );
        db.register(
            "mirrorctl_storage_objects",
            "Live mirrored files",
            m.storage_objects.clone(),
        );
        db.register(
            "mirrorctl_replication_pending_tasks",
            "Replication tasks waiting or being copied",
            m.replication_pending.clone(),
        );
        db.register(
            "mirrorctl_replication_pending_bytes",
            "Bytes of the replication tasks waiting or being copied",
            m.replication_pending_bytes.clone(),
        );
        db.register(
            "mirrorctl_replication_failed_tasks",
            "Replication tasks that used up their attempts (see `mirrorctl replication`)",
            m.replication_failed.clone(),
        );
        db.register(
            "mirrorctl_replication_lag_seconds",
            "Age of the oldest replication task not yet done (0 when none)",
            m.replication_lag.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            db_registry: Arc::new(db),
            ..m
        }
    }
}

impl Metrics {
    /// Downloads and revalidations answered, for the fleet's requests per second.
    pub fn requests_total(&self) -> u64 {
        self.hit.downloads.get() + self.miss.downloads.get() + self.revalidations.get()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

// The lease flag's states; 0, the default, is "no fleet heartbeat runs in this process".
const HELD: u8 = 1;
const NOT_HELD: u8 = 2;

/// Whether this replica holds the metrics lease and so exports the DB-wide gauges. A process
/// without a fleet heartbeat (`fleet::spawn` never called) is alone as far as it knows, and
/// exports them; once the heartbeat runs, the lease in the database decides.
#[derive(Clone, Default)]
pub struct MetricsLease(Arc<AtomicU8>);

impl MetricsLease {
    pub fn held(&self) -> bool {
        self.0.load(Ordering::Relaxed) != NOT_HELD
    }

    pub(super) fn set(&self, held: bool) {
        self.0
            .store(if held { HELD } else { NOT_HELD }, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for MetricsLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MetricsLease({})", self.held())
    }
}

pub async fn handler(State(s): State<Arc<Shared>>) -> Response {
    let m = &s.metrics;
    // Only the lease holder asks the database: the other replicas would report the same
    // figures, which a sum over replicas would count once per replica.
    let db_wide = m.metrics_lease.held();
    if db_wide {
        match s.ctx.db.storage_totals().await {
            Ok(t) => {
                m.stale_files.set(t.stale);
                m.storage_bytes.set(t.bytes);
                m.storage_objects.set(t.objects);
            }
            Err(e) => tracing::warn!("metrics: storage totals unavailable: {e}"),
        }
        let now = chrono::Utc::now();
        match s.ctx.db.replication_backlog(now, now).await {
            Ok(b) => {
                m.replication_pending.set(b.pending);
                m.replication_pending_bytes.set(b.pending_bytes);
                m.replication_failed.set(b.failed);
                m.replication_lag.set(
                    b.oldest_pending_at
                        .map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0),
                );
            }
            Err(e) => tracing::warn!("metrics: replication backlog unavailable: {e}"),
        }
    }
    let text = match render(m, &s.instance, db_wide) {
        Ok(t) => t,
        Err(e) => return super::json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// The OpenMetrics text: this replica's metrics, and the DB-wide gauges when `db_wide`.
fn render(m: &Metrics, instance: &str, db_wide: bool) -> Result<String, std::fmt::Error> {
    use prometheus_client::encoding::text::{encode_eof, encode_registry};
    m.instance_info
        .get_or_create(&InstanceLabel {
            instance: instance.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .set(1);
    let mut text = String::new();
    encode_registry(&mut text, &m.registry)?;
    if db_wide {
        encode_registry(&mut text, &m.db_registry)?;
    }
    encode_eof(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_wide_gauges_come_only_from_the_lease_holder() {
        let m = Metrics::new();
        m.storage_bytes.set(1000);
        m.hit.downloads.inc();
        let lease = &m.metrics_lease;
        let db_gauges = [
            "mirrorctl_storage_bytes 1000",
            "mirrorctl_storage_objects 0",
            "mirrorctl_stale_files 0",
        ];
        let text = |db_wide| render(&m, "host-1-abc123", db_wide).unwrap_or_default();

        // No fleet heartbeat in this process: alone, so it exports them.
        assert!(lease.held());
        lease.set(false);
        assert!(!lease.held());
        let t = text(lease.held());
        for g in db_gauges {
            assert!(!t.contains(g), "{g:?} exported without the lease:\n{t}");
        }
        assert!(
            t.contains("mirrorctl_downloads_total{cache=\"hit\"} 1"),
            "{t}"
        );
        let info = format!(
            "mirrorctl_instance_info{{instance=\"host-1-abc123\",version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(t.contains(&info), "no {info:?} in\n{t}");
        assert!(
            t.ends_with("# EOF\n") && t.matches("# EOF").count() == 1,
            "{t}"
        );

        lease.set(true);
        let t = text(lease.held());
        for g in db_gauges {
            assert!(t.contains(g), "{g:?} missing from the lease holder:\n{t}");
        }
        assert!(
            t.ends_with("# EOF\n") && t.matches("# EOF").count() == 1,
            "{t}"
        );
    }
}
