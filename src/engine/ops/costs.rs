//! Cost estimates from `[costs]` and a stats report: what the mirror's storage costs a month and
//! what serving from the mirror instead of the origin saved in the window.
//!
//! - storage per month = storage_bytes / 10^9 × `storage_per_gb_month`
//! - egress saved = bandwidth_saved_bytes / 10^9 × `egress_per_gb` (bytes served from the
//!   mirror that did not have to come from the origin)
//! - request cost = hits / 1000 × `per_1000_requests` (each hit is one GET to the mirror bucket)
//! - saved = egress saved − request cost
//!
//! An unset price leaves its figure out (`null`), and `saved` needs the egress price.

use serde::Serialize;

use crate::config::CostsConfig;
use crate::engine::ops::stats::StatsReport;

/// Bytes in the GB that prices are quoted in.
pub const GB: f64 = 1e9;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostReport {
    pub currency: String,
    /// The window the savings cover (the stats window).
    pub window: String,
    pub storage_gb: f64,
    pub storage_per_month: Option<f64>,
    pub bandwidth_saved_gb: f64,
    pub egress_saved: Option<f64>,
    pub request_cost: Option<f64>,
    /// Egress saved minus the requests' cost, in the window.
    pub saved: Option<f64>,
}

/// The estimates, or `None` when no price is configured.
pub fn estimate(prices: &CostsConfig, stats: &StatsReport) -> Option<CostReport> {
    if !prices.any() {
        return None;
    }
    let storage_gb = stats.storage_bytes.max(0) as f64 / GB;
    let bandwidth_saved_gb = stats.bandwidth_saved_bytes.max(0) as f64 / GB;
    let egress_saved = prices.egress_per_gb.map(|p| bandwidth_saved_gb * p);
    let request_cost = prices
        .per_1000_requests
        .map(|p| stats.hits.max(0) as f64 / 1000.0 * p);
    Some(CostReport {
        currency: prices.currency.clone(),
        window: stats.window.label().to_string(),
        storage_gb,
        storage_per_month: prices.storage_per_gb_month.map(|p| storage_gb * p),
        bandwidth_saved_gb,
        egress_saved,
        request_cost,
        saved: egress_saved.map(|e| e - request_cost.unwrap_or(0.0)),
    })
}

/// An amount with its currency label, e.g. "12.34 USD"; under 0.01 with more digits.
pub fn money(amount: f64, currency: &str) -> String {
    if amount != 0.0 && amount.abs() < 0.01 {
        format!("{amount:.4} {currency}")
    } else {
        format!("{amount:.2} {currency}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::stats::Window;

    fn stats(storage_bytes: i64, saved: i64, hits: i64) -> StatsReport {
        StatsReport {
            window: Window::Day,
            since: None,
            generated_at: chrono::Utc::now(),
            requests: hits,
            hits,
            misses: 0,
            hit_rate: None,
            bytes_served: saved,
            bandwidth_saved_bytes: saved,
            storage_objects: 1,
            storage_bytes,
            stale_files: 0,
            errors: 0,
            error_rate: None,
            revalidations: 0,
            archived_months: Vec::new(),
            series: Vec::new(),
        }
    }

    #[test]
    fn formulas() {
        let prices = CostsConfig {
            currency: "EUR".into(),
            storage_per_gb_month: Some(0.02),
            egress_per_gb: Some(0.09),
            per_1000_requests: Some(0.4),
        };
        let r = estimate(&prices, &stats(50_000_000_000, 2_000_000_000, 10_000)).unwrap();
        assert!((r.storage_per_month.unwrap() - 1.0).abs() < 1e-9);
        assert!((r.egress_saved.unwrap() - 0.18).abs() < 1e-9);
        assert!((r.request_cost.unwrap() - 4.0).abs() < 1e-9);
        assert!((r.saved.unwrap() - (0.18 - 4.0)).abs() < 1e-9);
        assert_eq!(r.currency, "EUR");
        assert!(estimate(&CostsConfig::default(), &stats(1, 1, 1)).is_none());
        assert_eq!(money(12.345, "USD"), "12.35 USD");
        assert_eq!(money(0.0004, "$"), "0.0004 $");
    }
}
