//! `doctor`: loads the configuration itself (a config that does not load is the first failed
//! check, not an early exit), runs the checks and prints one line per check, or JSON.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use crate::cli::OutputFormat;
use crate::engine::error::Error;
use crate::engine::ops::doctor::{self, CheckStatus, DoctorParams, DoctorReport};

/// Runs `doctor` against the configuration at `config` (or the demo's) and prints the report;
/// the exit code (0 all passed, 3 warnings, 1 a check failed, 2 the config did not load).
pub async fn run(
    config: Option<&Path>,
    demo: bool,
    write: bool,
    output: OutputFormat,
) -> anyhow::Result<u8> {
    let json = match output {
        OutputFormat::Json => true,
        OutputFormat::Table => false,
        OutputFormat::Prometheus => {
            return Err(Error::Usage("--output prometheus is only for `stats`".into()).into())
        }
    };
    let params = DoctorParams {
        write,
        ..Default::default()
    };
    let report = if demo {
        let d = crate::demo::Demo::start(&crate::demo::default_dir(), Default::default()).await?;
        d.ensure_generated(&|step| eprintln!("  {step}")).await?;
        let source = format!("demo ({})", d.dir.display());
        doctor::run(&d.config, &source, &params).await
    } else {
        match crate::config::load(config) {
            Ok((cfg, source)) => doctor::run(&cfg, &source.to_string(), &params).await,
            Err(e) => DoctorReport::config_failed(&e.file, &e.message),
        }
    };
    let text = if json {
        super::json(&report) + "\n"
    } else {
        doctor_table(&report)
    };
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth reporting.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    Ok(report.exit_code())
}

fn mark(s: CheckStatus) -> &'static str {
    match s {
        CheckStatus::Ok => "✓",
        CheckStatus::Warn => "!",
        CheckStatus::Fail => "✗",
        CheckStatus::Skip => "-",
    }
}

/// One line per check, its hint under it, and the counts.
pub fn doctor_table(r: &DoctorReport) -> String {
    let width = r
        .checks
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for c in &r.checks {
        let _ = writeln!(out, "{} {:<width$}  {}", mark(c.status), c.name, c.detail);
        if let Some(h) = &c.hint {
            let _ = writeln!(out, "  {:<width$}  → {h}", "");
        }
    }
    let n = |s: CheckStatus| r.checks.iter().filter(|c| c.status == s).count();
    let mut counts = vec![format!("{} passed", n(CheckStatus::Ok))];
    for (s, word) in [
        (CheckStatus::Warn, "need attention"),
        (CheckStatus::Fail, "failed"),
        (CheckStatus::Skip, "skipped"),
    ] {
        if n(s) > 0 {
            counts.push(format!("{} {word}", n(s)));
        }
    }
    let _ = writeln!(out, "\n{} (config: {})", counts.join(", "), r.config);
    out
}
