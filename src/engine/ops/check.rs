//! `check`: the mirror's figures against the `[alerts]` thresholds (seed 000's alerting): hit
//! rate, error rate, storage cost, the age of the last successful validation and the
//! replication lag, each ok, warning or critical, with the `[costs]` estimates alongside.
//!
//! Each `[alerts]` key is the critical threshold and its `warn_` twin the warning one; a
//! figure past the critical threshold is critical, else past the warning one a warning. A rate
//! with no downloads in the window is ok (nothing to judge); a validation that never finished
//! counts as infinitely old.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{AlertsConfig, HumanDuration};
use crate::engine::error::Result;
use crate::engine::jobs::Report;
use crate::engine::ops::costs::{self, CostReport};
use crate::engine::ops::stats::{self, StatsReport, Window};
use crate::engine::Ctx;

/// How bad a check (or the whole report) is; ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warning,
    Critical,
}

impl Status {
    /// The monitoring-plugin word: OK, WARNING, CRITICAL.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warning => "WARNING",
            Status::Critical => "CRITICAL",
        }
    }

    /// The monitoring-plugin exit code: 0, 1, 2.
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Warning => 1,
            Status::Critical => 2,
        }
    }
}

/// Which side of a threshold is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Below,
    Above,
}

/// What a check's value and thresholds are measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// A fraction, 0..1.
    Ratio,
    Seconds,
    /// An amount in `costs.currency` (per month for storage).
    Money,
}

/// One threshold comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// `hit_rate`, `error_rate`, `storage_cost`, `validation_age` or `replication_lag`.
    pub name: &'static str,
    pub status: Status,
    /// The figure; `null` when there is none (no downloads, never validated).
    pub value: Option<f64>,
    pub warning: Option<f64>,
    pub critical: Option<f64>,
    pub direction: Direction,
    pub unit: Unit,
    /// One line for a person: "hit rate 42.0% < 70.0%".
    pub message: String,
}

#[derive(Debug, Clone, Default)]
pub struct CheckParams {
    /// The window the rates and savings cover.
    pub window: Window,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    /// The worst status of the checks (ok when none is configured).
    pub status: Status,
    pub generated_at: DateTime<Utc>,
    pub window: Window,
    /// Whether `[alerts]` sets any threshold.
    pub configured: bool,
    /// The plugin's first line without the status word.
    pub summary: String,
    /// Only the configured checks, in a fixed order.
    pub checks: Vec<Check>,
    /// The `[costs]` estimates; `null` without prices.
    pub costs: Option<CostReport>,
}

impl Report for CheckReport {
    fn found_problems(&self) -> bool {
        self.status != Status::Ok
    }
}

impl CheckReport {
    /// The status of the named check, when it is configured.
    pub fn status_of(&self, name: &str) -> Option<Status> {
        self.checks
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.status)
    }

    /// Checks that are not ok.
    pub fn breaches(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status != Status::Ok)
    }
}

/// The figures the checks compare, gathered by the caller (the dashboard has most of them
/// loaded already).
#[derive(Debug, Clone)]
pub struct CheckInputs<'a> {
    pub stats: &'a StatsReport,
    /// When `validate` last finished successfully.
    pub last_validate: Option<DateTime<Utc>>,
    /// The replication lag in seconds, when it was read.
    pub replication_lag_s: Option<f64>,
    pub now: DateTime<Utc>,
}

/// Reads the stats of the window, the last validation and (when a threshold needs it) the
/// replication lag, and checks them.
pub async fn run(ctx: &Ctx, params: CheckParams) -> Result<CheckReport> {
    let stats_params = stats::StatsParams {
        window: params.window,
        series: false,
    };
    let (stats, last_validate) = tokio::try_join!(
        stats::run(ctx, stats_params),
        ctx.db.last_finished("validate")
    )?;
    assess(ctx, &stats, last_validate).await
}

/// Checks a stats report already read (the dashboard's) and the last validation, reading the
/// replication lag only when a threshold needs it.
pub async fn assess(
    ctx: &Ctx,
    stats: &StatsReport,
    last_validate: Option<DateTime<Utc>>,
) -> Result<CheckReport> {
    let now = Utc::now();
    let a = &ctx.config.alerts;
    let replication_lag_s =
        if a.replication_lag_above.is_some() || a.warn_replication_lag_above.is_some() {
            let b = ctx.db.replication_backlog(now, now).await?;
            Some(
                b.oldest_pending_at
                    .map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0),
            )
        } else {
            None
        };
    let inputs = CheckInputs {
        stats,
        last_validate,
        replication_lag_s,
        now,
    };
    Ok(evaluate(a, &ctx.config.costs, &inputs))
}

/// The checks and estimates from figures already read: no I/O.
pub fn evaluate(
    alerts: &AlertsConfig,
    prices: &crate::config::CostsConfig,
    inputs: &CheckInputs<'_>,
) -> CheckReport {
    let s = inputs.stats;
    let costs = costs::estimate(prices, s);
    let currency = prices.currency.as_str();
    let secs = |d: Option<HumanDuration>| d.map(|d| d.0.as_secs_f64());
    let mut checks = Vec::new();
    let mut add = |spec: Spec, value: Option<f64>, missing: Missing| {
        if spec.warning.is_none() && spec.critical.is_none() {
            return;
        }
        checks.push(compare(spec, value, missing, currency));
    };
    add(
        Spec {
            name: "hit_rate",
            label: "hit rate",
            direction: Direction::Below,
            unit: Unit::Ratio,
            warning: alerts.warn_hit_rate_below,
            critical: alerts.hit_rate_below,
        },
        s.hit_rate,
        Missing::Ok("no downloads in the window"),
    );
    add(
        Spec {
            name: "error_rate",
            label: "error rate",
            direction: Direction::Above,
            unit: Unit::Ratio,
            warning: alerts.warn_error_rate_above,
            critical: alerts.error_rate_above,
        },
        s.error_rate,
        Missing::Ok("no downloads in the window"),
    );
    add(
        Spec {
            name: "storage_cost",
            label: "storage cost/month",
            direction: Direction::Above,
            unit: Unit::Money,
            warning: alerts.warn_storage_cost_above,
            critical: alerts.storage_cost_above,
        },
        costs.as_ref().and_then(|c| c.storage_per_month),
        Missing::Ok("no storage price configured"),
    );
    add(
        Spec {
            name: "validation_age",
            label: "last validation",
            direction: Direction::Above,
            unit: Unit::Seconds,
            warning: secs(alerts.warn_validation_older_than),
            critical: secs(alerts.validation_older_than),
        },
        inputs
            .last_validate
            .map(|t| (inputs.now - t).num_milliseconds().max(0) as f64 / 1000.0),
        Missing::Breach("validate has never finished successfully"),
    );
    add(
        Spec {
            name: "replication_lag",
            label: "replication lag",
            direction: Direction::Above,
            unit: Unit::Seconds,
            warning: secs(alerts.warn_replication_lag_above),
            critical: secs(alerts.replication_lag_above),
        },
        inputs.replication_lag_s,
        Missing::Ok("replication lag not read"),
    );
    let status = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
    let summary = summary(&checks);
    CheckReport {
        status,
        generated_at: inputs.now,
        window: s.window,
        configured: !checks.is_empty(),
        summary,
        checks,
        costs,
    }
}

struct Spec {
    name: &'static str,
    label: &'static str,
    direction: Direction,
    unit: Unit,
    warning: Option<f64>,
    critical: Option<f64>,
}

/// What a check without a figure is.
enum Missing {
    Ok(&'static str),
    /// As bad as the worst configured threshold.
    Breach(&'static str),
}

fn compare(spec: Spec, value: Option<f64>, missing: Missing, currency: &str) -> Check {
    let past = |t: Option<f64>, v: f64| {
        t.is_some_and(|t| match spec.direction {
            Direction::Below => v < t,
            Direction::Above => v > t,
        })
    };
    let (status, message) = match value {
        Some(v) => {
            let status = if past(spec.critical, v) {
                Status::Critical
            } else if past(spec.warning, v) {
                Status::Warning
            } else {
                Status::Ok
            };
            let shown = format_value(spec.unit, v, currency);
            let message = match status {
                Status::Ok => format!("{} {shown}", spec.label),
                s => {
                    let t = if s == Status::Critical {
                        spec.critical
                    } else {
                        spec.warning
                    }
                    .unwrap_or_default();
                    let op = match spec.direction {
                        Direction::Below => "<",
                        Direction::Above => ">",
                    };
                    let t = format_value(spec.unit, t, currency);
                    format!("{} {shown} {op} {t}", spec.label)
                }
            };
            (status, message)
        }
        None => match missing {
            Missing::Ok(why) => (Status::Ok, format!("{}: {why}", spec.label)),
            Missing::Breach(why) => {
                let status = if spec.critical.is_some() {
                    Status::Critical
                } else {
                    Status::Warning
                };
                (status, why.to_string())
            }
        },
    };
    Check {
        name: spec.name,
        status,
        value,
        warning: spec.warning,
        critical: spec.critical,
        direction: spec.direction,
        unit: spec.unit,
        message,
    }
}

/// A value as a person reads it: "42.0%", "3h 12m", "12.34 USD".
pub fn format_value(unit: Unit, v: f64, currency: &str) -> String {
    match unit {
        Unit::Ratio => format!("{:.1}%", v * 100.0),
        Unit::Seconds => {
            let whole = std::time::Duration::from_secs(v.max(0.0).round() as u64);
            if whole.is_zero() {
                "0s".into()
            } else {
                humantime::format_duration(whole).to_string()
            }
        }
        Unit::Money => costs::money(v, currency),
    }
}

fn summary(checks: &[Check]) -> String {
    if checks.is_empty() {
        return "no thresholds configured (set them in the config's [alerts] section)".into();
    }
    let mut bad: Vec<&Check> = checks.iter().filter(|c| c.status != Status::Ok).collect();
    if bad.is_empty() {
        let all: Vec<&str> = checks.iter().map(|c| c.message.as_str()).collect();
        return all.join(", ");
    }
    bad.sort_by_key(|c| std::cmp::Reverse(c.status));
    let msgs: Vec<&str> = bad.iter().map(|c| c.message.as_str()).collect();
    msgs.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CostsConfig;
    use std::time::Duration;

    fn stats(hits: i64, misses: i64, errors: i64) -> StatsReport {
        let requests = hits + misses + errors;
        StatsReport {
            window: Window::Day,
            since: None,
            generated_at: Utc::now(),
            requests,
            hits,
            misses,
            hit_rate: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
            bytes_served: 0,
            bandwidth_saved_bytes: 0,
            storage_objects: 0,
            storage_bytes: 200_000_000_000,
            stale_files: 0,
            errors,
            error_rate: (requests > 0).then(|| errors as f64 / requests as f64),
            revalidations: 0,
            archived_months: Vec::new(),
            series: Vec::new(),
        }
    }

    fn eval(a: &AlertsConfig, s: &StatsReport, last_validate_h: Option<i64>) -> CheckReport {
        let now = Utc::now();
        let prices = CostsConfig {
            storage_per_gb_month: Some(0.5),
            ..Default::default()
        };
        evaluate(
            a,
            &prices,
            &CheckInputs {
                stats: s,
                last_validate: last_validate_h.map(|h| now - chrono::TimeDelta::hours(h)),
                replication_lag_s: Some(30.0),
                now,
            },
        )
    }

    #[test]
    fn nothing_configured_is_ok_and_says_so() {
        let r = eval(&AlertsConfig::default(), &stats(1, 9, 0), None);
        assert_eq!(r.status, Status::Ok);
        assert!(!r.configured && r.checks.is_empty());
        assert!(
            r.summary.contains("no thresholds configured"),
            "{}",
            r.summary
        );
    }

    #[test]
    fn warning_and_critical_thresholds() {
        let a = AlertsConfig {
            hit_rate_below: Some(0.7),
            warn_hit_rate_below: Some(0.8),
            error_rate_above: Some(0.05),
            storage_cost_above: Some(150.0),
            warn_storage_cost_above: Some(90.0),
            validation_older_than: Some(HumanDuration(Duration::from_secs(12 * 3600))),
            replication_lag_above: Some(HumanDuration(Duration::from_secs(60))),
            ..Default::default()
        };
        // 75 % hits: a warning; 100 GB... 200 GB × 0.5 = 100 per month: a warning.
        let r = eval(&a, &stats(75, 25, 0), Some(1));
        assert_eq!(r.status, Status::Warning, "{r:?}");
        assert_eq!(r.status_of("hit_rate"), Some(Status::Warning));
        assert_eq!(r.status_of("storage_cost"), Some(Status::Warning));
        assert_eq!(r.status_of("error_rate"), Some(Status::Ok));
        assert_eq!(r.status_of("replication_lag"), Some(Status::Ok));
        assert!(
            r.summary.contains("hit rate 75.0% < 80.0%"),
            "{}",
            r.summary
        );
        // 60 % hits and 10 % errors: critical, worst first.
        let r = eval(&a, &stats(54, 36, 10), Some(1));
        assert_eq!(r.status, Status::Critical);
        assert_eq!(r.status_of("error_rate"), Some(Status::Critical));
        assert!(
            r.summary.starts_with("hit rate 60.0% < 70.0%"),
            "{}",
            r.summary
        );
        // Never validated: critical; validated 13 hours ago: critical.
        let r = eval(&a, &stats(90, 10, 0), None);
        assert_eq!(r.status_of("validation_age"), Some(Status::Critical));
        let r = eval(&a, &stats(90, 10, 0), Some(13));
        assert_eq!(r.status_of("validation_age"), Some(Status::Critical));
        assert!(
            r.summary.contains("last validation 13h > 12h"),
            "{}",
            r.summary
        );
        // No downloads: the rates are ok.
        let r = eval(&a, &stats(0, 0, 0), Some(1));
        assert_eq!(r.status_of("hit_rate"), Some(Status::Ok));
        assert_eq!(r.checks.len(), 5);
    }
}
