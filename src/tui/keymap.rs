//! The keymap and the `:` command table: the one list that both handles keys and generates
//! the `?` help and the hint line, so the two cannot disagree.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::app::View;

/// Where a binding applies. Keys are looked up from the most specific scope outwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Global,
    /// Any view with a list (files, jobs, history, archive partitions, drift keys, catalog,
    /// troubled replication tasks).
    List,
    Dashboard,
    Files,
    FileDetail,
    Jobs,
    Drift,
    Archive,
    History,
    Catalog,
    Fleet,
    Replication,
}

impl Scope {
    pub fn label(self) -> &'static str {
        match self {
            Scope::Global => "Everywhere",
            Scope::List => "Lists",
            Scope::Dashboard => "Dashboard",
            Scope::Files => "Files",
            Scope::FileDetail => "File detail",
            Scope::Jobs => "Jobs",
            Scope::Drift => "Drift",
            Scope::Archive => "Archive",
            Scope::History => "History",
            Scope::Catalog => "Catalog",
            Scope::Fleet => "Fleet",
            Scope::Replication => "Replication",
        }
    }
}

/// What a key asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Quit,
    Help,
    Prompt,
    NextView,
    PrevView,
    Goto(View),
    Refresh,
    Up,
    Down,
    PageUp,
    PageDown,
    Top,
    Bottom,
    Open,
    Back,
    Filter,
    SortNext,
    SortPrev,
    WindowNext,
    WindowPrev,
    CancelJob,
    Presign,
    Remirror,
    Validate,
    DriftCheck,
    DriftRepair,
    ArchiveRun,
    ArchiveVerify,
    ArchiveRestore,
    MirrorNow,
    PrefetchAll,
    RetryTask,
    RetryFailed,
}

/// One key: a code and the modifiers that must be held (Shift is implied by the character).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub code: KeyCode,
    pub ctrl: bool,
}

const fn k(c: char) -> Key {
    Key {
        code: KeyCode::Char(c),
        ctrl: false,
    }
}

const fn code(code: KeyCode) -> Key {
    Key { code, ctrl: false }
}

const fn ctrl(c: char) -> Key {
    Key {
        code: KeyCode::Char(c),
        ctrl: true,
    }
}

impl Key {
    pub fn label(&self) -> String {
        let base = match self.code {
            KeyCode::Char(' ') => "Space".to_string(),
            KeyCode::Char(c) => c.to_string(),
            KeyCode::Enter => "Enter".into(),
            KeyCode::Esc => "Esc".into(),
            KeyCode::Tab => "Tab".into(),
            KeyCode::BackTab => "S-Tab".into(),
            KeyCode::Up => "↑".into(),
            KeyCode::Down => "↓".into(),
            KeyCode::Left => "←".into(),
            KeyCode::Right => "→".into(),
            KeyCode::PageUp => "PgUp".into(),
            KeyCode::PageDown => "PgDn".into(),
            KeyCode::Home => "Home".into(),
            KeyCode::End => "End".into(),
            KeyCode::F(n) => format!("F{n}"),
            other => format!("{other:?}"),
        };
        if self.ctrl {
            format!("C-{base}")
        } else {
            base
        }
    }

    fn matches(&self, e: &KeyEvent) -> bool {
        let ctrl = e.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl != self.ctrl {
            return false;
        }
        match (self.code, e.code) {
            // Terminals differ on whether Shift is reported with an upper-case character.
            (KeyCode::Char(a), KeyCode::Char(b)) => a == b,
            (a, b) => a == b,
        }
    }
}

pub struct Binding {
    pub scope: Scope,
    pub keys: &'static [Key],
    pub command: Command,
    pub help: &'static str,
    /// Shown in the one-line hint bar of its scope.
    pub hint: bool,
}

const fn b(
    scope: Scope,
    keys: &'static [Key],
    command: Command,
    help: &'static str,
    hint: bool,
) -> Binding {
    Binding {
        scope,
        keys,
        command,
        help,
        hint,
    }
}

use Scope as S;

/// Every key binding. Order is the help's order.
pub const BINDINGS: &[Binding] = &[
    b(S::Global, &[k('q'), ctrl('c')], Command::Quit, "quit", true),
    b(
        S::Global,
        &[k('?')],
        Command::Help,
        "help: every key and command",
        true,
    ),
    b(
        S::Global,
        &[k(':')],
        Command::Prompt,
        "command line (Tab completes)",
        true,
    ),
    b(
        S::Global,
        &[code(KeyCode::Tab)],
        Command::NextView,
        "next view",
        false,
    ),
    b(
        S::Global,
        &[code(KeyCode::BackTab)],
        Command::PrevView,
        "previous view",
        false,
    ),
    b(
        S::Global,
        &[k('1')],
        Command::Goto(View::Dashboard),
        "dashboard",
        false,
    ),
    b(
        S::Global,
        &[k('2')],
        Command::Goto(View::Files),
        "files",
        false,
    ),
    b(
        S::Global,
        &[k('3')],
        Command::Goto(View::Jobs),
        "jobs",
        false,
    ),
    b(
        S::Global,
        &[k('4')],
        Command::Goto(View::Drift),
        "drift",
        false,
    ),
    b(
        S::Global,
        &[k('5')],
        Command::Goto(View::Archive),
        "archive",
        false,
    ),
    b(
        S::Global,
        &[k('6')],
        Command::Goto(View::History),
        "history",
        false,
    ),
    b(
        S::Global,
        &[k('7')],
        Command::Goto(View::Catalog),
        "catalog",
        false,
    ),
    b(
        S::Global,
        &[k('8')],
        Command::Goto(View::Fleet),
        "fleet",
        false,
    ),
    b(
        S::Global,
        &[k('9')],
        Command::Goto(View::Replication),
        "replication",
        false,
    ),
    b(
        S::Global,
        &[k('r'), ctrl('r')],
        Command::Refresh,
        "refresh now",
        false,
    ),
    b(
        S::List,
        &[k('k'), code(KeyCode::Up)],
        Command::Up,
        "up",
        false,
    ),
    b(
        S::List,
        &[k('j'), code(KeyCode::Down)],
        Command::Down,
        "down",
        false,
    ),
    b(
        S::List,
        &[code(KeyCode::PageUp), ctrl('b')],
        Command::PageUp,
        "page up",
        false,
    ),
    b(
        S::List,
        &[code(KeyCode::PageDown), ctrl('f'), k(' ')],
        Command::PageDown,
        "page down",
        false,
    ),
    b(
        S::List,
        &[k('g'), code(KeyCode::Home)],
        Command::Top,
        "first row",
        false,
    ),
    b(
        S::List,
        &[k('G'), code(KeyCode::End)],
        Command::Bottom,
        "last row",
        false,
    ),
    b(
        S::Dashboard,
        &[k('w'), code(KeyCode::Right)],
        Command::WindowNext,
        "next window (24h/7d/30d/all)",
        true,
    ),
    b(
        S::Dashboard,
        &[k('W'), code(KeyCode::Left)],
        Command::WindowPrev,
        "previous window",
        false,
    ),
    b(
        S::Dashboard,
        &[k('v')],
        Command::Validate,
        "validate all files",
        true,
    ),
    b(
        S::Files,
        &[code(KeyCode::Enter)],
        Command::Open,
        "file detail",
        true,
    ),
    b(S::Files, &[k('/')], Command::Filter, "filter by key", true),
    b(
        S::Files,
        &[k('s')],
        Command::SortNext,
        "sort by next column",
        true,
    ),
    b(
        S::Files,
        &[k('S')],
        Command::SortPrev,
        "sort by previous column",
        false,
    ),
    b(
        S::Files,
        &[code(KeyCode::Esc)],
        Command::Back,
        "clear the filter",
        false,
    ),
    b(
        S::FileDetail,
        &[code(KeyCode::Esc), code(KeyCode::Backspace)],
        Command::Back,
        "back to the list",
        true,
    ),
    b(
        S::FileDetail,
        &[k('p')],
        Command::Presign,
        "presigned download URL",
        true,
    ),
    b(
        S::FileDetail,
        &[k('m')],
        Command::Remirror,
        "remirror from the origin",
        true,
    ),
    b(
        S::Jobs,
        &[k('c'), code(KeyCode::Delete)],
        Command::CancelJob,
        "cancel the selected job",
        true,
    ),
    b(
        S::Jobs,
        &[k('v')],
        Command::Validate,
        "validate all files",
        true,
    ),
    b(
        S::Drift,
        &[k('c')],
        Command::DriftCheck,
        "check drift",
        true,
    ),
    b(
        S::Drift,
        &[k('R')],
        Command::DriftRepair,
        "repair drift",
        true,
    ),
    b(
        S::Archive,
        &[k('a')],
        Command::ArchiveRun,
        "archive old partitions",
        true,
    ),
    b(
        S::Archive,
        &[k('v')],
        Command::ArchiveVerify,
        "verify the selected archive",
        true,
    ),
    b(
        S::Archive,
        &[k('R')],
        Command::ArchiveRestore,
        "restore the selected partition",
        true,
    ),
    b(
        S::History,
        &[code(KeyCode::Enter)],
        Command::Open,
        "params and summary",
        true,
    ),
    b(
        S::History,
        &[code(KeyCode::Esc)],
        Command::Back,
        "close",
        false,
    ),
    b(
        S::Catalog,
        &[k('m'), code(KeyCode::Enter)],
        Command::MirrorNow,
        "mirror now: prefetch the selected entry",
        true,
    ),
    b(
        S::Catalog,
        &[k('P')],
        Command::PrefetchAll,
        "prefetch all: every entry without a fresh copy",
        true,
    ),
    // `r` refreshes everywhere else; here the view refreshes itself and C-r still works.
    b(
        S::Replication,
        &[k('r')],
        Command::RetryTask,
        "retry the selected task: back in the queue, due now (C-r refreshes here)",
        true,
    ),
    b(
        S::Replication,
        &[k('R')],
        Command::RetryFailed,
        "retry all failed tasks",
        true,
    ),
];

/// The command bound to `e` in the first scope of `scopes` that binds it.
pub fn lookup(scopes: &[Scope], e: &KeyEvent) -> Option<Command> {
    scopes.iter().find_map(|s| {
        BINDINGS
            .iter()
            .filter(|b| b.scope == *s)
            .find(|b| b.keys.iter().any(|k| k.matches(e)))
            .map(|b| b.command)
    })
}

/// `key label` pairs for the hint bar of these scopes.
pub fn hints(scopes: &[Scope]) -> Vec<(String, &'static str)> {
    scopes
        .iter()
        .flat_map(|s| BINDINGS.iter().filter(move |b| b.scope == *s && b.hint))
        .map(|b| (b.keys[0].label(), short_help(b.help)))
        .collect()
}

/// The first words of a help text, for the hint bar.
fn short_help(help: &'static str) -> &'static str {
    help.split([':', '(']).next().unwrap_or(help).trim_end()
}

/// A `:` command: its name, the words that may follow it, and what it does.
pub struct CommandSpec {
    pub name: &'static str,
    pub args: &'static [&'static str],
    pub usage: &'static str,
    pub help: &'static str,
}

const fn c(
    name: &'static str,
    args: &'static [&'static str],
    usage: &'static str,
    help: &'static str,
) -> CommandSpec {
    CommandSpec {
        name,
        args,
        usage,
        help,
    }
}

pub const COMMANDS: &[CommandSpec] = &[
    c(
        "dashboard",
        &["24h", "7d", "30d", "all"],
        "dashboard [WINDOW]",
        "the dashboard (alias: stats)",
    ),
    c(
        "stats",
        &["24h", "7d", "30d", "all"],
        "stats [WINDOW]",
        "the dashboard",
    ),
    c(
        "files",
        &[],
        "files [FILTER]",
        "the per-file table, optionally filtered",
    ),
    c("file", &[], "file ID|KEY", "one file in detail"),
    c("jobs", &[], "jobs", "running and finished operations"),
    c(
        "drift",
        &["check", "repair"],
        "drift [check|repair]",
        "the drift view; start a check or a repair",
    ),
    c(
        "archive",
        &["run", "verify", "restore"],
        "archive [run|verify P|restore P]",
        "the archive view; archive old partitions, verify or restore one",
    ),
    c("history", &[], "history", "the operations audit log"),
    c(
        "catalog",
        &[],
        "catalog",
        "catalog entries without a fresh mirrored copy",
    ),
    c(
        "fleet",
        &[],
        "fleet",
        "the serve replicas on this database: up, gone or stopped",
    ),
    c(
        "replication",
        &["retry"],
        "replication [retry failed|ID…]",
        "the S3 front's replication to the backup; retry failed tasks or these ids",
    ),
    c(
        "prefetch",
        &["top"],
        "prefetch [ID…|top N [WINDOW]]",
        "mirror catalog entries now: every unmirrored one, these ids, or the most downloaded",
    ),
    c(
        "window",
        &["24h", "7d", "30d", "all"],
        "window WINDOW",
        "the dashboard's time window",
    ),
    c(
        "sort",
        &[
            "downloads",
            "size",
            "last-downloaded",
            "name",
            "id",
            "served",
            "stale",
        ],
        "sort COLUMN",
        "sort the files table",
    ),
    c(
        "filter",
        &[],
        "filter [TEXT]",
        "filter files by key (empty clears)",
    ),
    c(
        "validate",
        &[],
        "validate",
        "check every file against origin and mirror",
    ),
    c(
        "remirror",
        &["stale"],
        "remirror stale|ID",
        "fetch files again from the origin",
    ),
    c(
        "purge",
        &["stale", "unused", "max-bytes", "prefix", "match"],
        super::purge_command::USAGE_SHORT,
        "delete objects",
    ),
    c("cancel", &[], "cancel [JOB]", "cancel a running job"),
    c("refresh", &[], "refresh", "reload the current view now"),
    c("help", &[], "help", "this help"),
    c("quit", &[], "quit (or q)", "leave"),
];

/// Completions of a partly typed command line: whole lines that extend `input`.
pub fn complete(input: &str) -> Vec<String> {
    let trimmed = input.trim_start();
    match trimmed.split_once(' ') {
        None => COMMANDS
            .iter()
            .filter(|c| c.name.starts_with(trimmed))
            .map(|c| c.name.to_string())
            .collect(),
        Some((name, rest)) => {
            let rest = rest.trim_start();
            if rest.contains(' ') {
                return Vec::new();
            }
            COMMANDS
                .iter()
                .filter(|c| c.name == name)
                .flat_map(|c| c.args.iter())
                .filter(|a| a.starts_with(rest))
                .map(|a| format!("{name} {a}"))
                .collect()
        }
    }
}

/// What Tab does to the command line: the single completion (plus a space when it is a
/// command that takes words), else the longest common prefix of the candidates.
pub fn tab_complete(input: &str) -> String {
    let cands = complete(input);
    match cands.as_slice() {
        [] => input.to_string(),
        [one] => {
            let takes_args = COMMANDS
                .iter()
                .any(|c| c.name == one && (!c.args.is_empty() || c.usage.contains(' ')));
            if takes_args {
                format!("{one} ")
            } else {
                one.clone()
            }
        }
        many => {
            let first = &many[0];
            let mut len = first.len();
            for c in &many[1..] {
                len = len.min(
                    first
                        .bytes()
                        .zip(c.bytes())
                        .take_while(|(a, b)| a == b)
                        .count(),
                );
            }
            let common = &first[..len];
            if common.len() > input.trim_start().len() {
                common.to_string()
            } else {
                input.to_string()
            }
        }
    }
}
