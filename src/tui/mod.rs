//! The terminal UI: one event loop that merges terminal events, query results, job progress
//! and timers, feeds them to `app::update`, runs the effects it queues on tasks, and redraws
//! only after something happened (an idle UI sleeps until the next refresh).

mod app;
mod keymap;
mod ops;
mod purge_command;
mod theme;
mod view;
mod widgets;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io::{IsTerminal, Stdout};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use crossterm::event::{
    DisableMouseCapture, EnableMouseCapture, Event, EventStream, MouseEventKind,
};
use crossterm::execute;
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use futures::StreamExt;
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use tokio::sync::mpsc::{self, UnboundedSender};

use crate::engine::error::{Error, Result};
use crate::engine::jobs::Progress;
use crate::engine::ops::{catalog, check, files, fleet, history, replication, stats};
use crate::engine::Ctx;

use app::{update, Action, App, DashboardData, Effect, Options};

/// How many operations the History view loads.
const HISTORY_LIMIT: i64 = 200;
/// The shortest refresh interval honoured, so a typo in the config cannot spin the CPU.
const MIN_REFRESH: Duration = Duration::from_millis(500);

/// Opens the TUI on `view` (a command name such as "files" or "drift") and runs it until
/// the operator quits. Returns the exit code.
pub async fn run(ctx: Ctx, view: Option<&str>) -> Result<u8> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(Error::Usage(
            "the terminal UI needs a terminal; use --headless <command> in scripts".into(),
        ));
    }
    let started = Instant::now();
    let ctx = Arc::new(ctx);
    let opts = Options {
        read_only: ctx.read_only,
        theme: ctx.config.tui.theme,
        refresh: ctx.config.tui.refresh.0.max(MIN_REFRESH),
        timezone: ctx.config.tui.timezone,
        start: view.map(str::to_string),
        unused_days: ctx.config.policy.unused_days,
    };
    let mut terminal = enter()?;
    let result = event_loop(&mut terminal, ctx, opts, started).await;
    leave();
    // The hook installed by `enter` is only needed while the screen is ours.
    let _ = std::panic::take_hook();
    result
}

type Term = Terminal<CrosstermBackend<Stdout>>;

/// Raw mode, the alternate screen and mouse reporting; a panic hook that undoes them first so
/// a panic message lands on a usable terminal.
fn enter() -> Result<Term> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        leave();
        previous(info);
    }));
    enable_raw_mode()
        .map_err(|e| Error::runtime(format!("terminal: cannot enter raw mode: {e}")))?;
    let mut stdout = std::io::stdout();
    if let Err(e) = execute!(stdout, EnterAlternateScreen, EnableMouseCapture) {
        leave();
        return Err(Error::runtime(format!("terminal: {e}")));
    }
    Terminal::new(CrosstermBackend::new(stdout)).map_err(|e| {
        leave();
        Error::runtime(format!("terminal: {e}"))
    })
}

/// Gives the terminal back as it was: cooked mode, main screen, cursor visible.
fn leave() {
    let _ = disable_raw_mode();
    let _ = execute!(
        std::io::stdout(),
        DisableMouseCapture,
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

async fn event_loop(
    terminal: &mut Term,
    ctx: Arc<Ctx>,
    opts: Options,
    started: Instant,
) -> Result<u8> {
    let size = terminal
        .size()
        .map_err(|e| Error::runtime(format!("terminal: {e}")))?;
    let refresh = opts.refresh;
    let mut app = App::new(opts, Utc::now(), (size.width, size.height));
    let (tx, mut rx) = mpsc::unbounded_channel::<Action>();
    let mut jobs: HashMap<u64, Progress> = HashMap::new();
    let mut events = EventStream::new();
    let mut next_refresh = tokio::time::Instant::now() + refresh;
    let mut dirty = true;
    let mut frames = 0u64;
    let mut logged_data = false;
    loop {
        for effect in std::mem::take(&mut app.effects) {
            execute(effect, &ctx, &tx, &mut jobs);
        }
        if app.quit {
            break;
        }
        if dirty {
            terminal
                .draw(|f| view::render(&app, f))
                .map_err(|e| Error::runtime(format!("terminal: {e}")))?;
            dirty = false;
            frames += 1;
            if frames == 1 {
                tracing::info!("first frame after {} ms", started.elapsed().as_millis());
            }
            if !logged_data && app.dashboard.data.is_some() {
                logged_data = true;
                tracing::info!(
                    "first frame with stats after {} ms",
                    started.elapsed().as_millis()
                );
            }
        }
        let wake = match app.next_expiry() {
            Some(at) => {
                let left = (at - Utc::now()).to_std().unwrap_or_default();
                next_refresh.min(tokio::time::Instant::now() + left)
            }
            None => next_refresh,
        };
        let action = tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(Event::Key(k))) => Some(Action::Key(k)),
                // Pointer motion changes nothing on screen: no redraw.
                Some(Ok(Event::Mouse(m))) if m.kind == MouseEventKind::Moved => None,
                Some(Ok(Event::Mouse(m))) => Some(Action::Mouse(m)),
                Some(Ok(Event::Resize(w, h))) => Some(Action::Resize(w, h)),
                Some(Ok(_)) => None,
                Some(Err(e)) => return Err(Error::runtime(format!("terminal: {e}"))),
                None => break,
            },
            Some(action) = rx.recv() => Some(action),
            _ = tokio::time::sleep_until(wake) => Some(Action::Tick(Utc::now())),
        };
        let Some(action) = action else { continue };
        // Times on screen (job start, rates, "ago") are as of this event.
        app.now = Utc::now();
        let tick = matches!(action, Action::Tick(_));
        handle(&mut app, action, &mut jobs);
        if tick && tokio::time::Instant::now() >= next_refresh {
            update(&mut app, Action::Refresh);
            next_refresh = tokio::time::Instant::now() + refresh;
        }
        // Everything already queued (a burst of progress events) costs one redraw.
        while let Ok(action) = rx.try_recv() {
            handle(&mut app, action, &mut jobs);
        }
        dirty = true;
    }
    for p in jobs.values() {
        p.cancel();
    }
    Ok(0)
}

fn handle(app: &mut App, action: Action, jobs: &mut HashMap<u64, Progress>) {
    if let Action::JobDone { id, .. } = &action {
        jobs.remove(id);
    }
    update(app, action);
}

/// Runs one effect on a task; its result comes back through `tx` as an action.
fn execute(
    effect: Effect,
    ctx: &Arc<Ctx>,
    tx: &UnboundedSender<Action>,
    jobs: &mut HashMap<u64, Progress>,
) {
    let ctx = Arc::clone(ctx);
    let tx = tx.clone();
    match effect {
        Effect::LoadStats(window) => {
            tokio::spawn(async move {
                let r = async {
                    let params = stats::StatsParams {
                        window,
                        series: true,
                    };
                    let (
                        stats,
                        last_validate,
                        last_drift,
                        last_archive,
                        latest_drift_run,
                        latest_archive_run,
                    ) = tokio::try_join!(
                        stats::run(&ctx, params),
                        ctx.db.last_finished("validate"),
                        ctx.db.last_finished("drift"),
                        ctx.db.last_finished("archive"),
                        ctx.db.latest_finished_operation("drift"),
                        ctx.db.latest_finished_operation("archive"),
                    )?;
                    let check = check::assess(&ctx, &stats, last_validate).await?;
                    Ok::<_, Error>(Box::new(DashboardData {
                        stats,
                        last_validate,
                        last_drift,
                        last_archive,
                        latest_drift_run,
                        latest_archive_run,
                        check: Some(check),
                    }))
                }
                .await;
                let _ = tx.send(Action::StatsLoaded(r.map_err(|e| e.to_string())));
            });
        }
        Effect::LoadFiles {
            generation,
            start,
            query,
            count,
        } => {
            tokio::spawn(async move {
                let offset = start;
                let r = async {
                    let rows = files::list(&ctx, &query).await?.files;
                    let total = if count {
                        Some(ctx.db.count_files(&query).await?)
                    } else {
                        None
                    };
                    Ok::<_, Error>((rows, total))
                }
                .await;
                let _ = tx.send(Action::FilesLoaded {
                    generation,
                    offset,
                    result: r.map_err(|e| e.to_string()),
                });
            });
        }
        Effect::LoadFile(id_or_key) => {
            tokio::spawn(async move {
                let p = files::FileParams {
                    id_or_key,
                    live: false,
                    since: files::DEFAULT_SINCE,
                };
                let r = files::show(&ctx, &p)
                    .await
                    .map(Box::new)
                    .map_err(|e| e.to_string());
                let _ = tx.send(Action::FileLoaded(r));
            });
        }
        Effect::LoadArchive => {
            tokio::spawn(async move {
                let r = crate::engine::ops::archive::list(&ctx, false)
                    .await
                    .map(|r| r.partitions)
                    .map_err(|e| e.to_string());
                let _ = tx.send(Action::ArchiveLoaded(r));
            });
        }
        Effect::LoadCatalog {
            generation,
            offset,
            after_id,
            limit,
        } => {
            tokio::spawn(async move {
                let params = catalog::CatalogListParams {
                    unmirrored: true,
                    filter: None,
                    limit,
                    after_id,
                };
                let result = catalog::list(&ctx, &params)
                    .await
                    .map_err(|e| e.to_string());
                let _ = tx.send(Action::CatalogLoaded {
                    generation,
                    offset,
                    limit,
                    result,
                });
            });
        }
        Effect::LoadFleet => {
            tokio::spawn(async move {
                let r = fleet::list(&ctx, Utc::now())
                    .await
                    .map(Box::new)
                    .map_err(|e| e.to_string());
                let _ = tx.send(Action::FleetLoaded(r));
            });
        }
        Effect::LoadReplication => {
            tokio::spawn(async move {
                let r = replication::status(&ctx, Utc::now())
                    .await
                    .map(Box::new)
                    .map_err(|e| e.to_string());
                let _ = tx.send(Action::ReplicationLoaded(r));
            });
        }
        Effect::LoadHistory => {
            tokio::spawn(async move {
                let r = history::run(&ctx, HISTORY_LIMIT)
                    .await
                    .map(|h| h.operations)
                    .map_err(|e| e.to_string());
                let _ = tx.send(Action::HistoryLoaded(r));
            });
        }
        Effect::Presign(id) => {
            tokio::spawn(async move {
                let r = files::presign(&ctx, &id.to_string(), Duration::from_secs(3600))
                    .await
                    .map_err(|e| e.to_string());
                let _ = tx.send(Action::Presigned(r));
            });
        }
        Effect::Preview(op) => {
            run_operation(move || async move {
                let result = ops::preview(&ctx, &op).await.map_err(|e| e.to_string());
                let _ = tx.send(Action::PreviewLoaded { op, result });
            });
        }
        Effect::StartJob { id, op } => {
            let (progress, mut events) = Progress::channel();
            jobs.insert(id, progress.clone());
            let forward = tx.clone();
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    if forward.send(Action::Job { id, event }).is_err() {
                        break;
                    }
                }
            });
            run_operation(move || async move {
                let result = match ops::run(&ctx, &op, &progress).await {
                    Ok(outcome) => {
                        if let Some(items) = outcome.drift_items {
                            let _ = tx.send(Action::DriftItems(items));
                        }
                        Ok(outcome.line)
                    }
                    Err(e) => Err(e.to_string()),
                };
                let _ = tx.send(Action::JobDone { id, result });
            });
        }
        Effect::CancelJob(id) => {
            if let Some(p) = jobs.get(&id) {
                p.cancel();
            }
        }
    }
}

/// Runs an operation's future on a blocking-pool thread of the same runtime. Operation
/// futures need not be `Send` (some hold borrows across awaits that rustc cannot prove
/// `Send`), and their CPU work (hashing, Parquet) stays off the thread that reads keys.
fn run_operation<F, Fut>(make: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || handle.block_on(make()));
}
