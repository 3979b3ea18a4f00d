//! Prometheus metrics of the data plane (`GET /metrics`, OpenMetrics text). Counters live in
//! memory; the storage and stale gauges are read from the database's counters at scrape time.

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
    stale_files: Gauge,
    storage_bytes: Gauge,
    storage_objects: Gauge,
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
            stale_files: Gauge::default(),
            storage_bytes: Gauge::default(),
            storage_objects: Gauge::default(),
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
            "mirrorctl_stale_files",
            "Live mirrored files marked stale",
            m.stale_files.clone(),
        );
        r.register(
            "mirrorctl_storage_bytes",
            "Bytes of the live mirrored files",
            m.storage_bytes.clone(),
        );
        r.register(
            "mirrorctl_storage_objects",
            "Live mirrored files",
            m.storage_objects.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

pub async fn handler(State(s): State<Arc<Shared>>) -> Response {
    let m = &s.metrics;
    match s.ctx.db.storage_totals().await {
        Ok(t) => {
            m.stale_files.set(t.stale);
            m.storage_bytes.set(t.bytes);
            m.storage_objects.set(t.objects);
        }
        Err(e) => tracing::warn!("metrics: storage totals unavailable: {e}"),
    }
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &m.registry) {
        return super::json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
