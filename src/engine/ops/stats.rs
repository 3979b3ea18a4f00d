//! `stats`: hit rate, traffic, bandwidth saved, storage, staleness and errors over a window.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::engine::error::{Error, Result};
use crate::engine::jobs::Report;
use crate::engine::model::SeriesPoint;
use crate::engine::Ctx;

/// The time window a figure covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Window {
    #[serde(rename = "24h")]
    #[default]
    Day,
    #[serde(rename = "7d")]
    Week,
    #[serde(rename = "30d")]
    Month,
    #[serde(rename = "all")]
    All,
}

impl Window {
    pub const ALL: [Window; 4] = [Window::Day, Window::Week, Window::Month, Window::All];

    pub fn parse(s: &str) -> Result<Window> {
        match s.trim() {
            "24h" | "1d" => Ok(Window::Day),
            "7d" => Ok(Window::Week),
            "30d" => Ok(Window::Month),
            "all" => Ok(Window::All),
            other => Err(Error::Usage(format!(
                "bad window {other:?}: expected 24h, 7d, 30d or all"
            ))),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Window::Day => "24h",
            Window::Week => "7d",
            Window::Month => "30d",
            Window::All => "all",
        }
    }

    /// The start of the window, `None` for all time.
    pub fn since(self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Window::Day => Some(now - TimeDelta::hours(24)),
            Window::Week => Some(now - TimeDelta::days(7)),
            Window::Month => Some(now - TimeDelta::days(30)),
            Window::All => None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct StatsParams {
    pub window: Window,
    /// Include the hits/misses time series (the dashboard's chart).
    pub series: bool,
}

/// The mirror's health over a window.
#[derive(Debug, Clone, Serialize)]
pub struct StatsReport {
    pub window: Window,
    pub since: Option<DateTime<Utc>>,
    pub generated_at: DateTime<Utc>,
    pub requests: i64,
    pub hits: i64,
    pub misses: i64,
    /// hits / (hits + misses); `null` when there were none.
    pub hit_rate: Option<f64>,
    pub bytes_served: i64,
    /// Bytes served from the mirror that did not have to come from the origin.
    pub bandwidth_saved_bytes: i64,
    pub storage_objects: i64,
    pub storage_bytes: i64,
    pub stale_files: i64,
    pub errors: i64,
    pub error_rate: Option<f64>,
    /// Conditional requests answered 304 Not Modified: clients revalidating a copy they have.
    /// Not downloads, so not in `requests`, `hits` or `hit_rate`.
    pub revalidations: i64,
    /// Months in the window whose raw events were archived to S3 (`YYYY-MM`). The totals above
    /// still count them (they come from the hourly rollup, which archiving keeps); what these
    /// months lack in the database is the per-event detail, e.g. a file's downloads per day.
    pub archived_months: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<SeriesPoint>,
}

impl Report for StatsReport {}

fn ratio(a: i64, b: i64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// Reads the rollup and the storage counters: two small queries whatever the table sizes.
pub async fn run(ctx: &Ctx, params: StatsParams) -> Result<StatsReport> {
    let now = Utc::now();
    let since = params.window.since(now);
    let (totals, storage) =
        tokio::try_join!(ctx.db.download_totals(since), ctx.db.storage_totals())?;
    let series = if params.series {
        let (from, daily) = match params.window {
            Window::Day => (now - TimeDelta::hours(24), false),
            Window::Week => (now - TimeDelta::days(7), false),
            Window::Month => (now - TimeDelta::days(30), true),
            Window::All => (DateTime::<Utc>::UNIX_EPOCH, true),
        };
        ctx.db.download_series(from, daily).await?
    } else {
        Vec::new()
    };
    let requests = totals.hits + totals.misses + totals.errors;
    // A month is in the window when it ends after the window starts.
    let archived_months = ctx
        .db
        .archived_months()
        .await?
        .into_iter()
        .filter(|m| since.is_none_or(|s| m.next().start() > s))
        .map(|m| format!("{:04}-{:02}", m.year, m.month))
        .collect();
    Ok(StatsReport {
        window: params.window,
        since,
        generated_at: now,
        requests,
        hits: totals.hits,
        misses: totals.misses,
        hit_rate: ratio(totals.hits, totals.hits + totals.misses),
        bytes_served: totals.bytes_hit + totals.bytes_miss,
        bandwidth_saved_bytes: totals.bytes_hit,
        storage_objects: storage.objects,
        storage_bytes: storage.bytes,
        stale_files: storage.stale,
        errors: totals.errors,
        revalidations: totals.revalidations,
        error_rate: ratio(totals.errors, requests),
        archived_months,
        series,
    })
}
