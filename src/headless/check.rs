//! `check` as a monitoring plugin (Nagios, Icinga, Sensu): the first line is `OK - …`,
//! `WARNING - …` or `CRITICAL - …` with performance data after `|`, one line per check and the
//! cost estimates follow; exit 0, 1 or 2. Its own failures (bad flag, bad config, unreachable
//! database) print `UNKNOWN - <reason>` and exit 3, so 2 always means critical.

use std::fmt::Write as _;
use std::io::Write as _;

use crate::cli::OutputFormat;
use crate::engine::error::{Error, Result};
use crate::engine::ops::check::{self, Check, CheckReport, Direction, Unit};
use crate::engine::ops::costs::money;
use crate::engine::ops::stats::Window;
use crate::engine::Ctx;

/// The plugin's exit code when `check` itself failed.
pub const UNKNOWN_EXIT: u8 = 3;

/// Runs the checks and prints them; the exit code is the status's (0 ok, 1 warning,
/// 2 critical).
pub async fn run(ctx: &Ctx, window: &str, output: OutputFormat) -> Result<u8> {
    let window = Window::parse(window)?;
    if output == OutputFormat::Prometheus {
        return Err(Error::Usage(
            "--output prometheus is only for `stats`; check prints table or json".into(),
        ));
    }
    let r = check::run(ctx, check::CheckParams { window }).await?;
    let text = match output {
        OutputFormat::Json => super::json(&r) + "\n",
        _ => plugin_text(&r),
    };
    emit(&text);
    Ok(r.status.exit_code())
}

/// Prints why `check` could not run, as the plugin's UNKNOWN line (or a JSON document with
/// status "unknown"), on stdout where the monitoring system reads it.
pub fn print_unknown(reason: &str, output: OutputFormat) {
    let text = match output {
        OutputFormat::Json => {
            super::json(&serde_json::json!({ "status": "unknown", "error": reason })) + "\n"
        }
        _ => format!("UNKNOWN - {reason}\n"),
    };
    emit(&text);
}

/// Whether these arguments ask for `check`, so that a parse error is reported as UNKNOWN
/// (exit 3) and not as a usage error (exit 2, which a monitoring system reads as critical).
pub fn invoked(args: &[std::ffi::OsString]) -> bool {
    use clap::CommandFactory;
    crate::cli::Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(args)
        .is_ok_and(|m| m.subcommand_name() == Some("check"))
}

fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe is not worth reporting.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// The plugin output: status line with performance data, then one line per check, then the
/// cost estimates.
pub fn plugin_text(r: &CheckReport) -> String {
    let mut out = format!("{} - {}", r.status.label(), r.summary);
    let perf: Vec<String> = r.checks.iter().map(perfdata).collect();
    if !perf.is_empty() {
        let _ = write!(out, " | {}", perf.join(" "));
    }
    out.push('\n');
    for c in &r.checks {
        let _ = writeln!(out, "{:<8} {:<16} {}", c.status.label(), c.name, c.message);
    }
    let _ = writeln!(out, "window {}", r.window.label());
    if let Some(c) = &r.costs {
        let cur = c.currency.as_str();
        if let Some(m) = c.storage_per_month {
            let _ = writeln!(
                out,
                "storage cost {} per month ({:.2} GB stored)",
                money(m, cur),
                c.storage_gb
            );
        }
        if let Some(saved) = c.saved {
            let _ = write!(
                out,
                "saved {} in {} ({:.2} GB served from the mirror: {} of origin egress",
                money(saved, cur),
                c.window,
                c.bandwidth_saved_gb,
                money(c.egress_saved.unwrap_or(0.0), cur),
            );
            if let Some(req) = c.request_cost {
                let _ = write!(out, " − {} of mirror GETs", money(req, cur));
            }
            out.push_str(")\n");
        }
    }
    out
}

/// `label=value[UOM];warn;crit;min;max` in the plugin guidelines' range syntax: a "below"
/// threshold `t` is the range `t:` (alert under t), an "above" one `t` (alert over t).
fn perfdata(c: &Check) -> String {
    let (uom, scale) = match c.unit {
        Unit::Seconds => ("s", 1.0),
        Unit::Ratio | Unit::Money => ("", 1.0),
    };
    let range = |t: Option<f64>| match (t, c.direction) {
        (None, _) => String::new(),
        (Some(t), Direction::Below) => format!("{}:", num(t * scale)),
        (Some(t), Direction::Above) => num(t * scale),
    };
    let value = c
        .value
        .map(|v| format!("{}{uom}", num(v * scale)))
        .unwrap_or_else(|| "U".into());
    let max = if c.unit == Unit::Ratio { "1" } else { "" };
    format!(
        "{}={value};{};{};0;{max}",
        c.name,
        range(c.warning),
        range(c.critical)
    )
}

/// A number without float noise: at most 6 decimals, trailing zeros dropped.
fn num(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_ranges() {
        assert_eq!(num(0.6000000000000001), "0.6");
        assert_eq!(num(43200.0), "43200");
        assert_eq!(num(0.0), "0");
        let c = Check {
            name: "hit_rate",
            status: check::Status::Warning,
            value: Some(0.75),
            warning: Some(0.8),
            critical: Some(0.7),
            direction: Direction::Below,
            unit: Unit::Ratio,
            message: String::new(),
        };
        assert_eq!(perfdata(&c), "hit_rate=0.75;0.8:;0.7:;0;1");
        let c = Check {
            name: "validation_age",
            value: None,
            warning: None,
            critical: Some(43200.0),
            direction: Direction::Above,
            unit: Unit::Seconds,
            ..c
        };
        assert_eq!(perfdata(&c), "validation_age=U;;43200;0;");
    }
}
