//! The program: parse arguments, pick the TUI, a headless command or the demo, and map errors
//! to the documented exit codes (0 ok, 1 runtime, 2 usage/config/refused, 3 problems found).
//! It lives in the library, not in `main.rs`, so that a release build compiles the generic
//! code it shares with the operations (serde, tokio, sqlx) once instead of once per crate.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::cli::{Cli, Command, DemoAction, OutputFormat, SortArg};
use crate::config::{self, ConfigError};
use crate::demo::{self, Demo, Ports};
use crate::engine::db::Db;
use crate::engine::error::Error;
use crate::engine::model::{FileQuery, FileSort};
use crate::engine::ops::{files, history, stats};
use crate::engine::Ctx;
use crate::{headless, tui};

pub fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let args: Vec<_> = std::env::args_os().collect();
            if e.use_stderr() && headless::check::invoked(&args) {
                // A monitoring plugin's own failure is UNKNOWN (3), never CRITICAL (2).
                let _ = e.print();
                let reason = e.to_string();
                let reason = reason.lines().next().unwrap_or("bad arguments");
                headless::check::print_unknown(
                    reason.trim_start_matches("error: "),
                    OutputFormat::Table,
                );
                return ExitCode::from(headless::check::UNKNOWN_EXIT);
            }
            e.exit()
        }
    };
    init_logging(&cli);
    if let Some(Command::Archive {
        action: crate::cli::ArchiveAction::Run { dry_run: false, .. },
    }) = &cli.command
    {
        // A one-shot archive is background work through and through: every thread of the
        // runtime, started below, inherits the idle priority (see `engine::background`).
        crate::engine::background::lower_to_idle();
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(Command::Serve {
        threads: Some(n), ..
    }) = &cli.command
    {
        rt.worker_threads(usize::from(*n));
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let check_output = matches!(cli.command, Some(Command::Check { .. })).then_some(cli.output);
    let code = match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) if check_output.is_some() => {
            let output = check_output.unwrap_or(OutputFormat::Table);
            headless::check::print_unknown(&one_line(&e), output);
            headless::check::UNKNOWN_EXIT
        }
        Err(e) => {
            let code = exit_code(&e);
            eprintln!("error: {}", one_line(&e));
            code
        }
    };
    rt.shutdown_timeout(Duration::from_millis(200));
    ExitCode::from(code)
}

/// glibc gives busy threads their own malloc arenas (up to 8 per core) and keeps freed memory
/// in each: with streams moving megabyte buffers between threads that inflates the resident
/// size of `serve`, `remirror` and `archive` by tens of MiB. Two arenas keep it close to what
/// is in use (BENCHMARKS.md, serve).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt is called before any other thread exists and only tunes the allocator.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// The documented exit code for an error.
fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(e) = e.downcast_ref::<Error>() {
        return e.exit_code() as u8;
    }
    if e.downcast_ref::<ConfigError>().is_some() {
        return 2;
    }
    1
}

fn one_line(e: &anyhow::Error) -> String {
    e.to_string().replace('\n', " ")
}

fn init_logging(cli: &Cli) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let serving = matches!(cli.command, Some(Command::Serve { .. }));
    let level = match cli.verbose {
        0 if serving => "info",
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    // `MIRRORCTL_LOG` takes `level` or `target=level,...` (e.g. "mirrorctl=debug,sqlx=info").
    // The filter decides alone: the fmt subscriber's own maximum (INFO unless told) would
    // otherwise drop every debug line the filter lets through.
    let default = format!("mirrorctl={level},s3s=off,s3s_fs=off");
    let filter: tracing_subscriber::filter::Targets = std::env::var("MIRRORCTL_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| default.parse().unwrap_or_default());
    let interactive = !cli.headless
        && !matches!(
            cli.command,
            Some(Command::Demo { .. })
                | Some(Command::Migrate { .. })
                | Some(Command::Serve { .. })
                | Some(Command::Check { .. })
                | Some(Command::Lock { .. })
                | Some(Command::Doctor { .. })
                | Some(Command::Uploads { .. })
        );
    if interactive {
        // The TUI owns the screen: logs go to a file.
        let path = std::env::temp_dir().join("mirrorctl.log");
        if let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            let _ = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .finish()
                .with(filter)
                .try_init();
        }
    } else {
        use std::io::IsTerminal;
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .finish()
            .with(filter)
            .try_init();
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    if let Some(Command::Demo { action }) = &cli.command {
        return run_demo(action).await;
    }
    if let Some(Command::Completions { shell }) = &cli.command {
        headless::docs::to_stdout(&headless::docs::completions(*shell));
        return Ok(0);
    }
    if let Some(Command::Man { dir }) = &cli.command {
        match dir {
            Some(dir) => {
                let pages = headless::docs::man_pages(dir).map_err(|e| {
                    Error::Usage(format!("cannot write man pages to {}: {e}", dir.display()))
                })?;
                eprintln!("wrote {pages} man pages to {}", dir.display());
            }
            None => headless::docs::to_stdout(&headless::docs::man_page()),
        }
        return Ok(0);
    }
    if let Some(Command::Doctor { write }) = &cli.command {
        // Doctor diagnoses a config, database or schema that `open` would stop at.
        return headless::doctor::run(cli.config.as_deref(), cli.demo, *write, cli.output).await;
    }
    let (ctx, _demo) = open(&cli).await?;
    if let Some(Command::Migrate { dry_run }) = &cli.command {
        let r = ctx.db.migrate_with(*dry_run).await?;
        print(&cli, &r, || headless::migrate_table(ctx.db.target(), &r))?;
        return Ok(0);
    }
    ctx.db.check_schema().await?;
    close_abandoned_operations(&ctx).await;
    if let Some(Command::Serve { listen, threads }) = &cli.command {
        crate::serve::run(ctx, listen.as_deref(), threads.map(usize::from)).await?;
        return Ok(0);
    }
    if let Some(Command::Check { window }) = &cli.command {
        // Always headless: a monitoring system runs it.
        return Ok(headless::check::run(&ctx, window, cli.output).await?);
    }
    if let Some(Command::Catalog { action }) = &cli.command {
        return run_catalog(&cli, &ctx, action).await;
    }
    if let Some(Command::Uploads { action }) = &cli.command {
        return headless::uploads::run(&ctx, action, cli.output).await;
    }
    if let Some(Command::Replication { action }) = &cli.command {
        // Without --headless it opens the Replication view (retry on its confirmation); the
        // TUI has no resync, which stays a headless command.
        let resync = matches!(action, Some(crate::cli::ReplicationAction::Resync { .. }));
        if cli.headless || resync {
            return run_replication(&cli, &ctx, action.as_ref()).await;
        }
    }
    if let Some(Command::Lock { action }) = &cli.command {
        // No TUI view: always headless.
        return run_lock(&cli, &ctx, action).await;
    }
    if !cli.headless {
        let start = cli.command.as_ref().map(tui_start);
        return Ok(tui::run(ctx, start.as_deref()).await?);
    }
    let Some(cmd) = &cli.command else {
        return Err(
            Error::Usage("--headless needs a command (try `mirrorctl --help`)".into()).into(),
        );
    };
    run_headless(&cli, &ctx, cmd).await
}

/// What the TUI opens on: the command's name, and for prefetch and replication retry its
/// selection (the same words as the TUI's `:prefetch` and `:replication retry`), so
/// `mirrorctl prefetch --ids 7` asks about entry 7, not all.
fn tui_start(cmd: &Command) -> String {
    match cmd {
        Command::Prefetch {
            top: Some(n),
            window,
            ..
        } => format!("prefetch top {n} {window}"),
        Command::Prefetch { ids, .. } if !ids.is_empty() => {
            let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
            format!("prefetch {}", ids.join(","))
        }
        Command::Replication {
            action: Some(crate::cli::ReplicationAction::Retry { failed, ids, .. }),
        } => {
            if *failed {
                "replication retry failed".into()
            } else {
                let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
                format!("replication retry {}", ids.join(","))
            }
        }
        Command::Purge { .. } => purge_start(cmd),
        other => other.name().to_string(),
    }
}

/// `mirrorctl purge …` without --headless: the TUI's `:purge` words for the same selection.
fn purge_start(cmd: &Command) -> String {
    let Command::Purge {
        stale,
        unused_days,
        max_bytes,
        prefix,
        pattern,
        max_delete,
        ..
    } = cmd
    else {
        return cmd.name().to_string();
    };
    let mut words: Vec<String> = vec!["purge".into()];
    let mut flag = |name: &str, value: Option<String>| {
        if let Some(v) = value {
            words.push(name.to_string());
            words.push(shlex::try_quote(&v).map(|q| q.into_owned()).unwrap_or(v));
        }
    };
    flag("unused", unused_days.map(|d| d.to_string()));
    flag("max-bytes", max_bytes.clone());
    flag("prefix", prefix.clone());
    flag("match", pattern.clone());
    flag("max-delete", max_delete.map(|n| n.to_string()));
    if *stale {
        words.push("stale".into());
    }
    words.join(" ")
}

/// Closes as `interrupted` the audit rows left `running` by processes that are gone (their
/// lease ended). Not in read-only mode; a failure only warns (an old schema, a read-only
/// database user), it does not stop the command.
async fn close_abandoned_operations(ctx: &Ctx) {
    if ctx.read_only {
        return;
    }
    match ctx
        .db
        .interrupt_abandoned_operations(chrono::Utc::now())
        .await
    {
        Ok(ids) if !ids.is_empty() => tracing::warn!(
            "marked {} operation(s) interrupted: their process is gone (ids {:?})",
            ids.len(),
            ids
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("closing operations left running by a gone process: {e}"),
    }
}

/// `lock status | release [--force]`, always headless.
async fn run_lock(cli: &Cli, ctx: &Ctx, action: &crate::cli::LockAction) -> anyhow::Result<u8> {
    use crate::cli::LockAction;
    use crate::engine::ops::lock;
    match action {
        LockAction::Status => {
            let r = lock::status(ctx).await?;
            print(cli, &r, || headless::lock::status_table(&r))?;
        }
        LockAction::Release { force } => {
            let params = lock::LockReleaseParams { force: *force };
            let r = lock::release(ctx, params, &crate::engine::jobs::Progress::none()).await?;
            print(cli, &r, || headless::lock::release_table(&r))?;
        }
    }
    Ok(0)
}

/// Builds the context: the demo's, or the configured database and buckets.
async fn open(cli: &Cli) -> anyhow::Result<(Ctx, Option<Demo>)> {
    let dry_run = matches!(cli.command, Some(Command::Migrate { dry_run: true }));
    if cli.demo {
        let demo = Demo::start(&demo::default_dir(), Ports::default()).await?;
        if !demo.is_generated() {
            eprintln!(
                "mirrorctl: generating the demo dataset in {} (once)…",
                demo.dir.display()
            );
            demo.ensure_generated(&|step| eprintln!("  {step}")).await?;
        }
        let db = connect(&demo.config, pool_size(cli, &demo.config)).await?;
        if !dry_run {
            // A demo generated by an earlier version gets the migrations it lacks, as any
            // SQLite file does below (without them `serve` had no change log to follow).
            db.migrate().await?;
        }
        return Ok((Ctx::new(demo.config.clone(), db, cli.read_only), Some(demo)));
    }
    let (config, _source) = config::load(cli.config.as_deref())?;
    let db = connect(&config, pool_size(cli, &config)).await?;
    if db.backend() == crate::engine::db::Backend::Sqlite && !dry_run {
        // A SQLite file is created and migrated on first use.
        db.migrate().await?;
    }
    Ok((Ctx::new(config, db, cli.read_only), None))
}

/// How many database connections a command may open. One-shot reads run their queries one
/// after another, so one connection serves them all. With more allowed, sqlx pings each
/// connection handed back on a task of its own, and the next query, asked for meanwhile,
/// opens another connection (a new backend and its authentication: about 5 ms on loopback,
/// twice per command).
fn pool_size(cli: &Cli, config: &config::Config) -> u32 {
    match &cli.command {
        Some(
            Command::Stats { .. }
            | Command::Files { .. }
            | Command::File { .. }
            | Command::History { .. }
            | Command::Purge { dry_run: true, .. },
        ) => 1,
        _ => config.database.max_connections,
    }
}

async fn connect(config: &config::Config, max_connections: u32) -> anyhow::Result<Db> {
    let url = config.database_url().map_err(Error::Usage)?;
    Ok(
        Db::connect(url, max_connections, config.database.connect_timeout.0)
            .await?
            .with_lock_lease(config.database.lock_lease.0),
    )
}

/// Prints a report as JSON or with the table renderer.
fn print<T: serde::Serialize>(
    cli: &Cli,
    report: &T,
    table: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    let text = match cli.output {
        OutputFormat::Json => headless::json(report) + "\n",
        OutputFormat::Table => table(),
        OutputFormat::Prometheus => {
            return Err(Error::Usage("--output prometheus is only for `stats`".into()).into())
        }
    };
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth reporting.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    Ok(())
}

async fn run_headless(cli: &Cli, ctx: &Ctx, cmd: &Command) -> anyhow::Result<u8> {
    match cmd {
        Command::Stats { window } => {
            let params = stats::StatsParams {
                window: stats::Window::parse(window)?,
                series: false,
            };
            let r = stats::run(ctx, params).await?;
            if cli.output == OutputFormat::Prometheus {
                print!("{}", headless::stats_prometheus(&r));
            } else {
                print(cli, &r, || headless::stats_table(&r))?;
            }
        }
        Command::Files {
            sort,
            stale,
            filter,
            limit,
            offset,
            after,
            last,
        } => {
            let after = match after {
                Some(id) => Some(files::cursor(ctx, *id).await?),
                None => None,
            };
            let q = FileQuery {
                sort: match sort {
                    SortArg::Downloads => FileSort::Downloads,
                    SortArg::Size => FileSort::Size,
                    SortArg::LastDownloaded => FileSort::LastDownloaded,
                    SortArg::Name => FileSort::Name,
                },
                stale_only: *stale,
                filter: filter.clone(),
                limit: *limit,
                offset: *offset,
                after,
                from_end: *last,
            };
            let r = files::list(ctx, &q).await?;
            print(cli, &r, || headless::files_table(&r))?;
        }
        Command::File { id, live, since } => {
            let since =
                config::parse_duration(since).map_err(|e| Error::Usage(format!("--since: {e}")))?;
            let r = files::show(
                ctx,
                &files::FileParams {
                    id_or_key: id.clone(),
                    live: *live,
                    since,
                },
            )
            .await?;
            print(cli, &r, || headless::file_table(&r))?;
        }
        Command::History { limit } => {
            let r = history::run(ctx, *limit).await?;
            print(cli, &r, || headless::history_table(&r))?;
        }
        Command::Presign { id, expires } => {
            let expires = config::parse_duration(expires).map_err(Error::Usage)?;
            let r = files::presign(ctx, id, expires).await?;
            print(cli, &r, || format!("{}\n", r.url))?;
        }
        Command::Validate {
            all,
            resume,
            ids,
            recent_days,
            concurrency,
        } => {
            use crate::engine::ops::validate;
            if *resume {
                let from = validate::resume_point(ctx).await?;
                eprintln!("mirrorctl: {from}");
            }
            let params = validate::ValidateParams {
                all: *all || *resume,
                ids: ids.clone(),
                recent_days: *recent_days,
                concurrency: *concurrency,
                resume: *resume,
            };
            let r = validate::run(ctx, params, &cancellable_progress()).await?;
            print(cli, &r, || headless::validate_table(&r))?;
            return Ok(report_exit(&r));
        }
        Command::Remirror {
            targets,
            all_stale,
            dry_run,
            yes,
            concurrency,
        } => {
            use crate::engine::ops::remirror;
            let params = remirror::RemirrorParams {
                targets: targets.clone(),
                all_stale: *all_stale,
                dry_run: *dry_run,
                yes: *yes,
                concurrency: *concurrency,
            };
            let r = remirror::run(ctx, params, &cancellable_progress()).await?;
            print(cli, &r, || headless::remirror_table(&r))?;
            return Ok(report_exit(&r));
        }
        Command::Purge {
            stale,
            unused_days,
            max_bytes,
            prefix,
            pattern,
            impact_days,
            dry_run,
            max_delete,
            yes,
        } => {
            use crate::engine::ops::purge;
            let target = match (stale, unused_days, max_bytes) {
                (true, _, _) => purge::PurgeTarget::Stale,
                (_, Some(days), _) => purge::PurgeTarget::UnusedDays(*days),
                (_, _, Some(size)) => purge::PurgeTarget::MaxBytes(
                    config::parse_size(size)
                        .map_err(|e| Error::Usage(format!("--max-bytes: {e}")))?,
                ),
                // `--prefix` / `--match` alone: every live file they name (the engine refuses
                // a purge with no selection at all).
                _ => purge::PurgeTarget::All,
            };
            let params = purge::PurgeParams {
                target,
                prefix: prefix.clone(),
                pattern: pattern.clone(),
                impact_days: *impact_days,
                dry_run: *dry_run,
                max_delete: *max_delete,
                yes: *yes,
            };
            let r = purge::run(ctx, params, &cancellable_progress()).await?;
            print(cli, &r, || headless::purge_table(&r))?;
            return Ok(report_exit(&r));
        }
        Command::Archive { action } => return run_archive(cli, ctx, action).await,
        Command::Drift {
            repair,
            delete_extra,
            dry_run,
            yes,
            combined,
            checksum,
            concurrency,
            prefix,
        } => {
            use crate::engine::ops::drift;
            if *repair && !*dry_run && !*yes {
                return Err(Error::Refused("drift --repair changes the backup and the inventory: add --yes (or --dry-run to see the plan)".into()).into());
            }
            let lines = combined.then(headless::DriftLines::stdout);
            let params = drift::DriftParams {
                prefix: prefix.clone(),
                concurrency: *concurrency,
                checksum: *checksum,
                repair: *repair,
                delete_extra: *delete_extra,
                dry_run: *dry_run,
                on_line: lines.as_ref().map(|l| l.sink()),
                // --combined prints lines and counts, not the items.
                keep_items: lines.is_none(),
                ..Default::default()
            };
            let progress = cancellable_progress();
            let r = drift::run(ctx, params, &progress).await;
            headless::clear_progress_line();
            let r = r?;
            match lines {
                // The lines are the output; the counts go to stderr so a diff sees only lines.
                Some(lines) => {
                    lines.finish();
                    eprintln!("{}", headless::drift_summary_line(&r));
                }
                None => print(cli, &r, || headless::drift_table(&r))?,
            }
            return Ok(report_exit(&r));
        }
        Command::Prefetch {
            unmirrored,
            top,
            window,
            ids,
            concurrency,
            max_bytes,
            dry_run,
            yes,
        } => {
            use crate::engine::ops::prefetch;
            let selection = match (unmirrored, top) {
                (true, _) => prefetch::PrefetchSelection::Unmirrored,
                (_, Some(n)) => prefetch::PrefetchSelection::Top {
                    n: *n,
                    window_days: window_days(window)?,
                },
                // The TUI asks which; a script must say (clap's group no longer requires it).
                _ if ids.is_empty() => {
                    return Err(Error::Usage(
                        "prefetch needs --unmirrored, --top N or --ids ID… (see `mirrorctl prefetch --help`)"
                            .into(),
                    )
                    .into())
                }
                _ => prefetch::PrefetchSelection::Ids(ids.clone()),
            };
            let max_bytes = match max_bytes {
                Some(s) => Some(
                    config::parse_size(s).map_err(|e| Error::Usage(format!("--max-bytes: {e}")))?,
                ),
                None => None,
            };
            let params = prefetch::PrefetchParams {
                selection,
                concurrency: *concurrency,
                max_bytes,
                dry_run: *dry_run,
                yes: *yes,
            };
            let r = prefetch::run(ctx, params, &cancellable_progress()).await;
            headless::clear_progress_line();
            let r = r?;
            print(cli, &r, || headless::catalog::prefetch_table(&r))?;
            return Ok(report_exit(&r));
        }
        Command::Fleet => {
            let r = crate::engine::ops::fleet::list(ctx, chrono::Utc::now()).await?;
            print(cli, &r, || headless::fleet::fleet_table(&r))?;
            return Ok(report_exit(&r));
        }
        Command::Migrate { .. }
        | Command::Demo { .. }
        | Command::Completions { .. }
        | Command::Man { .. }
        | Command::Serve { .. }
        | Command::Catalog { .. }
        | Command::Check { .. }
        | Command::Lock { .. }
        | Command::Replication { .. }
        | Command::Doctor { .. }
        | Command::Uploads { .. } => {
            unreachable!("handled before")
        }
    }
    Ok(0)
}

/// Headless progress on stderr, with Ctrl-C as a clean cancel: the operation stops after the
/// work under way, its audit row says `cancelled` and the lock is released.
fn cancellable_progress() -> crate::engine::jobs::Progress {
    let progress = headless::progress();
    let token = progress.token();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nmirrorctl: cancelling after the work under way…");
            token.cancel();
        }
    });
    progress
}

/// The exit code of a completed run: 3 when it found problems, 1 when some items failed.
fn report_exit(r: &impl crate::engine::jobs::Report) -> u8 {
    if r.failures() > 0 {
        1
    } else if r.found_problems() {
        3
    } else {
        0
    }
}

/// A prefetch window in whole days: "7d", "24h", "30d".
fn window_days(w: &str) -> anyhow::Result<i64> {
    let d = config::parse_duration(w).map_err(|e| Error::Usage(format!("--window: {e}")))?;
    let days = d.as_secs().div_ceil(86_400) as i64;
    if days == 0 {
        return Err(Error::Usage("--window must be at least 1d".into()).into());
    }
    Ok(days)
}

/// `replication [status] | retry | resync` with --headless (resync always): status exits 3
/// when a task failed.
async fn run_replication(
    cli: &Cli,
    ctx: &Ctx,
    action: Option<&crate::cli::ReplicationAction>,
) -> anyhow::Result<u8> {
    use crate::cli::ReplicationAction;
    use crate::engine::ops::replication;
    match action.unwrap_or(&ReplicationAction::Status) {
        ReplicationAction::Status => {
            let r = replication::status(ctx, chrono::Utc::now()).await?;
            print(cli, &r, || headless::replication::status_table(&r))?;
            Ok(report_exit(&r))
        }
        ReplicationAction::Retry {
            failed,
            ids,
            dry_run,
        } => {
            let select = if *failed {
                replication::RetrySelector::Failed
            } else {
                replication::RetrySelector::Ids(ids.clone())
            };
            let params = replication::RetryParams {
                select,
                dry_run: *dry_run,
            };
            let r = replication::retry(ctx, params, &headless::progress()).await?;
            print(cli, &r, || headless::replication::retry_table(&r))?;
            Ok(report_exit(&r))
        }
        ReplicationAction::Resync {
            dry_run,
            yes,
            concurrency,
        } => {
            let params = replication::ResyncParams {
                dry_run: *dry_run,
                yes: *yes,
                concurrency: Some(*concurrency),
            };
            let r = replication::resync(ctx, params, &cancellable_progress()).await;
            headless::clear_progress_line();
            let r = r?;
            print(cli, &r, || headless::replication::resync_table(&r))?;
            Ok(report_exit(&r))
        }
    }
}

/// `catalog import|sync|list|show`, always headless; import and sync exit 3 when lines were
/// skipped.
async fn run_catalog(
    cli: &Cli,
    ctx: &Ctx,
    action: &crate::cli::CatalogAction,
) -> anyhow::Result<u8> {
    use crate::cli::{CatalogAction, CatalogFormat};
    use crate::engine::ops::catalog;
    match action {
        CatalogAction::Import {
            file,
            format,
            prune,
            strict,
            dry_run,
            max_delete,
            yes,
        } => {
            let params = catalog::ImportParams {
                input: catalog::ImportInput::Path(file.clone()),
                format: format.map(|f| match f {
                    CatalogFormat::Jsonl => catalog::Format::Jsonl,
                    CatalogFormat::Csv => catalog::Format::Csv,
                }),
                prune: *prune,
                strict: *strict,
                dry_run: *dry_run,
                max_delete: *max_delete,
                yes: *yes,
            };
            let r = catalog::import(ctx, params, &cancellable_progress()).await;
            headless::clear_progress_line();
            let r = r?;
            print(cli, &r, || headless::catalog::import_table(&r))?;
            Ok(report_exit(&r))
        }
        CatalogAction::Sync {
            prune,
            dry_run,
            max_delete,
            yes,
        } => {
            let params = catalog::ImportParams {
                prune: *prune,
                dry_run: *dry_run,
                max_delete: *max_delete,
                yes: *yes,
                ..Default::default()
            };
            let r = catalog::sync(ctx, params, &cancellable_progress()).await;
            headless::clear_progress_line();
            let r = r?;
            print(cli, &r, || headless::catalog::import_table(&r))?;
            Ok(report_exit(&r))
        }
        CatalogAction::List {
            unmirrored,
            filter,
            limit,
            after,
        } => {
            let p = catalog::CatalogListParams {
                unmirrored: *unmirrored,
                filter: filter.clone(),
                limit: *limit,
                after_id: *after,
            };
            let r = catalog::list(ctx, &p).await?;
            print(cli, &r, || headless::catalog::list_table(&r))?;
            Ok(0)
        }
        CatalogAction::Show { id } => {
            let r = catalog::show(ctx, id).await?;
            print(cli, &r, || headless::catalog::show_table(&r))?;
            Ok(0)
        }
    }
}

/// `archive list|run|verify|restore`; verify exits 3 when the archive does not match.
async fn run_archive(
    cli: &Cli,
    ctx: &Ctx,
    action: &crate::cli::ArchiveAction,
) -> anyhow::Result<u8> {
    use crate::cli::ArchiveAction;
    use crate::engine::jobs::Report;
    use crate::engine::ops::archive;
    let progress = cancellable_progress();
    match action {
        ArchiveAction::List { exact } => {
            let r = archive::list(ctx, *exact).await?;
            print(cli, &r, || headless::archive_list_table(&r))?;
        }
        ArchiveAction::Run {
            older_than_months,
            partition,
            dry_run,
            yes,
        } => {
            let params = archive::ArchiveRunParams {
                older_than_months: *older_than_months,
                partition: partition.clone(),
                dry_run: *dry_run,
                yes: *yes,
                rows_per_part: None,
            };
            let r = archive::run(ctx, params, &progress).await?;
            print(cli, &r, || headless::archive_run_table(&r))?;
        }
        ArchiveAction::Verify { partition } => {
            let r = archive::verify(ctx, partition, &progress).await?;
            print(cli, &r, || headless::archive_verify_table(&r))?;
            if r.found_problems() {
                return Ok(3);
            }
        }
        ArchiveAction::Restore { partition } => {
            let r = archive::restore(ctx, partition, &progress).await?;
            print(cli, &r, || headless::archive_restore_table(&r))?;
        }
        ArchiveAction::Health {
            partition,
            threshold,
        } => {
            let threshold = threshold
                .as_deref()
                .map(config::parse_duration)
                .transpose()
                .map_err(|e| Error::Usage(format!("--threshold: {e}")))?;
            let params = archive::HealthParams {
                partition: partition.clone(),
                threshold,
            };
            let r = archive::health(ctx, params).await?;
            print(cli, &r, || headless::archive_health_table(&r))?;
            if r.found_problems() {
                return Ok(3);
            }
        }
    }
    Ok(0)
}

async fn run_demo(action: &DemoAction) -> anyhow::Result<u8> {
    let dir = demo::default_dir();
    match action {
        DemoAction::Env => {
            println!("demo directory: {}", dir.display());
            println!(
                "database:       sqlite://{}",
                dir.join("mirror.db").display()
            );
            println!("buckets:        {}", demo::BUCKETS.join(", "));
            println!("access key:     {}", demo::ACCESS_KEY);
            println!("secret key:     {}", demo::SECRET_KEY);
            println!("(`mirrorctl demo up` serves the endpoints and prints export lines)");
            Ok(0)
        }
        DemoAction::Reset => {
            let d = Demo::start(&dir, Ports::default()).await?;
            let t = std::time::Instant::now();
            d.generate(&|step| eprintln!("  {step}")).await?;
            eprintln!(
                "demo regenerated in {} ({:.1}s)",
                dir.display(),
                t.elapsed().as_secs_f64()
            );
            Ok(0)
        }
        DemoAction::Up {
            s3_port,
            origin_port,
        } => {
            let d = Demo::start(
                &dir,
                Ports {
                    s3: *s3_port,
                    origin: *origin_port,
                },
            )
            .await?;
            d.ensure_generated(&|step| eprintln!("  {step}")).await?;
            println!("export AWS_ENDPOINT_URL={}", d.s3_endpoint);
            println!("export AWS_ACCESS_KEY_ID={}", demo::ACCESS_KEY);
            println!("export AWS_SECRET_ACCESS_KEY={}", demo::SECRET_KEY);
            println!("export AWS_REGION=us-east-1");
            println!("export MIRRORCTL_DEMO_ORIGIN_URL={}", d.origin_url);
            println!(
                "# buckets: {}; database: sqlite://{}",
                demo::BUCKETS.join(", "),
                dir.join("mirror.db").display()
            );
            println!("# serving until Ctrl-C");
            let _ = std::io::stdout().flush();
            let _ = tokio::signal::ctrl_c().await;
            Ok(0)
        }
    }
}
