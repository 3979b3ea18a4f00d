//! The TUI's state and its `update`: every key, tick, query result and job event arrives as
//! an `Action`; `update` changes the state and queues `Effect`s (queries, jobs) that the event
//! loop runs on tasks. Nothing here awaits or touches the terminal, so tests drive it directly.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind};

use crate::config::ThemeName;
use crate::engine::db::CatalogRow;
use crate::engine::jobs::JobEvent;
use crate::engine::model::{FileQuery, FileRow, FileSort, OperationRecord};
use crate::engine::ops::archive::{PartitionEntry, PartitionState};
use crate::engine::ops::catalog::CatalogList;
use crate::engine::ops::drift::DriftItem;
use crate::engine::ops::files::{FileReport, PresignReport};
use crate::engine::ops::fleet::FleetReport;
use crate::engine::ops::replication::ReplicationStatus;
use crate::engine::ops::stats::{StatsReport, Window};

use super::keymap::{self, Command, Scope};
use super::ops::{OpRequest, Preview};
use super::purge_command;
use super::theme::Theme;

/// Rows fetched per files query; more than any screen shows, so scrolling within a page
/// needs no query.
pub const FILES_PAGE: i64 = 200;
/// The catalog is paged by id (keyset): a cursor is kept every `CATALOG_PAGE` rows, and a
/// query fetches at least two of them.
pub const CATALOG_PAGE: i64 = 200;
/// The most rows one catalog query reads when the viewport jumps past the known cursors
/// (to `G` on a million entries: 50 queries, not 5,000).
pub const CATALOG_SKIP: i64 = 20_000;
/// How long a notification stays.
const NOTE_SECS: i64 = 6;
const ERROR_NOTE_SECS: i64 = 12;
/// Replication samples kept for the backlog and lag trends (one per refresh: 10 minutes at
/// the default 5 s).
pub const REPLICATION_SAMPLES: usize = 120;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Dashboard,
    Files,
    Jobs,
    Drift,
    Archive,
    History,
    Catalog,
    Fleet,
    Replication,
}

impl View {
    pub const ALL: [View; 9] = [
        View::Dashboard,
        View::Files,
        View::Jobs,
        View::Drift,
        View::Archive,
        View::History,
        View::Catalog,
        View::Fleet,
        View::Replication,
    ];

    pub fn title(self) -> &'static str {
        match self {
            View::Dashboard => "Dashboard",
            View::Files => "Files",
            View::Jobs => "Jobs",
            View::Drift => "Drift",
            View::Archive => "Archive",
            View::History => "History",
            View::Catalog => "Catalog",
            View::Fleet => "Fleet",
            View::Replication => "Replication",
        }
    }

    /// The name in a tab bar too narrow for every title.
    pub fn short_title(self) -> &'static str {
        match self {
            View::Dashboard => "Dash",
            View::Archive => "Arch",
            View::History => "Hist",
            View::Catalog => "Cat",
            View::Replication => "Repl",
            other => other.title(),
        }
    }

    fn index(self) -> usize {
        View::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }

    fn scope(self) -> Scope {
        match self {
            View::Dashboard => Scope::Dashboard,
            View::Files => Scope::Files,
            View::Jobs => Scope::Jobs,
            View::Drift => Scope::Drift,
            View::Archive => Scope::Archive,
            View::History => Scope::History,
            View::Catalog => Scope::Catalog,
            View::Fleet => Scope::Fleet,
            View::Replication => Scope::Replication,
        }
    }
}

/// Everything that can happen to the app.
#[derive(Debug)]
pub enum Action {
    Key(KeyEvent),
    Mouse(MouseEvent),
    Resize(u16, u16),
    /// Time passed: refresh the current view, expire notifications.
    Tick(DateTime<Utc>),
    /// A refresh of what the current view shows.
    Refresh,
    StatsLoaded(Result<Box<DashboardData>, String>),
    FilesLoaded {
        generation: u64,
        offset: i64,
        result: Result<(Vec<FileRow>, Option<i64>), String>,
    },
    FileLoaded(Result<Box<FileReport>, String>),
    HistoryLoaded(Result<Vec<OperationRecord>, String>),
    ArchiveLoaded(Result<Vec<PartitionEntry>, String>),
    /// A page of the catalog's unmirrored entries: `limit` rows asked for from row `offset`.
    CatalogLoaded {
        generation: u64,
        offset: i64,
        limit: i64,
        result: Result<CatalogList, String>,
    },
    /// The serve replicas on the database.
    FleetLoaded(Result<Box<FleetReport>, String>),
    /// The replication backlog, lag and troubled tasks.
    ReplicationLoaded(Result<Box<ReplicationStatus>, String>),
    /// The keys of the latest drift check: what differs and why.
    DriftItems(Vec<DriftItem>),
    Presigned(Result<PresignReport, String>),
    PreviewLoaded {
        op: OpRequest,
        result: Result<Preview, String>,
    },
    /// A progress event from a running job.
    Job {
        id: u64,
        event: JobEvent,
    },
    /// A job's task ended: its one-line result or its error.
    JobDone {
        id: u64,
        result: Result<String, String>,
    },
}

/// Work for the event loop: it runs each on a task and answers with an `Action`.
#[derive(Debug, Clone)]
pub enum Effect {
    LoadStats(Window),
    LoadFiles {
        generation: u64,
        /// The row number of the page's first row.
        start: i64,
        query: FileQuery,
        count: bool,
    },
    LoadFile(String),
    LoadHistory,
    LoadArchive,
    /// Unmirrored catalog entries after `after_id`, the first of them being row `offset`.
    LoadCatalog {
        generation: u64,
        offset: i64,
        after_id: i64,
        limit: i64,
    },
    LoadFleet,
    LoadReplication,
    Presign(i64),
    Preview(OpRequest),
    StartJob {
        id: u64,
        op: OpRequest,
    },
    CancelJob(u64),
}

/// What the dashboard shows: the stats report and when the periodic operations last ran.
#[derive(Debug, Clone)]
pub struct DashboardData {
    pub stats: StatsReport,
    pub last_validate: Option<DateTime<Utc>>,
    pub last_drift: Option<DateTime<Utc>>,
    pub last_archive: Option<DateTime<Utc>>,
    /// The newest finished drift check and archive run, whatever their outcome (audit log).
    pub latest_drift_run: Option<crate::engine::model::OperationRecord>,
    pub latest_archive_run: Option<crate::engine::model::OperationRecord>,
    /// The `[alerts]` checks and `[costs]` estimates of these figures.
    pub check: Option<crate::engine::ops::check::CheckReport>,
}

#[derive(Debug, Clone, Default)]
pub struct DashboardState {
    pub window: Window,
    pub data: Option<DashboardData>,
    pub loading: bool,
    pub error: Option<String>,
    /// Storage when this session first saw it, for the growth figure.
    pub storage_baseline: Option<(i64, i64)>,
}

#[derive(Debug, Clone, Default)]
pub struct FileDetailState {
    pub id_or_key: String,
    pub report: Option<Box<FileReport>>,
    pub error: Option<String>,
}

/// The per-file table: a window of rows from the database around what is on screen.
#[derive(Debug, Clone, Default)]
pub struct FilesState {
    pub sort: FileSort,
    pub filter: String,
    /// Rows matching the filter, once counted.
    pub total: Option<i64>,
    /// The cached rows, starting at row `page_offset`.
    pub page: Vec<FileRow>,
    pub page_offset: i64,
    pub selected: i64,
    pub top: i64,
    /// Bumped when sort or filter change, so answers to older queries are dropped.
    pub generation: u64,
    /// Offset of the query in flight.
    pub pending: Option<i64>,
    pub error: Option<String>,
    pub detail: Option<FileDetailState>,
    /// Row number → the row before it, from pages already seen: a page starts after the
    /// nearest one (keyset paging), so pages stay put while counters change and a page far
    /// down costs what the first does.
    pub cursors: BTreeMap<i64, FileRow>,
}

impl FilesState {
    pub fn row(&self, i: i64) -> Option<&FileRow> {
        if i < self.page_offset {
            return None;
        }
        self.page.get((i - self.page_offset) as usize)
    }

    /// The query for `limit` rows from row `start`: after the nearest row seen before it,
    /// skipping the rows between; or backwards from the end when that is nearer.
    pub fn query(&self, start: i64, limit: i64) -> FileQuery {
        let mut q = FileQuery {
            sort: self.sort,
            stale_only: false,
            filter: (!self.filter.is_empty()).then(|| self.filter.clone()),
            limit,
            offset: start,
            after: None,
            from_end: false,
        };
        if let Some((row, before)) = self.cursors.range(..=start).next_back() {
            q.after = Some(before.clone());
            q.offset = start - row;
        }
        if let Some(total) = self.total {
            let to_end = (total - start - limit).max(0);
            if start > 0 && to_end < q.offset {
                q.after = None;
                q.from_end = true;
                q.offset = to_end;
                q.limit = limit.min(total - start).max(0);
            }
        }
        q
    }

    /// A page from row `start` arrived: keep its last row, and one every `FILES_PAGE` rows, as
    /// places later pages can start after.
    fn keep_cursors(&mut self, start: i64, rows: &[FileRow]) {
        let n = rows.len() as i64;
        for (i, r) in rows.iter().enumerate() {
            let next = start + i as i64 + 1;
            if next % FILES_PAGE == 0 || next == start + n {
                self.cursors.insert(next, r.clone());
            }
        }
    }
}

/// The Catalog view: entries without a fresh mirrored copy, a window of rows from the
/// database around what is on screen. The engine pages by id, so a row number is reached from
/// the nearest known cursor before it.
#[derive(Debug, Clone, Default)]
pub struct CatalogState {
    /// Live entries in the catalog, and of those without a fresh copy, once loaded.
    pub total: Option<i64>,
    pub unmirrored: Option<i64>,
    /// Rows in the list: the unmirrored count, or where a short page ended.
    pub len: Option<i64>,
    /// The cached rows, starting at row `page_offset`.
    pub page: Vec<CatalogRow>,
    pub page_offset: i64,
    pub selected: i64,
    pub top: i64,
    /// Row number → the id the row after it comes after, every `CATALOG_PAGE` rows.
    pub cursors: BTreeMap<i64, i64>,
    /// Bumped when the list changed under the cursors, so answers to older queries are dropped.
    pub generation: u64,
    /// Offset of the query in flight.
    pub pending: Option<i64>,
    pub error: Option<String>,
}

impl CatalogState {
    pub fn row(&self, i: i64) -> Option<&CatalogRow> {
        if i < self.page_offset {
            return None;
        }
        self.page.get((i - self.page_offset) as usize)
    }

    /// The cursor at or before row `start`: (its row, the id to page after).
    fn cursor_before(&self, start: i64) -> (i64, i64) {
        self.cursors
            .range(..=start)
            .next_back()
            .map(|(r, id)| (*r, *id))
            .unwrap_or((0, 0))
    }

    /// The list changed (a prefetch finished, the counts moved): every cursor but the first
    /// may point at the wrong row. The rows on screen stay until the new ones arrive.
    fn invalidate(&mut self) {
        self.generation += 1;
        self.cursors.clear();
        self.pending = None;
    }
}

/// The Fleet view: the serve replicas on the database, as of the last load.
#[derive(Debug, Clone, Default)]
pub struct FleetState {
    pub report: Option<Box<FleetReport>>,
    pub loading: bool,
    pub error: Option<String>,
}

/// One reading of the replication figures, for the trends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicationSample {
    pub at: DateTime<Utc>,
    pub pending: i64,
    pub lag_s: f64,
}

/// The Replication view: the latest status, the figures of every load since the first (the
/// last `REPLICATION_SAMPLES`), and the selected troubled task.
#[derive(Debug, Clone, Default)]
pub struct ReplicationState {
    pub status: Option<Box<ReplicationStatus>>,
    pub samples: VecDeque<ReplicationSample>,
    pub selected: usize,
    pub loading: bool,
    pub error: Option<String>,
}

impl ReplicationState {
    /// Nothing to show but the figures' zeros: no task open, failed or drained in the last
    /// minute, and none seen in this session's samples either.
    pub fn nothing_replicated(&self) -> bool {
        let Some(s) = &self.status else { return false };
        s.pending == 0
            && s.failed == 0
            && s.in_flight == 0
            && s.drain_per_s == 0.0
            && s.troubled.is_empty()
            && self.samples.iter().all(|x| x.pending == 0)
    }

    fn loaded(&mut self, status: Box<ReplicationStatus>) {
        if self.samples.back().map(|x| x.at) != Some(status.generated_at) {
            self.samples.push_back(ReplicationSample {
                at: status.generated_at,
                pending: status.pending,
                lag_s: status.lag_s,
            });
        }
        while self.samples.len() > REPLICATION_SAMPLES {
            self.samples.pop_front();
        }
        self.selected = self.selected.min(status.troubled.len().saturating_sub(1));
        self.status = Some(status);
        self.error = None;
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Running,
    Cancelling,
    Finished {
        ok: bool,
        msg: String,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone)]
pub struct JobEntry {
    pub id: u64,
    pub op: OpRequest,
    pub started_at: DateTime<Utc>,
    pub done: u64,
    pub total: Option<u64>,
    pub msg: String,
    pub state: JobState,
}

/// The Archive view's list of months: live in the database, archived or restored.
#[derive(Debug, Clone, Default)]
pub struct ArchiveState {
    pub partitions: Vec<PartitionEntry>,
    pub selected: usize,
    pub loading: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct HistoryState {
    pub rows: Vec<OperationRecord>,
    pub selected: usize,
    pub top: usize,
    pub loading: bool,
    pub error: Option<String>,
    pub open: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Error,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub level: Level,
    pub text: String,
    pub at: DateTime<Utc>,
}

/// The popup or line editor on top of the views; keys go to it first.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Normal,
    Command {
        input: String,
    },
    Filter {
        input: String,
    },
    Help {
        scroll: u16,
    },
    Confirm {
        op: OpRequest,
        preview: Preview,
    },
    Message {
        title: String,
        body: String,
    },
    /// Quit was asked for while jobs run: the titles of the jobs a quit would cancel.
    QuitConfirm {
        jobs: Vec<String>,
    },
}

/// How the app was asked to start.
#[derive(Debug, Clone)]
pub struct Options {
    pub read_only: bool,
    pub theme: ThemeName,
    pub refresh: Duration,
    pub timezone: crate::config::TimeZoneName,
    /// The command named on the command line (`mirrorctl --demo drift`).
    pub start: Option<String>,
    /// `policy.unused_days`: what `:purge unused` means without DAYS.
    pub unused_days: u32,
}

#[derive(Debug, Clone)]
pub struct App {
    pub view: View,
    pub mode: Mode,
    pub width: u16,
    pub height: u16,
    pub read_only: bool,
    pub theme: Theme,
    /// The zone times are shown in (`tui.timezone`).
    pub timezone: crate::config::TimeZoneName,
    /// `policy.unused_days`.
    pub unused_days: u32,
    /// The time rendering uses for "ago" and rates; set by ticks, so tests fix it.
    pub now: DateTime<Utc>,
    pub dashboard: DashboardState,
    pub files: FilesState,
    pub jobs: Vec<JobEntry>,
    pub jobs_selected: usize,
    pub history: HistoryState,
    pub archive: ArchiveState,
    pub catalog: CatalogState,
    pub fleet: FleetState,
    pub replication: ReplicationState,
    /// The keys of the latest drift check of this session.
    pub drift_items: Vec<DriftItem>,
    /// The first drift key shown (the list scrolls with ↑↓).
    pub drift_top: usize,
    pub notifications: Vec<Notification>,
    pub effects: Vec<Effect>,
    pub quit: bool,
    /// When a confirmed quit started cancelling the running jobs; the app quits once they end
    /// (or after `QUIT_GRACE`).
    pub quitting: Option<DateTime<Utc>>,
    next_job: u64,
}

/// How long a confirmed quit waits for cancelled jobs to record their end.
const QUIT_GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(15);

impl App {
    pub fn new(opts: Options, now: DateTime<Utc>, (width, height): (u16, u16)) -> App {
        let mut app = App {
            view: View::Dashboard,
            mode: Mode::Normal,
            width,
            height,
            read_only: opts.read_only,
            theme: Theme::from_name(opts.theme),
            timezone: opts.timezone,
            unused_days: opts.unused_days,
            now,
            dashboard: DashboardState::default(),
            files: FilesState::default(),
            jobs: Vec::new(),
            jobs_selected: 0,
            history: HistoryState::default(),
            archive: ArchiveState::default(),
            catalog: CatalogState::default(),
            fleet: FleetState::default(),
            replication: ReplicationState::default(),
            drift_items: Vec::new(),
            drift_top: 0,
            notifications: Vec::new(),
            effects: Vec::new(),
            quit: false,
            quitting: None,
            next_job: 1,
        };
        let start = opts.start.as_deref().unwrap_or("dashboard");
        // The command's name, then what `mirrorctl prefetch` passes on (`--ids`, `--top`).
        let mut words = start.split_whitespace();
        let name = words.next().unwrap_or("dashboard");
        let rest: Vec<&str> = words.collect();
        let mut start_error = None;
        let then = match name {
            "files" | "file" | "presign" => {
                app.view = View::Files;
                None
            }
            "history" => {
                app.view = View::History;
                None
            }
            "validate" => Some(OpRequest::Validate),
            "remirror" => Some(OpRequest::RemirrorStale),
            "purge" => {
                let args = start.trim_start().strip_prefix(name).unwrap_or_default();
                match purge_command::parse(args, app.unused_days) {
                    Ok(req) => Some(OpRequest::Purge(req)),
                    Err(e) => {
                        start_error = Some(e);
                        None
                    }
                }
            }
            "drift" => {
                app.view = View::Drift;
                Some(OpRequest::DriftCheck)
            }
            "archive" => {
                app.view = View::Archive;
                None
            }
            "catalog" => {
                app.view = View::Catalog;
                None
            }
            "fleet" => {
                app.view = View::Fleet;
                None
            }
            "replication" => {
                app.view = View::Replication;
                match parse_replication(&rest) {
                    Ok(op) => op,
                    Err(e) => {
                        start_error = Some(e);
                        None
                    }
                }
            }
            "prefetch" => {
                app.view = View::Catalog;
                match parse_prefetch(&rest) {
                    Ok(op) => Some(op),
                    Err(e) => {
                        start_error = Some(e);
                        None
                    }
                }
            }
            _ => None,
        };
        app.load_view();
        if let Some(op) = then {
            app.request(op);
        }
        if let Some(e) = start_error {
            app.notify(Level::Error, e);
        }
        app
    }

    /// The scopes keys are looked up in, most specific first.
    pub fn scopes(&self) -> Vec<Scope> {
        let mut s = Vec::with_capacity(3);
        if self.view == View::Files && self.files.detail.is_some() {
            s.push(Scope::FileDetail);
        } else {
            s.push(self.view.scope());
            if matches!(
                self.view,
                View::Files
                    | View::Jobs
                    | View::History
                    | View::Archive
                    | View::Drift
                    | View::Catalog
                    | View::Replication
            ) {
                s.push(Scope::List);
            }
        }
        s.push(Scope::Global);
        s
    }

    pub fn notify(&mut self, level: Level, text: impl Into<String>) {
        self.notifications.push(Notification {
            level,
            text: text.into(),
            at: self.now,
        });
        if self.notifications.len() > 5 {
            self.notifications.remove(0);
        }
    }

    /// When the oldest notification expires (the event loop wakes then, not before).
    pub fn next_expiry(&self) -> Option<DateTime<Utc>> {
        self.notifications
            .iter()
            .map(|n| n.at + note_life(n.level))
            .min()
    }

    /// Rows of the files table that fit on screen.
    pub fn files_visible_rows(&self) -> i64 {
        files_visible_rows(self.height)
    }

    pub fn history_visible_rows(&self) -> usize {
        self.height.saturating_sub(5).max(1) as usize
    }

    /// Queues the queries of what the current view shows.
    fn load_view(&mut self) {
        match self.view {
            View::Dashboard => {
                self.dashboard.loading = true;
                self.effects.push(Effect::LoadStats(self.dashboard.window));
            }
            View::Files => {
                if let Some(d) = &self.files.detail {
                    self.effects.push(Effect::LoadFile(d.id_or_key.clone()));
                } else {
                    self.reload_files(true);
                }
            }
            View::History => {
                self.history.loading = true;
                self.effects.push(Effect::LoadHistory);
            }
            View::Archive => {
                self.archive.loading = true;
                self.effects.push(Effect::LoadArchive);
                // The latest archive run (from the audit log) comes with the stats.
                self.effects.push(Effect::LoadStats(self.dashboard.window));
            }
            View::Catalog => self.load_catalog(true),
            View::Fleet => {
                self.fleet.loading = true;
                self.effects.push(Effect::LoadFleet);
            }
            View::Replication => {
                self.replication.loading = true;
                self.effects.push(Effect::LoadReplication);
            }
            // The latest drift check (from the audit log) comes with the stats.
            View::Drift => self.effects.push(Effect::LoadStats(self.dashboard.window)),
            View::Jobs => {}
        }
    }

    /// The periodic refresh: the current view, and once the Replication view was opened its
    /// figures too, so the trends have no gap while another view is on screen.
    fn refresh(&mut self) {
        self.load_view();
        let r = &self.replication;
        if self.view != View::Replication && r.status.is_some() && !r.loading {
            self.replication.loading = true;
            self.effects.push(Effect::LoadReplication);
        }
    }

    fn move_replication(&mut self, delta: i64) {
        let n = self
            .replication
            .status
            .as_ref()
            .map_or(0, |s| s.troubled.len()) as i64;
        if n > 0 {
            let r = &mut self.replication;
            r.selected = (r.selected as i64).saturating_add(delta).clamp(0, n - 1) as usize;
        }
    }

    /// `r`: the selected troubled task back in the queue, due now.
    fn retry_selected(&mut self) {
        let task = self
            .replication
            .status
            .as_ref()
            .and_then(|s| s.troubled.get(self.replication.selected));
        match task {
            Some(t) => {
                let op = OpRequest::ReplicationRetry {
                    ids: vec![t.id],
                    label: format!("task {} ({})", t.id, t.path),
                };
                self.request(op);
            }
            None if self.replication.status.is_some() => self.notify(
                Level::Info,
                "no failed or retrying replication task to retry",
            ),
            None => self.notify(Level::Error, "retry: no task selected (still loading)"),
        }
    }

    /// Queries the catalog rows around the viewport when they are not cached (`reload`: even
    /// when they are, for fresh rows and counts). From the nearest known cursor before them:
    /// when that is far back, a bigger query that records the cursors on the way, then
    /// another until the viewport is reached.
    fn load_catalog(&mut self, reload: bool) {
        let rows = self.files_visible_rows();
        let c = &self.catalog;
        let want_end = match c.len {
            Some(n) => (c.top + rows).min(n),
            None => c.top + rows,
        };
        let cached_end = c.page_offset + c.page.len() as i64;
        let covered = c.top >= c.page_offset && want_end <= cached_end;
        let empty = c.len.is_some() && want_end <= c.top;
        if !reload && (covered || empty) {
            return;
        }
        // Whole pages from a little above the viewport to past its end.
        let start = ((c.top - CATALOG_PAGE / 2).max(0) / CATALOG_PAGE) * CATALOG_PAGE;
        let span = (c.top + rows - start).max(2 * CATALOG_PAGE);
        let span = (span + CATALOG_PAGE - 1) / CATALOG_PAGE * CATALOG_PAGE;
        let (offset, after_id) = c.cursor_before(start);
        let limit = if offset == start {
            span
        } else {
            (start - offset + span).min(CATALOG_SKIP.max(span))
        };
        if !reload && c.pending == Some(offset) {
            return;
        }
        self.catalog.pending = Some(offset);
        self.effects.push(Effect::LoadCatalog {
            generation: self.catalog.generation,
            offset,
            after_id,
            limit,
        });
    }

    fn move_catalog(&mut self, delta: i64) {
        let rows = self.files_visible_rows();
        let c = &mut self.catalog;
        let last = c
            .len
            .unwrap_or(c.page_offset + c.page.len() as i64)
            .saturating_sub(1)
            .max(0);
        c.selected = c.selected.saturating_add(delta).clamp(0, last);
        if c.selected < c.top {
            c.top = c.selected;
        } else if c.selected >= c.top + rows {
            c.top = c.selected - rows + 1;
        }
        // A shorter list (entries were mirrored) leaves no empty screen below its end.
        c.top = c.top.min((last + 1 - rows).max(0));
        self.load_catalog(false);
    }

    /// A page of the catalog arrived: keep its cursors and rows, then fetch more if the
    /// viewport is still ahead of it.
    fn catalog_loaded(&mut self, offset: i64, limit: i64, list: CatalogList) {
        let c = &mut self.catalog;
        let moved = c.unmirrored.is_some_and(|n| n != list.unmirrored)
            || c.total.is_some_and(|n| n != list.total);
        c.total = Some(list.total);
        c.unmirrored = Some(list.unmirrored);
        c.error = None;
        if moved && offset > 0 {
            // The rows before this page changed, so its row numbers may be off: count again
            // from the first row, keeping the position on screen.
            c.invalidate();
            self.load_catalog(true);
            return;
        }
        let n = list.entries.len() as i64;
        if moved {
            c.cursors.retain(|row, _| *row <= offset + n);
        }
        c.cursors.insert(0, 0);
        for (i, e) in list.entries.iter().enumerate() {
            let next = offset + i as i64 + 1;
            if next % CATALOG_PAGE == 0 {
                c.cursors.insert(next, e.id);
            }
        }
        c.len = Some(if n < limit {
            offset + n
        } else {
            list.unmirrored.max(offset + n)
        });
        c.page = list.entries;
        c.page_offset = offset;
        self.move_catalog(0);
    }

    /// "Mirror now": a prefetch of the selected entry.
    fn mirror_selected(&mut self) {
        match self.catalog.row(self.catalog.selected) {
            Some(r) => {
                let label = r.key.clone().unwrap_or_else(|| r.url.clone());
                let op = OpRequest::PrefetchIds {
                    ids: vec![r.id],
                    label,
                };
                self.request(op);
            }
            None if self.catalog.len == Some(0) => self.notify(
                Level::Info,
                "every catalog entry has a fresh mirrored copy: nothing to mirror",
            ),
            None => self.notify(
                Level::Error,
                "mirror now: no entry selected (still loading)",
            ),
        }
    }

    /// Asks again for the page around the viewport (and the count).
    fn reload_files(&mut self, count: bool) {
        let offset = page_start(self.files.top, self.files_visible_rows());
        self.files.pending = Some(offset);
        self.effects.push(Effect::LoadFiles {
            generation: self.files.generation,
            start: offset,
            query: self
                .files
                .query(offset, page_len(self.files_visible_rows())),
            count,
        });
    }

    /// Queries the page when the viewport is not inside the cached rows.
    fn ensure_files_page(&mut self) {
        let rows = self.files_visible_rows();
        let f = &self.files;
        let want_end = match f.total {
            Some(t) => (f.top + rows).min(t),
            None => f.top + rows,
        };
        let cached_end = f.page_offset + f.page.len() as i64;
        let covered = f.top >= f.page_offset && want_end <= cached_end;
        if covered || want_end <= f.top {
            return;
        }
        let offset = page_start(f.top, rows);
        if f.pending == Some(offset) {
            return;
        }
        self.files.pending = Some(offset);
        self.effects.push(Effect::LoadFiles {
            generation: self.files.generation,
            start: offset,
            query: self.files.query(offset, page_len(rows)),
            count: false,
        });
    }

    /// Sort or filter changed: start again from the top.
    fn restart_files(&mut self) {
        self.files.generation += 1;
        self.files.page.clear();
        self.files.page_offset = 0;
        self.files.selected = 0;
        self.files.top = 0;
        self.files.total = None;
        self.files.pending = None;
        self.files.cursors.clear();
        self.reload_files(true);
    }

    fn move_files(&mut self, delta: i64) {
        let rows = self.files_visible_rows();
        // Until the count arrives, the last row known is the end of the cached page.
        let last = self
            .files
            .total
            .unwrap_or(self.files.page_offset + self.files.page.len() as i64)
            .saturating_sub(1)
            .max(0);
        let f = &mut self.files;
        f.selected = (f.selected.saturating_add(delta)).clamp(0, last);
        if f.selected < f.top {
            f.top = f.selected;
        } else if f.selected >= f.top + rows {
            f.top = f.selected - rows + 1;
        }
        self.ensure_files_page();
    }

    fn move_history(&mut self, delta: i64) {
        let n = self.history.rows.len();
        if n == 0 {
            return;
        }
        let rows = self.history_visible_rows();
        let h = &mut self.history;
        h.selected = (h.selected as i64 + delta).clamp(0, n as i64 - 1) as usize;
        if h.selected < h.top {
            h.top = h.selected;
        } else if h.selected >= h.top + rows {
            h.top = h.selected + 1 - rows;
        }
    }

    fn move_jobs(&mut self, delta: i64) {
        let n = self.jobs.len();
        if n > 0 {
            self.jobs_selected =
                (self.jobs_selected as i64 + delta).clamp(0, n as i64 - 1) as usize;
        }
    }

    fn move_selection(&mut self, delta: i64) {
        match self.view {
            View::Files if self.files.detail.is_none() => self.move_files(delta),
            View::History => self.move_history(delta),
            View::Jobs => self.move_jobs(delta),
            View::Drift => {
                let n = self.drift_items.len() as i64;
                if n > 0 {
                    self.drift_top = (self.drift_top as i64 + delta).clamp(0, n - 1) as usize;
                }
            }
            View::Archive => {
                let n = self.archive.partitions.len() as i64;
                if n > 0 {
                    self.archive.selected =
                        (self.archive.selected as i64 + delta).clamp(0, n - 1) as usize;
                }
            }
            View::Catalog => self.move_catalog(delta),
            View::Replication => self.move_replication(delta),
            _ => {}
        }
    }

    /// Verify (`restore == false`) or restore a partition: the one named, else the selected.
    fn archive_action(&mut self, named: Option<&str>, restore: bool) {
        let entry = match named {
            Some(n) => self.archive.partitions.iter().find(|p| p.partition == n),
            None => self.archive.partitions.get(self.archive.selected),
        };
        let verb = if restore { "restore" } else { "verify" };
        let partition = match (entry, named) {
            (Some(e), _) => {
                let ok = match e.state {
                    PartitionState::Archived => true,
                    PartitionState::Restored => !restore,
                    PartitionState::Live | PartitionState::Archiving => false,
                };
                if !ok {
                    let why = if restore && e.state == PartitionState::Restored {
                        "is already restored"
                    } else {
                        "has no archive"
                    };
                    self.notify(
                        Level::Error,
                        format!("archive {verb}: {} {why}", e.partition),
                    );
                    return;
                }
                e.partition.clone()
            }
            // Not in the list (yet): the engine checks the name and says what is wrong.
            (None, Some(n)) => n.to_string(),
            (None, None) => {
                self.notify(
                    Level::Error,
                    format!("archive {verb}: no partition selected"),
                );
                return;
            }
        };
        self.request(if restore {
            OpRequest::ArchiveRestore { partition }
        } else {
            OpRequest::ArchiveVerify { partition }
        });
    }

    fn goto(&mut self, v: View) {
        if self.view != v {
            self.view = v;
            self.load_view();
        }
    }

    /// Asks for an operation: refused in read-only mode, else a dry run for the confirmation.
    pub fn request(&mut self, op: OpRequest) {
        if self.read_only && op.mutating() {
            self.notify(
                Level::Error,
                format!("refused: {} is not allowed in read-only mode", op.kind()),
            );
            return;
        }
        self.effects.push(Effect::Preview(op));
    }

    fn start_job(&mut self, op: OpRequest) {
        let id = self.next_job;
        self.next_job += 1;
        self.jobs.push(JobEntry {
            id,
            op: op.clone(),
            started_at: self.now,
            done: 0,
            total: None,
            msg: "starting".into(),
            state: JobState::Running,
        });
        self.jobs_selected = self.jobs.len() - 1;
        self.effects.push(Effect::StartJob { id, op });
        self.goto(View::Jobs);
    }

    /// Jobs that have not ended yet (running or being cancelled).
    fn unfinished_jobs(&self) -> impl Iterator<Item = &JobEntry> {
        self.jobs
            .iter()
            .filter(|j| matches!(j.state, JobState::Running | JobState::Cancelling))
    }

    /// Quits at once when no job runs; otherwise asks first.
    fn request_quit(&mut self) {
        let jobs: Vec<String> = self
            .unfinished_jobs()
            .map(|j| format!("#{} {}", j.id, j.op.title()))
            .collect();
        if jobs.is_empty() {
            self.quit = true;
        } else {
            self.mode = Mode::QuitConfirm { jobs };
        }
    }

    /// Cancels every running job and quits once they have ended, so their audit rows end
    /// `cancelled` and nothing is left half-written (operations stop between units of work).
    fn confirm_quit(&mut self) {
        self.mode = Mode::Normal;
        let running: Vec<u64> = self
            .jobs
            .iter()
            .filter(|j| j.state == JobState::Running)
            .map(|j| j.id)
            .collect();
        for id in &running {
            self.cancel_job(Some(*id));
        }
        if self.unfinished_jobs().next().is_none() {
            self.quit = true;
            return;
        }
        self.quitting = Some(self.now);
        self.notify(
            Level::Info,
            "quitting: waiting for the cancelled jobs to end (Ctrl-C quits now)",
        );
    }

    /// After a confirmed quit: quit once no job is left, or when the grace period is over.
    fn quit_when_jobs_ended(&mut self) {
        if let Some(since) = self.quitting {
            if self.unfinished_jobs().next().is_none() || self.now - since > QUIT_GRACE {
                self.quit = true;
            }
        }
    }

    fn cancel_job(&mut self, id: Option<u64>) {
        let target = match id {
            Some(id) => self.jobs.iter_mut().find(|j| j.id == id),
            None => self.jobs.get_mut(self.jobs_selected),
        };
        match target {
            Some(j) if j.state == JobState::Running => {
                j.state = JobState::Cancelling;
                let id = j.id;
                self.effects.push(Effect::CancelJob(id));
                self.notify(Level::Info, format!("cancelling job #{id}"));
            }
            Some(j) => {
                let id = j.id;
                self.notify(Level::Error, format!("job #{id} is not running"));
            }
            None => self.notify(Level::Error, "no job to cancel"),
        }
    }

    fn open_file(&mut self, id_or_key: String) {
        self.view = View::Files;
        self.files.detail = Some(FileDetailState {
            id_or_key: id_or_key.clone(),
            report: None,
            error: None,
        });
        self.effects.push(Effect::LoadFile(id_or_key));
    }

    /// The file the detail view shows, once loaded.
    fn detail_file(&self) -> Option<(i64, String)> {
        let r = self.files.detail.as_ref()?.report.as_ref()?;
        Some((r.file.id, r.file.key.clone()))
    }

    fn exec(&mut self, cmd: Command) {
        match cmd {
            Command::Quit => self.request_quit(),
            Command::Help => self.mode = Mode::Help { scroll: 0 },
            Command::Prompt => {
                self.mode = Mode::Command {
                    input: String::new(),
                }
            }
            Command::NextView => self.goto(View::ALL[(self.view.index() + 1) % View::ALL.len()]),
            Command::PrevView => {
                self.goto(View::ALL[(self.view.index() + View::ALL.len() - 1) % View::ALL.len()])
            }
            Command::Goto(v) => self.goto(v),
            Command::Refresh => self.load_view(),
            Command::Up => self.move_selection(-1),
            Command::Down => self.move_selection(1),
            Command::PageUp => self.move_selection(-self.files_visible_rows()),
            Command::PageDown => self.move_selection(self.files_visible_rows()),
            Command::Top => self.move_selection(i64::MIN / 2),
            Command::Bottom => self.move_selection(i64::MAX / 2),
            Command::Open => match self.view {
                View::Files => {
                    if let Some(row) = self.files.row(self.files.selected) {
                        let id = row.id.to_string();
                        self.open_file(id);
                    }
                }
                View::History => self.history.open = !self.history.rows.is_empty(),
                _ => {}
            },
            Command::Back => match self.view {
                View::Files if self.files.detail.is_some() => self.files.detail = None,
                View::Files if !self.files.filter.is_empty() => {
                    self.files.filter.clear();
                    self.restart_files();
                }
                View::History => self.history.open = false,
                _ => self.notifications.clear(),
            },
            Command::Filter => {
                self.mode = Mode::Filter {
                    input: self.files.filter.clone(),
                }
            }
            Command::SortNext => self.set_sort(cycle(&SORTS, self.files.sort, 1)),
            Command::SortPrev => self.set_sort(cycle(&SORTS, self.files.sort, -1)),
            Command::WindowNext => self.set_window(cycle(&Window::ALL, self.dashboard.window, 1)),
            Command::WindowPrev => self.set_window(cycle(&Window::ALL, self.dashboard.window, -1)),
            Command::CancelJob => self.cancel_job(None),
            Command::Presign => {
                if let Some((id, _)) = self.detail_file() {
                    self.effects.push(Effect::Presign(id));
                }
            }
            Command::Remirror => {
                if let Some((id, key)) = self.detail_file() {
                    self.request(OpRequest::Remirror { id, key });
                }
            }
            Command::Validate => self.request(OpRequest::Validate),
            Command::DriftCheck => self.request(OpRequest::DriftCheck),
            Command::DriftRepair => self.request(OpRequest::DriftRepair),
            Command::ArchiveRun => self.request(OpRequest::ArchiveRun),
            Command::ArchiveVerify => self.archive_action(None, false),
            Command::ArchiveRestore => self.archive_action(None, true),
            Command::MirrorNow => self.mirror_selected(),
            Command::PrefetchAll => self.request(OpRequest::PrefetchUnmirrored),
            Command::RetryTask => self.retry_selected(),
            Command::RetryFailed => self.request(OpRequest::ReplicationRetryFailed),
        }
    }

    fn set_sort(&mut self, s: FileSort) {
        self.files.sort = s;
        self.restart_files();
    }

    fn set_window(&mut self, w: Window) {
        self.dashboard.window = w;
        self.dashboard.loading = true;
        self.effects.push(Effect::LoadStats(w));
    }

    /// Runs one `:` command line.
    fn run_line(&mut self, line: &str) {
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { return };
        let rest: Vec<&str> = words.collect();
        let arg = rest.first().copied();
        let window = |app: &mut App, w: Option<&str>| {
            if let Some(w) = w {
                match Window::parse(w) {
                    Ok(w) => app.set_window(w),
                    Err(e) => app.notify(Level::Error, e.to_string()),
                }
            }
        };
        match name {
            "q" | "quit" | "exit" => self.request_quit(),
            "q!" => self.confirm_quit(),
            "dashboard" | "dash" | "stats" => {
                self.goto(View::Dashboard);
                window(self, arg);
            }
            "window" => match arg {
                Some(_) => {
                    self.goto(View::Dashboard);
                    window(self, arg);
                }
                None => self.notify(Level::Error, "usage: window 24h|7d|30d|all"),
            },
            "files" => {
                self.files.detail = None;
                self.goto(View::Files);
                if !rest.is_empty() {
                    self.files.filter = rest.join(" ");
                    self.restart_files();
                }
            }
            "file" => match arg {
                Some(id) => self.open_file(id.to_string()),
                None => self.notify(Level::Error, "usage: file ID|KEY"),
            },
            "filter" => {
                self.files.detail = None;
                self.goto(View::Files);
                self.files.filter = rest.join(" ");
                self.restart_files();
            }
            "sort" => match arg.and_then(parse_sort) {
                Some(s) => {
                    self.files.detail = None;
                    self.goto(View::Files);
                    self.set_sort(s);
                }
                None => self.notify(
                    Level::Error,
                    "usage: sort downloads|size|last-downloaded|name|id|served|stale",
                ),
            },
            "jobs" => self.goto(View::Jobs),
            "history" => self.goto(View::History),
            "catalog" => self.goto(View::Catalog),
            "fleet" => self.goto(View::Fleet),
            "replication" => {
                self.goto(View::Replication);
                match parse_replication(&rest) {
                    Ok(Some(op)) => self.request(op),
                    Ok(None) => {}
                    Err(e) => self.notify(Level::Error, e),
                }
            }
            "prefetch" => {
                self.goto(View::Catalog);
                match parse_prefetch(&rest) {
                    Ok(op) => self.request(op),
                    Err(e) => self.notify(Level::Error, e),
                }
            }
            "drift" => {
                self.goto(View::Drift);
                match arg {
                    None => {}
                    Some("check") => self.request(OpRequest::DriftCheck),
                    Some("repair") => self.request(OpRequest::DriftRepair),
                    Some(other) => self.notify(
                        Level::Error,
                        format!("drift: unknown {other:?}: check or repair"),
                    ),
                }
            }
            "archive" => {
                self.goto(View::Archive);
                match arg {
                    None => {}
                    Some("run") => self.request(OpRequest::ArchiveRun),
                    Some("verify") => self.archive_action(rest.get(1).copied(), false),
                    Some("restore") => self.archive_action(rest.get(1).copied(), true),
                    Some(other) => self.notify(
                        Level::Error,
                        format!("archive: unknown {other:?}: run, verify P or restore P"),
                    ),
                }
            }
            "validate" => self.request(OpRequest::Validate),
            "remirror" => match arg {
                Some("stale") | Some("--all-stale") => self.request(OpRequest::RemirrorStale),
                Some(id) => match id.parse::<i64>() {
                    Ok(n) => self.request(OpRequest::Remirror {
                        id: n,
                        key: format!("file {n}"),
                    }),
                    Err(_) => self.notify(Level::Error, "usage: remirror stale|ID"),
                },
                None => self.notify(Level::Error, "usage: remirror stale|ID"),
            },
            "purge" => {
                let args = line.trim_start().strip_prefix(name).unwrap_or_default();
                match purge_command::parse(args, self.unused_days) {
                    Ok(req) => self.request(OpRequest::Purge(req)),
                    Err(e) => self.notify(Level::Error, e),
                }
            }
            "cancel" => match arg.map(|a| a.trim_start_matches('#').parse::<u64>()) {
                None => self.cancel_job(None),
                Some(Ok(id)) => self.cancel_job(Some(id)),
                Some(Err(_)) => self.notify(Level::Error, "usage: cancel [JOB]"),
            },
            "refresh" => self.load_view(),
            "help" | "h" => self.mode = Mode::Help { scroll: 0 },
            other => self.notify(
                Level::Error,
                format!("unknown command {other:?} (Tab completes, ? lists commands)"),
            ),
        }
    }

    fn on_key(&mut self, key: KeyEvent) {
        if key.kind == crossterm::event::KeyEventKind::Release {
            return;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            match self.mode {
                // Ctrl-C on the question, or while jobs are being cancelled: quit now.
                Mode::QuitConfirm { .. } => self.confirm_quit(),
                _ if self.quitting.is_some() => self.quit = true,
                _ => self.request_quit(),
            }
            return;
        }
        // Nothing is bound to Alt: a terminal reports Esc followed quickly by a key as Alt+key,
        // and the operator meant the two keys.
        if key.modifiers.contains(KeyModifiers::ALT) {
            self.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
            self.on_key(KeyEvent::new(key.code, key.modifiers - KeyModifiers::ALT));
            return;
        }
        let filter = matches!(self.mode, Mode::Filter { .. });
        match &mut self.mode {
            Mode::Normal => {}
            Mode::Command { input } | Mode::Filter { input } => {
                match key.code {
                    KeyCode::Esc => self.mode = Mode::Normal,
                    KeyCode::Enter => {
                        let line = input.trim().to_string();
                        self.mode = Mode::Normal;
                        if filter {
                            if line != self.files.filter {
                                self.files.filter = line;
                                self.restart_files();
                            }
                        } else {
                            self.run_line(&line);
                        }
                    }
                    KeyCode::Tab if !filter => *input = keymap::tab_complete(input),
                    KeyCode::Backspace if input.is_empty() => self.mode = Mode::Normal,
                    KeyCode::Backspace => {
                        input.pop();
                    }
                    KeyCode::Char('u') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                        input.clear()
                    }
                    KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => {
                        input.push(c)
                    }
                    _ => {}
                }
                return;
            }
            Mode::Help { scroll } => {
                match key.code {
                    KeyCode::Up | KeyCode::Char('k') => *scroll = scroll.saturating_sub(1),
                    KeyCode::Down | KeyCode::Char('j') => *scroll = scroll.saturating_add(1),
                    KeyCode::PageUp => *scroll = scroll.saturating_sub(10),
                    KeyCode::PageDown | KeyCode::Char(' ') => *scroll = scroll.saturating_add(10),
                    KeyCode::Esc | KeyCode::Char('q') | KeyCode::Char('?') | KeyCode::Enter => {
                        self.mode = Mode::Normal
                    }
                    _ => {}
                }
                return;
            }
            Mode::Confirm { op, .. } => {
                match key.code {
                    KeyCode::Enter | KeyCode::Char('y') | KeyCode::Char('Y') => {
                        let op = op.clone();
                        self.mode = Mode::Normal;
                        self.start_job(op);
                    }
                    KeyCode::Esc | KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Char('q') => {
                        let kind = op.kind();
                        self.mode = Mode::Normal;
                        self.notify(
                            Level::Info,
                            format!("{kind}: cancelled, nothing was changed"),
                        );
                    }
                    _ => {}
                }
                return;
            }
            Mode::Message { .. } => {
                if matches!(key.code, KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q')) {
                    self.mode = Mode::Normal;
                }
                return;
            }
            Mode::QuitConfirm { .. } => {
                match key.code {
                    KeyCode::Enter | KeyCode::Char('y') | KeyCode::Char('Y') => self.confirm_quit(),
                    KeyCode::Esc | KeyCode::Char('n') | KeyCode::Char('N') => {
                        self.mode = Mode::Normal
                    }
                    _ => {}
                }
                return;
            }
        }
        if let Some(cmd) = keymap::lookup(&self.scopes(), &key) {
            self.exec(cmd);
        } else if key.code == KeyCode::Esc {
            self.notifications.clear();
        }
    }

    fn on_mouse(&mut self, m: MouseEvent) {
        if self.mode != Mode::Normal {
            return;
        }
        match m.kind {
            MouseEventKind::ScrollDown => self.move_selection(3),
            MouseEventKind::ScrollUp => self.move_selection(-3),
            MouseEventKind::Down(MouseButton::Left) => {
                if m.row == 0 {
                    if let Some(v) = tab_at(m.column, self.width) {
                        self.goto(v);
                    }
                    return;
                }
                // Rows start below the tab bar, the block's border and the header.
                let row = m.row as i64 - 3;
                if row < 0 {
                    return;
                }
                match self.view {
                    View::Files if self.files.detail.is_none() => {
                        let target = self.files.top + row;
                        if row < self.files_visible_rows() && self.files.row(target).is_some() {
                            self.files.selected = target;
                        }
                    }
                    View::Catalog => {
                        let target = self.catalog.top + row;
                        if row < self.files_visible_rows() && self.catalog.row(target).is_some() {
                            self.catalog.selected = target;
                        }
                    }
                    View::Replication => {
                        let (first, visible) = super::view::replication_rows(self.height);
                        let n = self
                            .replication
                            .status
                            .as_ref()
                            .map_or(0, |s| s.troubled.len());
                        if n == 0 || m.row < first || usize::from(m.row - first) >= visible {
                            return;
                        }
                        // The table scrolls to keep the selection on its last row at most.
                        let sel = self.replication.selected.min(n - 1);
                        let target = sel.saturating_sub(visible - 1) + usize::from(m.row - first);
                        if target < n {
                            self.replication.selected = target;
                        }
                    }
                    View::History => {
                        let target = self.history.top + row as usize;
                        if (row as usize) < self.history_visible_rows()
                            && target < self.history.rows.len()
                        {
                            self.history.selected = target;
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// The sort orders `s`/`S` cycle through, in column order.
pub const SORTS: [FileSort; 7] = [
    FileSort::Id,
    FileSort::Name,
    FileSort::Size,
    FileSort::Downloads,
    FileSort::BytesServed,
    FileSort::LastDownloaded,
    FileSort::Stale,
];

pub fn sort_label(s: FileSort) -> &'static str {
    match s {
        FileSort::Id => "id",
        FileSort::Name => "key",
        FileSort::Size => "size ↓",
        FileSort::Downloads => "downloads ↓",
        FileSort::BytesServed => "served ↓",
        FileSort::LastDownloaded => "last downloaded ↓",
        FileSort::Stale => "stale first",
    }
}

fn parse_sort(s: &str) -> Option<FileSort> {
    Some(match s {
        "downloads" => FileSort::Downloads,
        "size" => FileSort::Size,
        "last-downloaded" | "last" => FileSort::LastDownloaded,
        "name" | "key" => FileSort::Name,
        "id" => FileSort::Id,
        "served" | "bytes-served" => FileSort::BytesServed,
        "stale" => FileSort::Stale,
        _ => return None,
    })
}

/// The words after `prefetch` (on the `:` line, or passed on by `mirrorctl prefetch`):
/// nothing or `unmirrored` for every unmirrored entry, `top N [WINDOW]`, or catalog ids.
pub fn parse_prefetch(words: &[&str]) -> Result<OpRequest, String> {
    const USAGE: &str = "usage: prefetch [unmirrored] | prefetch ID… | prefetch top N [WINDOW]";
    match words {
        [] | ["unmirrored"] | ["--unmirrored"] | ["all"] => Ok(OpRequest::PrefetchUnmirrored),
        ["top" | "--top", n, window @ ..] => {
            let n = n
                .parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("prefetch top: N must be a positive number; {USAGE}"))?;
            let window_days = match window {
                [] => 7,
                [w] => {
                    let d = crate::config::parse_duration(w)
                        .map_err(|e| format!("prefetch top: window {w:?}: {e}"))?;
                    (d.as_secs().div_ceil(86_400) as i64).max(1)
                }
                _ => return Err(USAGE.into()),
            };
            Ok(OpRequest::PrefetchTop { n, window_days })
        }
        ids => {
            let ids = ids
                .iter()
                .flat_map(|w| w.split(','))
                .filter(|w| !w.is_empty())
                .map(|w| w.parse::<i64>().map_err(|_| USAGE.to_string()))
                .collect::<Result<Vec<i64>, String>>()?;
            let label = match ids.as_slice() {
                [one] => format!("catalog entry {one}"),
                many => format!("{} catalog entries", many.len()),
            };
            Ok(OpRequest::PrefetchIds { ids, label })
        }
    }
}

/// The words after `replication` (on the `:` line, or passed on by `mirrorctl replication`):
/// nothing for the view, `retry failed` or `retry ID…`.
pub fn parse_replication(words: &[&str]) -> Result<Option<OpRequest>, String> {
    const USAGE: &str = "usage: replication [retry failed | retry ID…]";
    match words {
        [] | ["status"] => Ok(None),
        ["retry", "failed" | "--failed"] => Ok(Some(OpRequest::ReplicationRetryFailed)),
        ["retry", ids @ ..] if !ids.is_empty() => {
            let ids = ids
                .iter()
                .flat_map(|w| w.split(','))
                .filter(|w| !w.is_empty() && *w != "--ids")
                .map(|w| w.parse::<i64>().map_err(|_| USAGE.to_string()))
                .collect::<Result<Vec<i64>, String>>()?;
            let label = match ids.as_slice() {
                [] => return Err(USAGE.into()),
                [one] => format!("task {one}"),
                many => format!("{} tasks", many.len()),
            };
            Ok(Some(OpRequest::ReplicationRetry { ids, label }))
        }
        _ => Err(USAGE.into()),
    }
}

fn cycle<T: Copy + PartialEq>(all: &[T], cur: T, step: i64) -> T {
    let n = all.len() as i64;
    let i = all.iter().position(|x| *x == cur).unwrap_or(0) as i64;
    all[((i + step).rem_euclid(n)) as usize]
}

fn note_life(level: Level) -> chrono::TimeDelta {
    chrono::TimeDelta::seconds(match level {
        Level::Info => NOTE_SECS,
        Level::Error => ERROR_NOTE_SECS,
    })
}

/// Rows of the files table on a terminal `height` tall: all but the tab bar, the status
/// line, the block's borders and the header row.
pub fn files_visible_rows(height: u16) -> i64 {
    (height.saturating_sub(5)).max(1) as i64
}

/// The first row to fetch for a viewport at `top`: a quarter page of slack above it.
fn page_start(top: i64, rows: i64) -> i64 {
    let len = page_len(rows);
    (top - (len - rows) / 4).max(0)
}

fn page_len(rows: i64) -> i64 {
    FILES_PAGE.max(rows * 2)
}

/// The tab under column `x` of a tab bar `width` wide (labels as the renderer lays them out).
pub fn tab_at(x: u16, width: u16) -> Option<View> {
    let mut col = super::view::tabs_start(width);
    for v in View::ALL {
        let w = super::view::tab_label(v, width).chars().count() as u16;
        if x >= col && x < col + w {
            return Some(v);
        }
        col += w;
    }
    None
}

/// Applies one action.
pub fn update(app: &mut App, action: Action) {
    match action {
        Action::Key(k) => app.on_key(k),
        Action::Mouse(m) => app.on_mouse(m),
        Action::Resize(w, h) => {
            app.width = w;
            app.height = h;
            match app.view {
                View::Files => app.move_files(0),
                View::Catalog => app.move_catalog(0),
                _ => {}
            }
        }
        Action::Tick(now) => {
            app.now = now;
            app.notifications
                .retain(|n| n.at + note_life(n.level) > now);
            app.quit_when_jobs_ended();
        }
        Action::Refresh => app.refresh(),
        Action::StatsLoaded(r) => {
            app.dashboard.loading = false;
            match r {
                Ok(d) => {
                    if d.stats.window == app.dashboard.window {
                        app.dashboard
                            .storage_baseline
                            .get_or_insert((d.stats.storage_objects, d.stats.storage_bytes));
                        app.dashboard.data = Some(*d);
                        app.dashboard.error = None;
                    }
                }
                Err(e) => {
                    app.notify(Level::Error, format!("stats: {e}"));
                    app.dashboard.error = Some(e);
                }
            }
        }
        Action::FilesLoaded {
            generation,
            offset,
            result,
        } => {
            if generation != app.files.generation {
                return;
            }
            if app.files.pending == Some(offset) {
                app.files.pending = None;
            }
            match result {
                Ok((rows, total)) => {
                    app.files.keep_cursors(offset, &rows);
                    app.files.page = rows;
                    app.files.page_offset = offset;
                    app.files.error = None;
                    if let Some(t) = total {
                        app.files.total = Some(t);
                    }
                    app.move_files(0);
                }
                Err(e) => {
                    app.notify(Level::Error, format!("files: {e}"));
                    app.files.error = Some(e);
                }
            }
        }
        Action::FileLoaded(r) => {
            if let Some(d) = &mut app.files.detail {
                match r {
                    Ok(rep) => {
                        d.report = Some(rep);
                        d.error = None;
                    }
                    Err(e) => d.error = Some(e),
                }
            }
        }
        Action::DriftItems(items) => {
            app.drift_items = items;
            app.drift_top = 0;
        }
        Action::ArchiveLoaded(r) => {
            app.archive.loading = false;
            match r {
                Ok(rows) => {
                    app.archive.selected = app.archive.selected.min(rows.len().saturating_sub(1));
                    app.archive.partitions = rows;
                    app.archive.error = None;
                }
                Err(e) => {
                    app.notify(Level::Error, format!("archive: {e}"));
                    app.archive.error = Some(e);
                }
            }
        }
        Action::CatalogLoaded {
            generation,
            offset,
            limit,
            result,
        } => {
            if generation != app.catalog.generation {
                return;
            }
            if app.catalog.pending == Some(offset) {
                app.catalog.pending = None;
            }
            match result {
                Ok(list) => app.catalog_loaded(offset, limit, list),
                Err(e) => {
                    app.notify(Level::Error, format!("catalog: {e}"));
                    app.catalog.error = Some(e);
                }
            }
        }
        Action::FleetLoaded(r) => {
            app.fleet.loading = false;
            match r {
                Ok(report) => {
                    app.fleet.report = Some(report);
                    app.fleet.error = None;
                }
                Err(e) => {
                    app.notify(Level::Error, format!("fleet: {e}"));
                    app.fleet.error = Some(e);
                }
            }
        }
        Action::ReplicationLoaded(r) => {
            app.replication.loading = false;
            match r {
                Ok(status) => app.replication.loaded(status),
                Err(e) => {
                    // The samples taken behind another view fail quietly; on screen it says so.
                    if app.view == View::Replication {
                        app.notify(Level::Error, format!("replication: {e}"));
                    }
                    app.replication.error = Some(e);
                }
            }
        }
        Action::HistoryLoaded(r) => {
            app.history.loading = false;
            match r {
                Ok(rows) => {
                    app.history.rows = rows;
                    app.history.error = None;
                    app.move_history(0);
                }
                Err(e) => {
                    app.notify(Level::Error, format!("history: {e}"));
                    app.history.error = Some(e);
                }
            }
        }
        Action::Presigned(r) => match r {
            Ok(p) => {
                app.mode = Mode::Message {
                    title: format!("Presigned URL for {}", p.key),
                    body: format!(
                        "{}\n\nexpires {}",
                        p.url,
                        super::widgets::clock(p.expires_at, app.timezone, false)
                    ),
                }
            }
            Err(e) => app.notify(Level::Error, format!("presign: {e}")),
        },
        Action::PreviewLoaded { op, result } => match result {
            Ok(preview) => app.mode = Mode::Confirm { op, preview },
            Err(e) => app.notify(Level::Error, e),
        },
        Action::Job { id, event } => {
            // Events that arrive after the job's end (another task forwards them) are stale.
            if let Some(j) = app
                .jobs
                .iter_mut()
                .find(|j| j.id == id && !matches!(j.state, JobState::Finished { .. }))
            {
                match event {
                    JobEvent::Started { .. } => j.msg = "running".into(),
                    JobEvent::Progress { done, total, msg } => {
                        j.done = done;
                        j.total = total;
                        j.msg = msg;
                    }
                    JobEvent::Finished { msg, .. } => j.msg = msg,
                }
            }
        }
        Action::JobDone { id, result } => {
            let now = app.now;
            let note = app.jobs.iter_mut().find(|j| j.id == id).map(|j| {
                let (ok, msg) = match result {
                    Ok(m) => (true, m),
                    Err(e) => (false, e),
                };
                let note = format!("job #{} {}: {}", j.id, j.op.kind(), msg);
                j.state = JobState::Finished { ok, msg, at: now };
                (ok, note, j.op.kind())
            });
            if let Some((ok, note, kind)) = note {
                app.notify(if ok { Level::Info } else { Level::Error }, note);
                // Even a failed or cancelled prefetch may have mirrored some entries.
                if kind == "prefetch" {
                    app.catalog.invalidate();
                }
                // The Dashboard's and the Drift and Archive views' "last run" come from the
                // audit log, which now has this job's row.
                if matches!(
                    app.view,
                    View::Dashboard
                        | View::Catalog
                        | View::Replication
                        | View::Drift
                        | View::Archive
                ) {
                    app.load_view();
                } else {
                    app.effects.push(Effect::LoadStats(app.dashboard.window));
                }
            }
            app.quit_when_jobs_ended();
        }
    }
}
