//! Rendering: a pure function of `App` onto a frame. No I/O, no state changes; what is on
//! screen is decided by the state alone, which is what lets the snapshot tests pin it.

use chrono::{DateTime, Utc};
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{
    Axis, Block, Borders, Cell, Chart, Clear, Dataset, GraphType, LegendPosition, Paragraph, Row,
    Sparkline, SparklineBar, Table, Wrap,
};
use ratatui::Frame;

use crate::engine::ops::check::{CheckReport, Status};
use crate::engine::ops::costs::money;
use crate::engine::ops::drift::PairStatus;
use crate::engine::ops::fleet::ReplicaStatus;
use crate::engine::ops::replication::ReplicationStatus;
use crate::engine::ops::stats::Window;
use crate::headless::{bytes, count, percent};

use super::app::{sort_label, App, JobState, Level, Mode, View};
use super::keymap::{self, Scope, BINDINGS, COMMANDS};
use super::ops;
use super::theme::Theme;
use super::widgets::{ago, bar, centered, clock, duration, truncate_left, truncate_right};

const BRAND: &str = " mirrorctl ";
/// Room kept at the right of the tab bar for the read-only badge.
const BADGE_ROOM: u16 = 4;

/// A tab as the bar at `width` shows it: the view's number and title, or its short title
/// when every full title and the read-only badge do not fit.
pub fn tab_label(v: View, width: u16) -> String {
    let n = View::ALL.iter().position(|x| *x == v).unwrap_or(0) + 1;
    let name = if full_tabs_width() + BADGE_ROOM <= width {
        v.title()
    } else {
        v.short_title()
    };
    format!(" {n} {name} ")
}

fn full_tabs_width() -> u16 {
    View::ALL
        .iter()
        .map(|v| format!(" 0 {} ", v.title()).chars().count() as u16)
        .sum()
}

/// Column where the first tab starts: after " mirrorctl " when the name, every full tab and
/// the read-only badge fit in `width`, else at 0 (the tabs matter more than the name).
pub fn tabs_start(width: u16) -> u16 {
    let brand = BRAND.len() as u16;
    if width >= brand + full_tabs_width() + BADGE_ROOM {
        brand
    } else {
        0
    }
}

pub fn render(app: &App, f: &mut Frame) {
    let area = f.area();
    let [tabs, body, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(area);
    render_tabs(app, f, tabs);
    match app.view {
        View::Dashboard => render_dashboard(app, f, body),
        View::Files => match &app.files.detail {
            Some(_) => render_file_detail(app, f, body),
            None => render_files(app, f, body),
        },
        View::Jobs => render_jobs(app, f, body),
        View::Drift => render_operation_view(app, f, body, View::Drift),
        View::Archive => render_operation_view(app, f, body, View::Archive),
        View::History => render_history(app, f, body),
        View::Catalog => render_catalog(app, f, body),
        View::Fleet => render_fleet(app, f, body),
        View::Replication => render_replication(app, f, body),
    }
    render_status(app, f, status);
    match &app.mode {
        Mode::Help { scroll } => render_help(app, f, area, *scroll),
        Mode::Confirm { op, preview } => render_confirm(app, f, area, op, preview),
        Mode::Message { title, body } => render_message(app, f, area, title, body),
        Mode::QuitConfirm { jobs } => render_quit_confirm(app, f, area, jobs),
        Mode::Normal | Mode::Command { .. } | Mode::Filter { .. } => {}
    }
    if app.view == View::History && app.history.open && app.mode == Mode::Normal {
        render_history_detail(app, f, area);
    }
}

fn block<'a>(t: &Theme, title: impl Into<Line<'a>>) -> Block<'a> {
    Block::default()
        .borders(Borders::ALL)
        .border_style(t.border)
        .title(title.into().style(t.title))
}

fn render_tabs(app: &App, f: &mut Frame, area: Rect) {
    let t = &app.theme;
    let mut spans = Vec::new();
    if tabs_start(area.width) > 0 {
        spans.push(Span::styled(BRAND, t.title));
    }
    for v in View::ALL {
        let style = if v == app.view {
            t.title.add_modifier(Modifier::REVERSED)
        } else {
            t.text
        };
        spans.push(Span::styled(tab_label(v, area.width), style));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
    if app.read_only {
        let badge = " RO ";
        let w = badge.len() as u16;
        if area.width > w {
            let r = Rect {
                x: area.x + area.width - w,
                width: w,
                ..area
            };
            f.render_widget(
                Paragraph::new(Span::styled(badge, t.warn.add_modifier(Modifier::REVERSED))),
                r,
            );
        }
    }
}

fn render_status(app: &App, f: &mut Frame, area: Rect) {
    let t = &app.theme;
    let line = match &app.mode {
        Mode::Command { input } => {
            let mut spans = vec![
                Span::styled(":", t.key),
                Span::styled(input.clone(), t.text),
                Span::styled("▏", t.key),
            ];
            let cands = keymap::complete(input);
            if !input.is_empty() && cands.len() > 1 {
                spans.push(Span::styled(format!("   {}", cands.join("  ")), t.dim));
            } else if let Some(spec) = COMMANDS.iter().find(|c| {
                input.trim_start().starts_with(c.name) || c.name.starts_with(input.trim())
            }) {
                if !input.is_empty() {
                    spans.push(Span::styled(
                        format!("   {} — {}", spec.usage, spec.help),
                        t.dim,
                    ));
                }
            }
            Line::from(spans)
        }
        Mode::Filter { input } => Line::from(vec![
            Span::styled("filter keys: /", t.key),
            Span::styled(input.clone(), t.text),
            Span::styled("▏", t.key),
            Span::styled("   Enter apply · Esc cancel · empty clears", t.dim),
        ]),
        _ => match app.notifications.last() {
            Some(n) => {
                let (tag, style) = match n.level {
                    Level::Info => ("info", t.good),
                    Level::Error => ("error", t.bad),
                };
                Line::from(vec![
                    Span::styled(format!(" {tag} "), style.add_modifier(Modifier::REVERSED)),
                    Span::styled(format!(" {}", n.text), style),
                ])
            }
            None => {
                // Whole hints only: the ones that do not fit are in `?`.
                let mut spans = Vec::new();
                let mut used = 0usize;
                for (k, h) in keymap::hints(&app.scopes()) {
                    let text = format!(" {h}  ");
                    let w = k.chars().count() + text.chars().count();
                    if used + w > area.width as usize + 2 {
                        break;
                    }
                    used += w;
                    spans.push(Span::styled(k, t.key));
                    spans.push(Span::styled(text, t.dim));
                }
                Line::from(spans)
            }
        },
    };
    f.render_widget(Paragraph::new(line), area);
    if let Mode::Command { input } | Mode::Filter { input } = &app.mode {
        let prefix = if matches!(app.mode, Mode::Command { .. }) {
            1
        } else {
            14
        };
        let x = area.x + (prefix + input.chars().count() as u16).min(area.width.saturating_sub(1));
        f.set_cursor_position((x, area.y));
    }
}

// ---- Dashboard -----------------------------------------------------------------------------

fn window_tabs(t: &Theme, cur: Window) -> Vec<Span<'static>> {
    let mut spans = vec![Span::styled(" window ", t.dim)];
    for w in Window::ALL {
        let s = if w == cur {
            t.title.add_modifier(Modifier::REVERSED)
        } else {
            t.dim
        };
        spans.push(Span::styled(format!(" {} ", w.label()), s));
    }
    spans.push(Span::styled(" [w] ", t.key));
    spans
}

fn kv<'a>(t: &Theme, k: &'a str, v: Vec<Span<'a>>) -> Line<'a> {
    let mut spans = vec![Span::styled(format!("{k:<12}"), t.dim)];
    spans.extend(v);
    Line::from(spans)
}

/// The status of a configured `[alerts]` check, `None` when it is not configured.
fn alert(check: Option<&CheckReport>, name: &str) -> Option<Status> {
    check.and_then(|c| c.status_of(name))
}

/// A breached threshold's colour; `ok` when the check passes.
fn alert_style(t: &Theme, status: Status, ok: Style) -> Style {
    match status {
        Status::Ok => ok,
        Status::Warning => t.warn,
        Status::Critical => t.bad,
    }
}

fn render_dashboard(app: &App, f: &mut Frame, area: Rect) {
    let t = &app.theme;
    let d = &app.dashboard;
    let check = d.data.as_ref().and_then(|d| d.check.as_ref());
    let costs = check.and_then(|c| c.costs.as_ref());
    let mut title = vec![Span::styled(" Health ", t.title)];
    title.extend(window_tabs(t, d.window));
    if d.loading && d.data.is_none() {
        title.push(Span::styled(" loading… ", t.dim));
    }
    for (status, word) in [(Status::Critical, "critical"), (Status::Warning, "warning")] {
        let n = check.map_or(0, |c| c.breaches().filter(|b| b.status == status).count());
        if n > 0 {
            title.push(Span::styled(
                format!(" {n} {word} "),
                alert_style(t, status, t.text).add_modifier(Modifier::REVERSED),
            ));
        }
    }
    // The cost lines, one in each column, when [costs] sets a price.
    let top_h = if costs.is_some() { 9 } else { 8 };
    let [top, chart_area] =
        Layout::vertical([Constraint::Length(top_h), Constraint::Min(3)]).areas(area);
    let outer = block(t, Line::from(title));
    let inner = outer.inner(top);
    f.render_widget(outer, top);
    let Some(data) = &d.data else {
        let msg = match &d.error {
            Some(e) => Line::from(Span::styled(format!("cannot load stats: {e}"), t.bad)),
            None => Line::from(Span::styled("loading…", t.dim)),
        };
        f.render_widget(Paragraph::new(msg).wrap(Wrap { trim: true }), inner);
        return;
    };
    let s = &data.stats;
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(inner);
    let rate_style = match (alert(check, "hit_rate"), s.hit_rate) {
        (_, None) => t.dim,
        (Some(status), _) => alert_style(t, status, t.good),
        (None, Some(r)) if r >= 0.9 => t.good,
        (None, Some(r)) if r >= 0.7 => t.warn,
        (None, Some(_)) => t.bad,
    };
    let bar_w = (left.width as usize).saturating_sub(20).clamp(4, 30);
    let latest = s
        .series
        .iter()
        .rev()
        .find(|p| p.hits + p.misses > 0)
        .map(|p| p.hits as f64 / (p.hits + p.misses) as f64);
    let err_style = match (alert(check, "error_rate"), s.error_rate) {
        (Some(status), _) => alert_style(t, status, t.text),
        (None, Some(r)) if r >= 0.05 => t.bad,
        (None, Some(r)) if r >= 0.01 => t.warn,
        _ => t.text,
    };
    let mut lines = vec![
        kv(
            t,
            "Hit rate",
            vec![
                Span::styled(
                    format!("{:>6} ", percent(s.hit_rate)),
                    rate_style.add_modifier(Modifier::BOLD),
                ),
                Span::styled(bar(s.hit_rate.unwrap_or(0.0), bar_w), rate_style),
            ],
        ),
        kv(
            t,
            "  latest",
            vec![
                Span::styled(format!("{:>6} ", percent(latest)), t.text),
                Span::styled("(newest bucket)", t.dim),
            ],
        ),
        kv(t, "Requests", vec![Span::styled(count(s.requests), t.text)]),
        kv(
            t,
            "Hits/misses",
            vec![
                Span::styled(count(s.hits), t.hits),
                Span::styled(" / ", t.dim),
                Span::styled(count(s.misses), t.misses),
            ],
        ),
        kv(
            t,
            "Saved",
            vec![
                Span::styled(bytes(s.bandwidth_saved_bytes), t.good),
                Span::styled(format!(" of {}", bytes(s.bytes_served)), t.dim),
            ],
        ),
    ];
    if let Some(c) = costs {
        lines.push(kv(
            t,
            "  worth",
            match c.saved {
                Some(v) => vec![
                    // Requests can cost more than the egress they save.
                    Span::styled(money(v, &c.currency), if v < 0.0 { t.warn } else { t.good }),
                    Span::styled(" egress − GETs", t.dim),
                ],
                None => vec![Span::styled("- (no costs.egress_per_gb)", t.dim)],
            },
        ));
    }
    lines.extend([kv(
        t,
        "Errors",
        vec![Span::styled(
            format!("{} ({})", count(s.errors), percent(s.error_rate)),
            err_style,
        )],
    )]);
    f.render_widget(Paragraph::new(lines), left);
    let growth = d
        .storage_baseline
        .map(|(o, b)| {
            let (dobj, dbytes) = (s.storage_objects - o, s.storage_bytes - b);
            let sign = if dbytes < 0 { "-" } else { "+" };
            format!(
                " {}{} obj {}{}",
                if dobj < 0 { "" } else { "+" },
                count(dobj),
                sign,
                bytes(dbytes.abs())
            )
        })
        .unwrap_or_default();
    let stale_style = if s.stale_files > 0 { t.warn } else { t.good };
    let when = |at: Option<DateTime<Utc>>| {
        Span::styled(ago(app.now, at), if at.is_some() { t.text } else { t.dim })
    };
    let validated = match alert(check, "validation_age") {
        Some(status @ (Status::Warning | Status::Critical)) => Span::styled(
            ago(app.now, data.last_validate),
            alert_style(t, status, t.text),
        ),
        _ => when(data.last_validate),
    };
    let mut lines = vec![
        kv(
            t,
            "Storage",
            vec![Span::styled(
                format!("{} objects", count(s.storage_objects)),
                t.text,
            )],
        ),
        kv(
            t,
            "",
            vec![
                Span::styled(bytes(s.storage_bytes), t.text),
                Span::styled(growth, t.dim),
            ],
        ),
    ];
    if let Some(c) = costs {
        lines.push(kv(
            t,
            "Cost/month",
            match c.storage_per_month {
                Some(v) => {
                    let ok = t.text;
                    let style = alert(check, "storage_cost").map_or(ok, |s| alert_style(t, s, ok));
                    vec![Span::styled(money(v, &c.currency), style)]
                }
                None => vec![Span::styled("- (no costs.storage_per_gb_month)", t.dim)],
            },
        ));
    }
    lines.extend([
        kv(
            t,
            "Stale",
            vec![Span::styled(
                format!("{} files", count(s.stale_files)),
                stale_style,
            )],
        ),
        kv(t, "Validated", vec![validated]),
        kv(t, "Drift check", vec![when(data.last_drift)]),
        kv(t, "Archived", vec![when(data.last_archive)]),
    ]);
    f.render_widget(Paragraph::new(lines), right);
    render_series(app, f, chart_area);
}

fn render_series(app: &App, f: &mut Frame, area: Rect) {
    let t = &app.theme;
    let s = match &app.dashboard.data {
        Some(d) => &d.stats,
        None => return,
    };
    let unit = if matches!(s.window, Window::Month | Window::All) {
        "day"
    } else {
        "hour"
    };
    let title = Line::from(vec![
        Span::styled(format!(" Hits vs misses per {unit} "), t.title),
        Span::styled("━ hits ", t.hits),
        Span::styled("━ misses ", t.misses),
    ]);
    let b = block(t, title);
    if s.series.is_empty() {
        f.render_widget(
            Paragraph::new(Span::styled("no downloads in this window", t.dim)).block(b),
            area,
        );
        return;
    }
    let hits: Vec<(f64, f64)> = s
        .series
        .iter()
        .enumerate()
        .map(|(i, p)| (i as f64, p.hits as f64))
        .collect();
    let misses: Vec<(f64, f64)> = s
        .series
        .iter()
        .enumerate()
        .map(|(i, p)| (i as f64, p.misses as f64))
        .collect();
    let max = s
        .series
        .iter()
        .map(|p| p.hits.max(p.misses))
        .max()
        .unwrap_or(0)
        .max(1);
    let fmt = if unit == "day" {
        "%m-%d"
    } else {
        "%m-%d %H:00"
    };
    let first = s
        .series
        .first()
        .map(|p| p.at.format(fmt).to_string())
        .unwrap_or_default();
    let last = s
        .series
        .last()
        .map(|p| p.at.format(fmt).to_string())
        .unwrap_or_default();
    let n = s.series.len().max(2) as f64 - 1.0;
    let chart = Chart::new(vec![
        Dataset::default()
            .name("hits")
            .marker(t.hits_marker)
            .graph_type(GraphType::Line)
            .style(t.hits)
            .data(&hits),
        Dataset::default()
            .name("misses")
            .marker(t.misses_marker)
            .graph_type(GraphType::Line)
            .style(t.misses)
            .data(&misses),
    ])
    .block(b)
    .legend_position(Some(LegendPosition::TopLeft))
    .hidden_legend_constraints((Constraint::Length(0), Constraint::Length(0)))
    .x_axis(
        Axis::default()
            .style(t.dim)
            .bounds([0.0, n])
            .labels([Span::styled(first, t.dim), Span::styled(last, t.dim)]),
    )
    .y_axis(
        Axis::default()
            .style(t.dim)
            .bounds([0.0, max as f64])
            .labels([Span::styled("0", t.dim), Span::styled(count(max), t.dim)]),
    );
    f.render_widget(chart, area);
}

// ---- Files ---------------------------------------------------------------------------------

fn render_files(app: &App, f: &mut Frame, area: Rect) {
    let t = &app.theme;
    let fs = &app.files;
    let total = fs.total.map(count).unwrap_or_else(|| "…".into());
    let mut title = vec![
        Span::styled(" Files ", t.title),
        Span::styled(format!("{total} "), t.text),
        Span::styled("· sort ", t.dim),
        Span::styled(sort_label(fs.sort), t.text),
    ];
    if !fs.filter.is_empty() {
        title.push(Span::styled(" · filter ", t.dim));
        title.push(Span::styled(format!("\"{}\"", fs.filter), t.warn));
    }
    if fs.pending.is_some() {
        title.push(Span::styled(" · loading…", t.dim));
    }
    title.push(Span::raw(" "));
    let position = match fs.total {
        Some(0) => " no files match ".to_string(),
        Some(n) => format!(" {} of {} ", count(fs.selected + 1), count(n)),
        None => String::new(),
    };
    let b = block(t, Line::from(title))
        .title_bottom(Line::from(Span::styled(position, t.dim)).right_aligned());
    let narrow = area.width < 100;
    let date_fmt = if narrow {
        "%m-%d %H:%M"
    } else {
        "%Y-%m-%d %H:%M"
    };
    let widths = [
        Constraint::Length(6),
        Constraint::Fill(1),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(if narrow { 11 } else { 16 }),
        Constraint::Length(6),
    ];
    // The key column gets what the fixed columns leave; keys are cut to fit from the left.
    let fixed: u16 = 6 + 10 + 10 + 10 + if narrow { 11 } else { 16 } + 6 + 6;
    let key_w = area.width.saturating_sub(2 + fixed).max(4) as usize;
    let names = [
        "ID",
        "KEY",
        "SIZE",
        "DOWNLOADS",
        "SERVED",
        if narrow { "LAST DL" } else { "LAST DOWNLOADED" },
        "STALE",
    ];
    let sorted = super::app::SORTS.iter().position(|s| *s == fs.sort);
    let header = Row::new(names.iter().enumerate().map(|(i, n)| {
        if Some(i) == sorted {
            Cell::from(Span::styled(
                format!("{n}▼"),
                t.header.add_modifier(Modifier::REVERSED),
            ))
        } else {
            Cell::from(*n)
        }
    }))
    .style(t.header);
    let visible = app.files_visible_rows();
    let end = match fs.total {
        Some(n) => (fs.top + visible).min(n),
        None => fs.top + visible.min(fs.page.len() as i64),
    };
    let mut rows = Vec::with_capacity(visible as usize);
    for i in fs.top..end {
        let style = if i == fs.selected { t.selected } else { t.text };
        let row = match fs.row(i) {
            Some(r) => Row::new(vec![
                Cell::from(Line::from(r.id.to_string()).right_aligned()),
                Cell::from(truncate_left(&r.key, key_w)),
                Cell::from(Line::from(bytes(r.size)).right_aligned()),
                Cell::from(Line::from(count(r.downloads)).right_aligned()),
                Cell::from(Line::from(bytes(r.bytes_served)).right_aligned()),
                Cell::from(
                    r.last_downloaded_at
                        .map(|d| d.format(date_fmt).to_string())
                        .unwrap_or_else(|| "never".into()),
                ),
                Cell::from(if r.is_stale {
                    Span::styled("stale", t.warn)
                } else {
                    Span::raw("")
                }),
            ]),
            None => Row::new(vec![Cell::from(""), Cell::from(Span::styled("…", t.dim))]),
        };
        rows.push(row.style(style));
    }
    let table = Table::new(rows, widths)
        .header(header)
        .block(b)
        .column_spacing(1);
    f.render_widget(table, area);
    if fs.total == Some(0) || (fs.total.is_none() && fs.page.is_empty() && fs.pending.is_none()) {
        let inner = area.inner(ratatui::layout::Margin::new(2, 3));
        let msg = match &fs.error {
            Some(e) => Span::styled(format!("cannot load files: {e}"), t.bad),
            None if fs.filter.is_empty() => Span::styled("no mirrored files", t.dim),
            None => Span::styled("no keys match the filter (Esc clears it)", t.dim),
        };
        f.render_widget(Paragraph::new(msg).wrap(Wrap { trim: true }), inner);
    }
}

// ---- Catalog -------------------------------------------------------------------------------

fn render_catalog(app: &App, f: &mut Frame, area: Rect) {
    let t = &app.theme;
    let c = &app.catalog;
    let mut title = vec![Span::styled(" Catalog ", t.title)];
    match (c.total, c.unmirrored) {
        (Some(total), Some(unmirrored)) => {
            title.push(Span::styled(format!("{} entries, ", count(total)), t.text));
            title.push(Span::styled(
                format!("{} not mirrored ", count(unmirrored)),
                if unmirrored > 0 { t.warn } else { t.good },
            ));
        }
        _ => title.push(Span::styled("… ", t.text)),
    }
    if c.pending.is_some() {
        title.push(Span::styled("· loading… ", t.dim));
    }
    let position = match c.len {
        Some(0) => String::new(),
        Some(n) => format!(" {} of {} ", count(c.selected + 1), count(n)),
        None => String::new(),
    };
    let b = block(t, Line::from(title))
        .title_bottom(Line::from(Span::styled(position, t.dim)).right_aligned());
    let narrow = area.width < 100;
    let date_fmt = if narrow {
        "%m-%d %H:%M"
    } else {
        "%Y-%m-%d %H:%M"
    };
    // Wider: which mirrored file is stale; wider still, the source and remote id.
    let (date_w, state_w) = if narrow { (11, 12) } else { (16, 18) };
    let source_w = if area.width >= 120 { 18 } else { 0 };
    let mut widths = vec![Constraint::Length(6), Constraint::Fill(1)];
    let mut names = vec!["ID", "KEY"];
    if source_w > 0 {
        widths.push(Constraint::Length(source_w));
        names.push("SOURCE/REMOTE ID");
    }
    widths.extend([
        Constraint::Length(10),
        Constraint::Length(date_w),
        Constraint::Length(state_w),
    ]);
    names.extend([
        "SIZE",
        if narrow { "UPDATED" } else { "ORIGIN UPDATED" },
        "STATE",
    ]);
    let gaps = widths.len() as u16 - 1;
    let fixed: u16 = 6 + source_w + 10 + date_w + state_w + gaps;
    let key_w = area.width.saturating_sub(2 + fixed).max(4) as usize;
    let header = Row::new(names).style(t.header);
    let visible = app.files_visible_rows();
    let end = match c.len {
        Some(n) => (c.top + visible).min(n),
        None => c.top + visible.min(c.page.len() as i64),
    };
    let mut rows = Vec::with_capacity(visible as usize);
    for i in c.top..end {
        let style = if i == c.selected { t.selected } else { t.text };
        let row = match c.row(i) {
            Some(e) => {
                let state = match (e.mirrored_id, e.mirrored_stale) {
                    (Some(id), Some(true)) if !narrow => format!("stale (file {id})"),
                    (Some(_), Some(true)) => "stale".into(),
                    (Some(_), _) => "mirrored".into(),
                    (None, _) => "not mirrored".into(),
                };
                let state_style = if e.mirrored_id.is_some() {
                    t.warn
                } else {
                    t.dim
                };
                let mut cells = vec![
                    Cell::from(Line::from(e.id.to_string()).right_aligned()),
                    Cell::from(truncate_left(e.key.as_deref().unwrap_or(&e.url), key_w)),
                ];
                if source_w > 0 {
                    cells.push(Cell::from(truncate_right(
                        &format!("{}/{}", e.source, e.remote_id),
                        source_w as usize,
                    )));
                }
                cells.extend([
                    Cell::from(
                        Line::from(e.size.map(bytes).unwrap_or_else(|| "?".into())).right_aligned(),
                    ),
                    Cell::from(e.updated_at.format(date_fmt).to_string()),
                    Cell::from(Span::styled(state, state_style)),
                ]);
                Row::new(cells)
            }
            None => Row::new(vec![Cell::from(""), Cell::from(Span::styled("…", t.dim))]),
        };
        rows.push(row.style(style));
    }
    f.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(b)
            .column_spacing(1),
        area,
    );
    let nothing = c.len == Some(0) || (c.len.is_none() && c.pending.is_none());
    if nothing {
        let inner = area.inner(ratatui::layout::Margin::new(2, 3));
        let msg = match &c.error {
            Some(e) => vec![Line::from(Span::styled(
                format!("cannot load the catalog: {e}"),
                t.bad,
            ))],
            None => vec![
                Line::from(Span::styled(
                    "Every catalog entry has a fresh mirrored copy.",
                    t.good,
                )),
                Line::from(""),
                Line::from(Span::styled(
                    "New entries come from `mirrorctl catalog import` or `catalog sync`.",
                    t.dim,
                )),
            ],
        };
        f.render_widget(Paragraph::new(msg).wrap(Wrap { trim: true }), inner);
    }
}

// ---- Fleet ---------------------------------------------------------------------------------

fn render_fleet(app: &App, f: &mut Frame, area: Rect) {
    let t = &app.theme;
    let fl = &app.fleet;
    let mut title = vec![Span::styled(" Fleet ", t.title)];
    if let Some(r) = &fl.report {
        let n = &r.totals;
        title.push(Span::styled(format!("{} replicas: ", n.replicas), t.text));
        title.push(Span::styled(format!("{} up", n.up), t.good));
        title.push(Span::styled(", ", t.text));
        title.push(Span::styled(
            format!("{} gone", n.gone),
            if n.gone > 0 { t.bad } else { t.dim },
        ));
        title.push(Span::styled(format!(", {} stopped ", n.stopped), t.dim));
    }
    if fl.loading {
        title.push(Span::styled("· loading… ", t.dim));
    }
    let mut b = block(t, Line::from(title));
    let Some(r) = fl.report.as_ref().filter(|r| !r.replicas.is_empty()) else {
        let msg = match &fl.error {
            Some(e) => vec![Line::from(Span::styled(
                format!("cannot load the fleet: {e}"),
                t.bad,
            ))],
            None if fl.report.is_none() => vec![Line::from(Span::styled("loading…", t.dim))],
            None => vec![
                Line::from(Span::styled(
                    "No serve replica has written a heartbeat to this database.",
                    t.text,
                )),
                Line::from(""),
                Line::from(Span::styled(
                    "Each `mirrorctl serve` beats every 2 s; one silent for 6 s without a clean \
                     shutdown is gone.",
                    t.dim,
                )),
            ],
        };
        f.render_widget(Paragraph::new(msg).block(b).wrap(Wrap { trim: true }), area);
        return;
    };
    let n = &r.totals;
    b = b.title_bottom(
        Line::from(Span::styled(
            format!(
                " up: {:.1} req/s · {} fills · {} queued · * exports the DB-wide metrics ",
                n.requests_per_s,
                count(n.fills_in_flight),
                count(n.queue_depth)
            ),
            t.dim,
        ))
        .right_aligned(),
    );
    let wide = area.width >= 100;
    let date_fmt = if wide {
        "%Y-%m-%d %H:%M"
    } else {
        "%m-%d %H:%M"
    };
    let mut widths = vec![Constraint::Fill(1), Constraint::Length(7)];
    let mut names = vec!["INSTANCE", "STATUS"];
    if wide {
        widths.extend([Constraint::Length(10), Constraint::Length(16)]);
        names.extend(["VERSION", "HOST"]);
    }
    widths.extend([
        Constraint::Length(if wide { 16 } else { 11 }),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(5),
        Constraint::Length(5),
    ]);
    names.extend(["STARTED", "HEARTBEAT", "REQ/S", "FILLS", "QUEUE"]);
    let rows: Vec<Row> = r
        .replicas
        .iter()
        .map(|x| {
            let (status_style, row_style) = match x.status {
                ReplicaStatus::Up => (t.good, t.text),
                ReplicaStatus::Gone => (t.bad, t.warn),
                ReplicaStatus::Stopped => (t.dim, t.dim),
            };
            let id = if x.exports_db_metrics {
                format!("{} *", x.instance_id)
            } else {
                x.instance_id.clone()
            };
            let right = |s: String| Cell::from(Line::from(s).right_aligned());
            let mut cells = vec![
                Cell::from(id),
                Cell::from(Span::styled(x.status.label(), status_style)),
            ];
            if wide {
                cells.push(Cell::from(x.version.clone()));
                cells.push(Cell::from(truncate_right(&x.hostname, 16)));
            }
            cells.extend([
                Cell::from(x.started_at.format(date_fmt).to_string()),
                right(ago(app.now, Some(x.heartbeat_at))),
                right(format!("{:.1}", x.requests_per_s)),
                right(count(x.fills_in_flight)),
                right(count(x.queue_depth)),
            ]);
            Row::new(cells).style(row_style)
        })
        .collect();
    f.render_widget(
        Table::new(rows, widths)
            .header(Row::new(names).style(t.header))
            .block(b)
            .column_spacing(1),
        area,
    );
}

// ---- Replication ---------------------------------------------------------------------------

/// The figures' block: four lines and its borders.
const REPLICATION_FIGURES_H: u16 = 6;
/// The selected task's path and last error under the table.
const REPLICATION_DETAIL_H: u16 = 2;

/// The trends' height in a view `body_h` rows tall.
fn replication_trend_h(body_h: u16) -> u16 {
    if body_h >= 30 {
        9
    } else {
        5
    }
}

/// The screen row of the first troubled task on a terminal `height` rows tall, and how many
/// tasks fit (the layout `render_replication` draws, for mouse clicks).
pub fn replication_rows(height: u16) -> (u16, usize) {
    let body_h = height.saturating_sub(2);
    let above = REPLICATION_FIGURES_H + replication_trend_h(body_h);
    // The tab bar, then the table's border and header row.
    let first = 1 + above + 2;
    let list_h = body_h.saturating_sub(above + 2 + REPLICATION_DETAIL_H);
    (first, list_h.saturating_sub(1).max(1) as usize)
}

fn render_replication(app: &App, f: &mut Frame, area: Rect) {
    let t = &app.theme;
    let r = &app.replication;
    let mut title = vec![Span::styled(" Replication ", t.title)];
    if let Some(s) = &r.status {
        title.push(Span::styled(
            format!("{} pending", count(s.pending)),
            t.text,
        ));
        title.push(Span::styled(", ", t.text));
        title.push(Span::styled(
            format!("{} failed ", count(s.failed)),
            if s.failed > 0 { t.bad } else { t.dim },
        ));
        if r.error.is_some() {
            title.push(Span::styled("· the last refresh failed ", t.bad));
        }
    }
    let b = block(t, Line::from(title));
    let status = match &r.status {
        Some(s) if !r.nothing_replicated() => s,
        _ => {
            let msg = match (&r.error, &r.status) {
                (Some(e), _) => vec![Line::from(Span::styled(
                    format!("cannot load the replication status: {e}"),
                    t.bad,
                ))],
                (None, None) => vec![Line::from(Span::styled("loading…", t.dim))],
                (None, Some(_)) => vec![
                    Line::from(Span::styled(
                        "No replication tasks: writes through the S3 front (serve.s3_listen) \
                         appear here.",
                        t.text,
                    )),
                    Line::from(""),
                    Line::from(Span::styled(
                        "Each write the front records is a task that serve's replication \
                         workers copy to [buckets.backup]; this view shows the backlog, the lag \
                         and the failures, and retries them. Nothing is pending and nothing \
                         failed.",
                        t.dim,
                    )),
                    Line::from(Span::styled(
                        "The same figures: mirrorctl --headless replication status",
                        t.dim,
                    )),
                ],
            };
            f.render_widget(Paragraph::new(msg).block(b).wrap(Wrap { trim: true }), area);
            return;
        }
    };
    let [figures, trends, table] = Layout::vertical([
        Constraint::Length(REPLICATION_FIGURES_H),
        Constraint::Length(replication_trend_h(area.height)),
        Constraint::Min(4),
    ])
    .areas(area);
    let inner = b.inner(figures);
    f.render_widget(b, figures);
    render_replication_figures(app, f, inner, status);
    let [backlog, lag] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(trends);
    render_trend(
        app,
        f,
        backlog,
        "Backlog",
        |x| x.pending.max(0) as u64,
        |v| count(v as i64),
        t.title,
    );
    let lag_style = if status.lag_s > 0.0 { t.warn } else { t.good };
    render_trend(
        app,
        f,
        lag,
        "Lag",
        |x| x.lag_s.max(0.0).round() as u64,
        |v| duration(v as f64),
        lag_style,
    );
    render_troubled(app, f, table, status);
}

fn render_replication_figures(app: &App, f: &mut Frame, area: Rect, s: &ReplicationStatus) {
    let t = &app.theme;
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let left_lines = vec![
        kv(
            t,
            "Pending",
            vec![
                Span::styled(tasks(s.pending), t.text),
                Span::styled(format!(" · {}", bytes(s.pending_bytes)), t.dim),
            ],
        ),
        kv(
            t,
            "Copying",
            vec![
                Span::styled(count(s.running), t.text),
                Span::styled(" now", t.dim),
            ],
        ),
        kv(
            t,
            "In flight",
            vec![
                Span::styled(count(s.in_flight), t.text),
                Span::styled(" writes not yet recorded", t.dim),
            ],
        ),
        kv(
            t,
            "Failed",
            vec![Span::styled(
                tasks(s.failed),
                if s.failed > 0 { t.bad } else { t.good },
            )],
        ),
    ];
    let oldest = match s.oldest_pending_at {
        Some(at) => Span::styled(clock(at, app.timezone, true), t.text),
        None => Span::styled("-", t.dim),
    };
    let eta = match s.eta_s {
        Some(_) if s.pending == 0 => Span::styled("nothing pending", t.good),
        Some(e) => Span::styled(duration(e), t.text),
        None => Span::styled("none: nothing drained in the last minute", t.warn),
    };
    let right_lines = vec![
        kv(
            t,
            "Lag",
            vec![
                Span::styled(
                    duration(s.lag_s),
                    if s.lag_s > 0.0 { t.warn } else { t.good },
                ),
                Span::styled(" behind main", t.dim),
            ],
        ),
        kv(t, "Oldest task", vec![oldest]),
        kv(
            t,
            "Drain",
            vec![
                Span::styled(format!("{:.1} tasks/s", s.drain_per_s), t.text),
                Span::styled(" (last minute)", t.dim),
            ],
        ),
        kv(t, "ETA", vec![eta]),
    ];
    f.render_widget(Paragraph::new(left_lines), left);
    f.render_widget(Paragraph::new(right_lines), right);
}

fn tasks(n: i64) -> String {
    format!("{} {}", count(n), if n == 1 { "task" } else { "tasks" })
}

/// One figure over the samples of this session: a sparkline of the newest that fit, the
/// latest value and the highest in the title, the time they span at the bottom.
fn render_trend(
    app: &App,
    f: &mut Frame,
    area: Rect,
    name: &str,
    value: impl Fn(&super::app::ReplicationSample) -> u64,
    label: impl Fn(u64) -> String,
    style: Style,
) {
    let t = &app.theme;
    let r = &app.replication;
    let fit = area.width.saturating_sub(2) as usize;
    let skip = r.samples.len().saturating_sub(fit);
    let data: Vec<u64> = r.samples.iter().skip(skip).map(&value).collect();
    let latest = data.last().copied().unwrap_or(0);
    let max = data.iter().copied().max().unwrap_or(0);
    let span = match (r.samples.get(skip), r.samples.back()) {
        (Some(a), Some(b)) => (b.at - a.at).num_milliseconds() as f64 / 1000.0,
        _ => 0.0,
    };
    let b = block(
        t,
        Line::from(vec![
            Span::styled(format!(" {name} "), t.title),
            Span::styled(label(latest), style),
            Span::styled(format!(" · max {} ", label(max)), t.dim),
        ]),
    )
    .title_bottom(
        Line::from(Span::styled(
            format!(" {} samples over {} ", data.len(), duration(span)),
            t.dim,
        ))
        .right_aligned(),
    );
    f.render_widget(
        Sparkline::default()
            .block(b)
            .data(&data)
            .max(max.max(1))
            .style(style),
        area,
    );
}

fn render_troubled(app: &App, f: &mut Frame, area: Rect, s: &ReplicationStatus) {
    let t = &app.theme;
    let failed = s.troubled.iter().filter(|x| x.state == "failed").count();
    let retrying = s.troubled.len() - failed;
    let mut title = vec![
        Span::styled(" Troubled tasks ", t.title),
        Span::styled(
            format!("{failed} failed"),
            if failed > 0 { t.bad } else { t.dim },
        ),
        Span::styled(format!(", {retrying} retrying "), t.dim),
    ];
    if (s.failed as usize) > failed {
        title.push(Span::styled(
            format!("(the latest {} shown) ", s.troubled.len()),
            t.dim,
        ));
    }
    let position = if s.troubled.is_empty() {
        String::new()
    } else {
        format!(" {} of {} ", app.replication.selected + 1, s.troubled.len())
    };
    let b = block(t, Line::from(title))
        .title_bottom(Line::from(Span::styled(position, t.dim)).right_aligned());
    let inner = b.inner(area);
    f.render_widget(b, area);
    if s.troubled.is_empty() {
        f.render_widget(
            Paragraph::new(Span::styled(
                "No task failed, none is waiting to try again.",
                t.good,
            ))
            .wrap(Wrap { trim: true }),
            inner,
        );
        return;
    }
    let [list, detail] =
        Layout::vertical([Constraint::Min(2), Constraint::Length(REPLICATION_DETAIL_H)])
            .areas(inner);
    let wide = area.width >= 100;
    let mut widths = vec![
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(5),
    ];
    let mut names = vec!["ID", "STATE", "TRIES"];
    if wide {
        widths.extend([
            Constraint::Length(6),
            Constraint::Length(10),
            Constraint::Length(8),
            Constraint::Length(8),
        ]);
        names.extend(["OP", "SIZE", "QUEUED", "NEXT TRY"]);
    }
    let fixed: u16 = widths
        .iter()
        .map(|c| match c {
            Constraint::Length(n) => *n + 1,
            _ => 0,
        })
        .sum();
    let rest = list.width.saturating_sub(fixed + 1) as usize;
    let path_w = (rest * 2 / 5).max(4);
    let error_w = rest.saturating_sub(path_w).max(4);
    widths.extend([
        Constraint::Length(path_w as u16),
        Constraint::Length(error_w as u16),
    ]);
    names.extend(["PATH", "LAST ERROR"]);
    let visible = list.height.saturating_sub(1).max(1) as usize;
    let sel = app.replication.selected.min(s.troubled.len() - 1);
    let top = sel.saturating_sub(visible - 1);
    let right = |v: String| Cell::from(Line::from(v).right_aligned());
    let rows: Vec<Row> = s
        .troubled
        .iter()
        .enumerate()
        .skip(top)
        .take(visible)
        .map(|(i, x)| {
            let state_style = if x.state == "failed" { t.bad } else { t.warn };
            let mut cells = vec![
                right(x.id.to_string()),
                Cell::from(Span::styled(x.state.clone(), state_style)),
                right(x.attempts.to_string()),
            ];
            if wide {
                let next = if x.state == "failed" {
                    "-".to_string()
                } else if x.next_attempt_at <= app.now {
                    "due".to_string()
                } else {
                    format!(
                        "in {}",
                        duration((x.next_attempt_at - app.now).num_seconds() as f64)
                    )
                };
                cells.extend([
                    Cell::from(x.op.clone()),
                    right(bytes(x.size)),
                    right(ago(app.now, Some(x.created_at))),
                    right(next),
                ]);
            }
            cells.extend([
                Cell::from(truncate_left(&x.path, path_w)),
                Cell::from(Span::styled(
                    truncate_right(x.last_error.as_deref().unwrap_or("-"), error_w),
                    t.dim,
                )),
            ]);
            let row = Row::new(cells);
            if i == sel {
                row.style(t.selected)
            } else {
                row.style(t.text)
            }
        })
        .collect();
    f.render_widget(
        Table::new(rows, widths)
            .header(Row::new(names).style(t.header))
            .column_spacing(1),
        list,
    );
    if let Some(x) = s.troubled.get(sel) {
        let text = Line::from(vec![
            Span::styled(format!("{} ", x.id), t.key),
            Span::styled(format!("{} ", x.path), t.text),
            Span::styled(x.last_error.clone().unwrap_or_default(), t.dim),
        ]);
        f.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), detail);
    }
}

fn render_file_detail(app: &App, f: &mut Frame, area: Rect) {
    let t = &app.theme;
    let Some(d) = &app.files.detail else { return };
    let Some(r) = &d.report else {
        let msg = match &d.error {
            Some(e) => Span::styled(e.clone(), t.bad),
            None => Span::styled("loading…", t.dim),
        };
        f.render_widget(
            Paragraph::new(msg)
                .block(block(t, format!(" File {} ", d.id_or_key)))
                .wrap(Wrap { trim: true }),
            area,
        );
        return;
    };
    let file = &r.file;
    let [info, chart] = Layout::vertical([Constraint::Length(13), Constraint::Min(3)]).areas(area);
    let title = format!(" File {} ", file.id);
    let b = block(t, title);
    let inner_w = info.width.saturating_sub(2) as usize;
    let col = (inner_w.saturating_sub(12)) / 2;
    let cell = |s: String, style: Style| {
        Span::styled(
            format!("{:<col$}", truncate_right(&s, col.saturating_sub(1))),
            style,
        )
    };
    let opt = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    let size_differs = r.origin.size.is_some_and(|o| o != file.size);
    // Origin ETags are the origin's, not S3 MD5s: unequal is normal, so they are not flagged.
    let etag_differs = false;
    let diff = |bad: bool| if bad { t.bad } else { t.text };
    let stale = if file.is_stale {
        Span::styled(
            format!(
                "yes: {}",
                file.stale_reason.as_deref().unwrap_or("no reason recorded")
            ),
            t.warn,
        )
    } else {
        Span::styled("no", t.good)
    };
    let lines = vec![
        kv(
            t,
            "Key",
            vec![Span::styled(
                truncate_left(&file.key, inner_w.saturating_sub(12)),
                t.text,
            )],
        ),
        kv(t, "Bucket", vec![Span::styled(file.bucket.clone(), t.text)]),
        kv(
            t,
            "",
            vec![
                cell("Mirror".into(), t.header),
                cell("Origin (recorded)".into(), t.header),
            ],
        ),
        kv(
            t,
            "Size",
            vec![
                cell(
                    format!("{} ({})", bytes(file.size), file.size),
                    diff(size_differs),
                ),
                cell(
                    r.origin
                        .size
                        .map(|s| format!("{} ({s})", bytes(s)))
                        .unwrap_or_else(|| "?".into()),
                    diff(size_differs),
                ),
            ],
        ),
        kv(
            t,
            "ETag",
            vec![
                cell(opt(&file.etag), diff(etag_differs)),
                cell(opt(&r.origin.etag), diff(etag_differs)),
            ],
        ),
        kv(
            t,
            "Updated",
            vec![
                cell(clock(file.mirrored_at, app.timezone, false), t.text),
                cell(clock(r.origin.updated_at, app.timezone, false), t.text),
            ],
        ),
        kv(
            t,
            "SHA-256",
            vec![Span::styled(
                truncate_right(&opt(&file.sha256), inner_w.saturating_sub(12)),
                t.text,
            )],
        ),
        kv(
            t,
            "Validated",
            vec![Span::styled(ago(app.now, file.last_validated_at), t.text)],
        ),
        kv(
            t,
            "Downloads",
            vec![Span::styled(
                format!(
                    "{} · {} served · last {}",
                    count(file.downloads),
                    bytes(file.bytes_served),
                    ago(app.now, file.last_downloaded_at)
                ),
                t.text,
            )],
        ),
        kv(t, "Stale", vec![stale]),
        kv(
            t,
            "Actions",
            vec![
                Span::styled("p", t.key),
                Span::styled(" presign  ", t.dim),
                Span::styled("m", t.key),
                Span::styled(" remirror  ", t.dim),
                Span::styled("Esc", t.key),
                Span::styled(" back", t.dim),
            ],
        ),
    ];
    f.render_widget(Paragraph::new(lines).block(b), info);
    let per_day = &r.downloads_per_day;
    let max = per_day.iter().map(|d| d.downloads).max().unwrap_or(0);
    let total: i64 = per_day.iter().map(|d| d.downloads).sum();
    let span = match (per_day.first(), per_day.last()) {
        (Some(a), Some(b)) => format!("{} – {}", a.day, b.day),
        _ => "no downloads in 30 days".into(),
    };
    let mut title = vec![
        Span::styled(" Downloads per day ", t.title),
        Span::styled(
            format!("{span} · total {} · max {}/day ", count(total), count(max)),
            t.dim,
        ),
    ];
    // Days of archived months come from their Parquet archive on S3: drawn in another colour.
    let archived_days = per_day.iter().filter(|d| d.from_archive).count();
    if archived_days > 0 {
        title.push(Span::styled(
            format!("· {archived_days} day(s) from archive "),
            t.warn,
        ));
    }
    if !r.archive_unavailable.is_empty() {
        title.push(Span::styled(
            format!(
                "· {} archived month(s) unreadable ",
                r.archive_unavailable.len()
            ),
            t.bad,
        ));
    }
    let title = Line::from(title);
    // One bar per day of the last 30 (days without downloads are zero), widened to fill.
    let days: Vec<(u64, bool)> = (0..30)
        .rev()
        .map(|back| {
            let day = (app.now - chrono::TimeDelta::days(back))
                .format("%Y-%m-%d")
                .to_string();
            per_day
                .iter()
                .find(|d| d.day == day)
                .map(|d| (d.downloads.max(0) as u64, d.from_archive))
                .unwrap_or((0, false))
        })
        .collect();
    let cols = (chart.width.saturating_sub(2) as usize).max(days.len());
    let data: Vec<SparklineBar> = (0..cols)
        .map(|c| {
            let (n, archived) = days
                .get(c * days.len() / cols)
                .copied()
                .unwrap_or((0, false));
            let bar = SparklineBar::from(n);
            if archived {
                bar.style(Some(t.warn))
            } else {
                bar
            }
        })
        .collect();
    f.render_widget(
        Sparkline::default()
            .block(block(t, title))
            .data(data)
            .style(t.hits),
        chart,
    );
}

// ---- Jobs ----------------------------------------------------------------------------------

fn render_jobs(app: &App, f: &mut Frame, area: Rect) {
    let t = &app.theme;
    let running = app
        .jobs
        .iter()
        .filter(|j| matches!(j.state, JobState::Running | JobState::Cancelling))
        .count();
    let b = block(
        t,
        format!(
            " Jobs · {running} running · {} this session ",
            app.jobs.len()
        ),
    );
    if app.jobs.is_empty() {
        let text = vec![
            Line::from(Span::styled(
                "No operations started in this session.",
                t.text,
            )),
            Line::from(""),
            Line::from(vec![
                Span::styled("Start one with ", t.dim),
                Span::styled(":validate", t.key),
                Span::styled(", ", t.dim),
                Span::styled(":purge stale", t.key),
                Span::styled(", ", t.dim),
                Span::styled(":drift check", t.key),
                Span::styled(" or ", t.dim),
                Span::styled(":archive run", t.key),
                Span::styled(".", t.dim),
            ]),
            Line::from(Span::styled(
                "The audit log of every operation is under 6 History.",
                t.dim,
            )),
        ];
        f.render_widget(
            Paragraph::new(text).block(b).wrap(Wrap { trim: true }),
            area,
        );
        return;
    }
    let inner_w = area.width.saturating_sub(2) as usize;
    // The head (id, kind, state) takes 26 columns and the figures about 42; the bar gets the rest.
    let bar_w = inner_w.saturating_sub(26 + 42).clamp(6, 40);
    let mut lines = Vec::new();
    for (i, j) in app.jobs.iter().enumerate() {
        let elapsed = match &j.state {
            JobState::Finished { at, .. } => {
                (*at - j.started_at).num_milliseconds() as f64 / 1000.0
            }
            _ => (app.now - j.started_at).num_milliseconds() as f64 / 1000.0,
        };
        let (state, style) = match &j.state {
            JobState::Running => ("running", t.text),
            JobState::Cancelling => ("cancelling", t.warn),
            JobState::Finished { ok: true, .. } => ("done", t.good),
            JobState::Finished { ok: false, .. } => ("failed", t.bad),
        };
        let ratio = match (j.total, &j.state) {
            (_, JobState::Finished { ok: true, .. }) => 1.0,
            (Some(total), _) if total > 0 => j.done as f64 / total as f64,
            _ => 0.0,
        };
        let rate = if elapsed > 0.0 {
            j.done as f64 / elapsed
        } else {
            0.0
        };
        let eta = match (j.total, &j.state) {
            (Some(total), JobState::Running) if rate > 0.0 && total > j.done => {
                format!("ETA {}", duration((total - j.done) as f64 / rate))
            }
            _ => String::new(),
        };
        let progress = match j.total {
            Some(total) => format!("{}/{}", count(j.done as i64), count(total as i64)),
            None => count(j.done as i64),
        };
        let msg = match &j.state {
            JobState::Finished { msg, .. } => msg.clone(),
            _ => j.msg.clone(),
        };
        let head = format!("#{:<3} {:<9} {:<10} ", j.id, j.op.kind(), state);
        let stats = format!(
            " {progress:>11} {:>4.0}% {:>6}/s {:<9} {}",
            ratio * 100.0,
            format!("{rate:.0}"),
            eta,
            duration(elapsed)
        );
        let mut line = Line::from(vec![
            Span::styled(head, style),
            Span::styled(bar(ratio, bar_w), style),
            Span::styled(stats, t.text),
        ]);
        if i == app.jobs_selected {
            line = line.style(t.selected);
        }
        lines.push(line);
        lines.push(Line::from(Span::styled(
            format!("     {}", truncate_right(&msg, inner_w.saturating_sub(5))),
            t.dim,
        )));
    }
    if let Some(j) = app.jobs.get(app.jobs_selected) {
        lines.push(Line::from(""));
        lines.push(Line::from(vec![
            Span::styled("Selected: ", t.dim),
            Span::styled(j.op.title(), t.text),
        ]));
        lines.push(Line::from(vec![
            Span::styled("Headless: ", t.dim),
            Span::styled(j.op.headless_command(), t.text),
        ]));
    }
    f.render_widget(Paragraph::new(lines).block(b), area);
}

// ---- Drift and Archive ---------------------------------------------------------------------

/// "Last run:  2026-12-07 14:05 UTC (5m ago) · found_problems", or "never".
fn last_run_line<'a>(app: &App, last: Option<&crate::engine::model::OperationRecord>) -> Line<'a> {
    let t = &app.theme;
    let mut spans = vec![Span::styled("Last run:  ", t.dim)];
    match last.and_then(|op| op.finished_at.map(|at| (op, at))) {
        Some((op, at)) => {
            spans.push(Span::styled(
                format!(
                    "{} ({})",
                    clock(at, app.timezone, false),
                    ago(app.now, Some(at))
                ),
                t.text,
            ));
            spans.push(Span::styled(" · ", t.dim));
            spans.push(Span::styled(op.status.clone(), status_style(t, &op.status)));
        }
        None => spans.push(Span::styled("never", t.dim)),
    }
    Line::from(spans)
}

/// An audit summary as "name: value" lines: numbers and short strings, nested one level.
fn summary_lines(summary: Option<&serde_json::Value>) -> Vec<String> {
    let mut out = Vec::new();
    let Some(serde_json::Value::Object(map)) = summary else {
        return out;
    };
    for (k, v) in map {
        match v {
            serde_json::Value::Object(inner) => {
                let parts: Vec<String> = inner
                    .iter()
                    .filter(|(_, v)| v.is_number() || v.is_boolean())
                    .map(|(ik, iv)| format!("{} {iv}", ik.replace('_', " ")))
                    .collect();
                if !parts.is_empty() {
                    out.push(format!("{}: {}", k.replace('_', " "), parts.join(", ")));
                }
            }
            serde_json::Value::Number(_) | serde_json::Value::Bool(_) => {
                out.push(format!("{}: {v}", k.replace('_', " ")))
            }
            serde_json::Value::String(s) if s.len() <= 120 => {
                out.push(format!("{}: {s}", k.replace('_', " ")))
            }
            _ => {}
        }
    }
    out
}

fn render_operation_view(app: &App, f: &mut Frame, area: Rect, v: View) {
    let t = &app.theme;
    let (kind, what, command, keys, last) = match v {
        View::Drift => (
            "drift",
            "Compares the main bucket, the backup bucket and the inventory; a repair copies what the backup lacks.",
            "mirrorctl --headless drift",
            "c check · R repair · ↑↓ scroll the keys",
            app.dashboard
                .data
                .as_ref()
                .and_then(|d| d.latest_drift_run.as_ref()),
        ),
        _ => (
            "archive",
            "Exports old months of download events to Parquet on S3, verifies them, then drops the rows.",
            "mirrorctl --headless archive list",
            "a archive old partitions · ↑↓ select · v verify · R restore",
            app.dashboard
                .data
                .as_ref()
                .and_then(|d| d.latest_archive_run.as_ref()),
        ),
    };
    let mut text = vec![
        Line::from(Span::styled(what, t.text)),
        Line::from(""),
        Line::from(vec![
            Span::styled("Keys:      ", t.dim),
            Span::styled(keys, t.key),
        ]),
        Line::from(vec![
            Span::styled("Headless:  ", t.dim),
            Span::styled(command, t.text),
        ]),
        last_run_line(app, last),
        Line::from(""),
    ];
    match app.jobs.iter().rev().find(|j| j.op.kind() == kind) {
        Some(j) => {
            let (state, style, msg) = match &j.state {
                JobState::Running => ("running", t.text, j.msg.clone()),
                JobState::Cancelling => ("cancelling", t.warn, j.msg.clone()),
                JobState::Finished { ok: true, msg, .. } => ("finished", t.good, msg.clone()),
                JobState::Finished { ok: false, msg, .. } => ("failed", t.bad, msg.clone()),
            };
            text.push(Line::from(vec![
                Span::styled(format!("Job #{} ", j.id), t.header),
                Span::styled(state, style),
                Span::styled(format!(" · {}", j.op.title()), t.dim),
            ]));
            for part in msg.split([',', ';']) {
                text.push(Line::from(Span::styled(
                    format!("  {}", part.trim()),
                    style,
                )));
            }
        }
        None => match last {
            // The latest persisted result: the audit row's summary, after a restart too.
            Some(op) => {
                text.push(Line::from(vec![
                    Span::styled(format!("Latest run #{} ", op.id), t.header),
                    Span::styled(op.status.clone(), status_style(t, &op.status)),
                    Span::styled(
                        format!(" · by {} · from the audit log (6 History)", op.operator),
                        t.dim,
                    ),
                ]));
                for line in summary_lines(op.summary.as_ref()) {
                    text.push(Line::from(Span::styled(format!("  {line}"), t.text)));
                }
            }
            None => text.push(Line::from(Span::styled(
                format!("No {kind} run in the audit log yet."),
                t.dim,
            ))),
        },
    }
    if v == View::Archive {
        text.push(Line::from(""));
        text.extend(partition_lines(app));
    }
    if v == View::Drift && !app.drift_items.is_empty() {
        text.push(Line::from(""));
        // Only what can show: a big drift has many thousands of keys.
        // Borders, the list's own header line, and what is above it.
        let room = (area.height as usize).saturating_sub(text.len() + 3).max(1);
        text.extend(drift_lines(app, room));
    }
    f.render_widget(
        Paragraph::new(text)
            .block(block(t, format!(" {} ", v.title())))
            .wrap(Wrap { trim: true }),
        area,
    );
}

/// The keys the latest drift check found, one per line: what is wrong, the key, and why.
fn drift_lines(app: &App, max: usize) -> Vec<Line<'static>> {
    let t = &app.theme;
    let n = app.drift_items.len();
    let top = app.drift_top.min(n.saturating_sub(1));
    let shown = max.min(n - top);
    let mut lines = vec![Line::from(Span::styled(
        format!(
            "{n} keys disagree, {}–{} shown (↑↓ scroll; all in `mirrorctl --headless drift -o json`):",
            top + 1,
            top + shown
        ),
        t.header,
    ))];
    for item in app.drift_items.iter().skip(top).take(max) {
        // A pair that matches can still disagree with the inventory: say which.
        let what = match (&item.status, &item.inventory_status) {
            (Some(s), _) if !matches!(s, PairStatus::Same) => to_words(&format!("{s:?}")),
            (_, Some(i)) => to_words(&format!("{i:?}")),
            (Some(s), None) => to_words(&format!("{s:?}")),
            (None, None) => "?".into(),
        };
        lines.push(Line::from(vec![
            Span::styled(format!("{what:<20}"), t.warn),
            Span::styled(item.key.clone(), t.text),
            Span::styled(
                item.detail
                    .as_deref()
                    .map(|d| format!("  {d}"))
                    .unwrap_or_default(),
                t.dim,
            ),
        ]));
    }
    lines
}

/// `MissingInBackup` → `missing in backup`.
fn to_words(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// One line per month of download events: rows, size, state and where its archive is.
fn partition_lines(app: &App) -> Vec<Line<'static>> {
    let t = &app.theme;
    let a = &app.archive;
    if let Some(e) = &a.error {
        return vec![Line::from(Span::styled(format!("Partitions: {e}"), t.bad))];
    }
    if a.partitions.is_empty() {
        let msg = if a.loading {
            "Partitions: loading…"
        } else {
            "Partitions: no months with events"
        };
        return vec![Line::from(Span::styled(msg, t.dim))];
    }
    let mut lines = vec![Line::from(Span::styled(
        format!(
            "{:<26}{:>12}  {:>10}  {:<9}{}",
            "PARTITION", "ROWS", "SIZE", "STATE", "OBJECT"
        ),
        t.header,
    ))];
    for (i, p) in a.partitions.iter().enumerate() {
        let state = format!("{:?}", p.state).to_lowercase();
        let style = match state.as_str() {
            "archived" => t.good,
            "restored" | "archiving" => t.warn,
            _ => t.text,
        };
        let name_style = if i == a.selected { t.selected } else { t.text };
        lines.push(Line::from(vec![
            Span::styled(format!("{:<26}", p.partition), name_style),
            // `~`: PostgreSQL's catalog estimate; the view never counts 100M rows per refresh.
            Span::styled(
                format!(
                    "{:>12}",
                    crate::headless::estimated_count(p.rows, p.rows_estimated)
                ),
                t.text,
            ),
            Span::styled(
                format!(
                    "  {:>10}  ",
                    p.bytes
                        .map(crate::headless::bytes)
                        .unwrap_or_else(|| "-".into())
                ),
                t.text,
            ),
            Span::styled(format!("{state:<9}"), style),
            Span::styled(p.object.clone().unwrap_or_default(), t.dim),
        ]));
    }
    lines
}

// ---- History -------------------------------------------------------------------------------

fn status_style(t: &Theme, status: &str) -> Style {
    match status {
        "ok" | "dry_run" => t.good,
        "found_problems" | "partial" | "cancelled" | "interrupted" | "running" => t.warn,
        "failed" => t.bad,
        _ => t.text,
    }
}

/// `key=value` pairs of a summary's scalar fields.
fn summary_line(v: Option<&serde_json::Value>) -> String {
    let Some(serde_json::Value::Object(m)) = v else {
        return String::new();
    };
    m.iter()
        .filter(|(_, v)| !v.is_object() && !v.is_array())
        .map(|(k, v)| format!("{k}={}", v.to_string().trim_matches('"')))
        .collect::<Vec<_>>()
        .join(" ")
}

fn render_history(app: &App, f: &mut Frame, area: Rect) {
    let t = &app.theme;
    let h = &app.history;
    let mut title = vec![
        Span::styled(" History ", t.title),
        Span::styled(
            match h.rows.len() {
                1 => "1 operation ".to_string(),
                n => format!("{n} operations "),
            },
            t.dim,
        ),
    ];
    if h.loading {
        title.push(Span::styled("loading… ", t.dim));
    }
    let b = block(t, Line::from(title));
    if h.rows.is_empty() {
        let msg = match &h.error {
            Some(e) => Span::styled(format!("cannot load history: {e}"), t.bad),
            None if h.loading => Span::styled("loading…", t.dim),
            None => Span::styled("No operations recorded yet.", t.dim),
        };
        f.render_widget(Paragraph::new(msg).block(b).wrap(Wrap { trim: true }), area);
        return;
    }
    let narrow = area.width < 100;
    let widths = [
        Constraint::Length(5),
        Constraint::Length(if narrow { 11 } else { 16 }),
        Constraint::Length(9),
        Constraint::Length(14),
        Constraint::Length(if narrow { 12 } else { 20 }),
        Constraint::Length(7),
        Constraint::Fill(1),
    ];
    let fmt = if narrow {
        "%m-%d %H:%M"
    } else {
        "%Y-%m-%d %H:%M"
    };
    let visible = app.history_visible_rows();
    let rows: Vec<Row> = h
        .rows
        .iter()
        .enumerate()
        .skip(h.top)
        .take(visible)
        .map(|(i, o)| {
            let took = o
                .finished_at
                .map(|f| duration((f - o.started_at).num_milliseconds() as f64 / 1000.0))
                .unwrap_or_else(|| "-".into());
            let row = Row::new(vec![
                Cell::from(Line::from(o.id.to_string()).right_aligned()),
                Cell::from(o.started_at.format(fmt).to_string()),
                Cell::from(o.kind.clone()),
                Cell::from(Span::styled(o.status.clone(), status_style(t, &o.status))),
                Cell::from(o.operator.clone()),
                Cell::from(Line::from(took).right_aligned()),
                Cell::from(summary_line(o.summary.as_ref())),
            ]);
            row.style(if i == h.selected { t.selected } else { t.text })
        })
        .collect();
    let header = Row::new([
        "ID", "STARTED", "KIND", "STATUS", "OPERATOR", "TOOK", "SUMMARY",
    ])
    .style(t.header);
    f.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(b)
            .column_spacing(1),
        area,
    );
}

fn render_history_detail(app: &App, f: &mut Frame, area: Rect) {
    let t = &app.theme;
    let Some(o) = app.history.rows.get(app.history.selected) else {
        return;
    };
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let mut text = vec![
        Line::from(vec![
            Span::styled("status   ", t.dim),
            Span::styled(o.status.clone(), status_style(t, &o.status)),
        ]),
        Line::from(vec![
            Span::styled("operator ", t.dim),
            Span::styled(o.operator.clone(), t.text),
        ]),
        Line::from(vec![
            Span::styled("started  ", t.dim),
            Span::styled(clock(o.started_at, app.timezone, true), t.text),
        ]),
        Line::from(Span::styled("params", t.header)),
    ];
    text.extend(
        pretty(&o.params)
            .lines()
            .map(|l| Line::from(Span::styled(l.to_string(), t.text))),
    );
    text.push(Line::from(Span::styled("summary", t.header)));
    let summary = o.summary.as_ref().map(pretty).unwrap_or_else(|| "-".into());
    text.extend(
        summary
            .lines()
            .map(|l| Line::from(Span::styled(l.to_string(), t.text))),
    );
    let r = centered(
        area,
        area.width.saturating_sub(8).max(20),
        area.height.saturating_sub(4).max(6),
    );
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(text)
            .block(
                block(t, format!(" Operation {} · {} ", o.id, o.kind))
                    .title_bottom(Line::from(Span::styled(" Esc close ", t.dim))),
            )
            .wrap(Wrap { trim: false }),
        r,
    );
}

// ---- Popups --------------------------------------------------------------------------------

/// The help text: every binding by scope, then every `:` command. Generated from the keymap
/// that handles the keys.
pub fn help_lines(t: &Theme) -> Vec<Line<'static>> {
    let scopes = [
        Scope::Global,
        Scope::List,
        Scope::Dashboard,
        Scope::Files,
        Scope::FileDetail,
        Scope::Jobs,
        Scope::Drift,
        Scope::Archive,
        Scope::History,
        Scope::Catalog,
        Scope::Replication,
    ];
    let mut lines = Vec::new();
    for s in scopes {
        lines.push(Line::from(Span::styled(s.label().to_string(), t.header)));
        for b in BINDINGS.iter().filter(|b| b.scope == s) {
            let keys = b
                .keys
                .iter()
                .map(|k| k.label())
                .collect::<Vec<_>>()
                .join(" ");
            lines.push(Line::from(vec![
                Span::styled(format!("  {keys:<16}"), t.key),
                Span::styled(b.help.to_string(), t.text),
            ]));
        }
    }
    lines.push(Line::from(Span::styled(
        "Commands (type : then Tab to complete)",
        t.header,
    )));
    for c in COMMANDS {
        lines.push(Line::from(vec![
            Span::styled(format!("  :{:<30}", c.usage), t.key),
            Span::styled(c.help.to_string(), t.text),
        ]));
    }
    lines
}

fn render_help(app: &App, f: &mut Frame, area: Rect, scroll: u16) {
    let t = &app.theme;
    let r = centered(
        area,
        area.width.saturating_sub(4).min(90),
        area.height.saturating_sub(2),
    );
    let lines = help_lines(t);
    let max_scroll = (lines.len() as u16).saturating_sub(r.height.saturating_sub(2));
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines)
            .block(
                block(t, " Help ").title_bottom(
                    Line::from(Span::styled(" ↑↓ scroll · Esc close ", t.dim))
                        .alignment(Alignment::Right),
                ),
            )
            .scroll((scroll.min(max_scroll), 0)),
        r,
    );
}

fn render_confirm(
    app: &App,
    f: &mut Frame,
    area: Rect,
    op: &ops::OpRequest,
    preview: &ops::Preview,
) {
    let t = &app.theme;
    let w = area.width.saturating_sub(4).min(76);
    let mut text = vec![
        Line::from(Span::styled(
            op.title(),
            t.text.add_modifier(Modifier::BOLD),
        )),
        Line::from(""),
    ];
    for l in &preview.lines {
        text.push(Line::from(Span::styled(l.clone(), t.text)));
    }
    let mut figures = Vec::new();
    if let Some(c) = preview.count {
        figures.push(format!("{} {}", count(c as i64), op.unit()));
    }
    if let Some(b) = preview.bytes {
        figures.push(bytes(b as i64));
    }
    if !figures.is_empty() {
        text.push(Line::from(vec![
            Span::styled("Affects:  ", t.dim),
            Span::styled(figures.join(", "), t.warn),
        ]));
    }
    for (i, l) in preview.price.iter().enumerate() {
        text.push(Line::from(vec![
            Span::styled(if i == 0 { "Price:    " } else { "          " }, t.dim),
            Span::styled(l.clone(), t.warn),
        ]));
    }
    text.push(Line::from(""));
    text.push(Line::from(Span::styled("Same from a script:", t.dim)));
    text.push(Line::from(Span::styled(op.headless_command(), t.text)));
    text.push(Line::from(""));
    text.push(Line::from(vec![
        Span::styled("y", t.key),
        Span::styled("/", t.dim),
        Span::styled("Enter", t.key),
        Span::styled(" confirm    ", t.dim),
        Span::styled("n", t.key),
        Span::styled("/", t.dim),
        Span::styled("Esc", t.key),
        Span::styled(" cancel", t.dim),
    ]));
    // Rows after wrapping: a long key, price or command takes more than one.
    let inner = usize::from(w.saturating_sub(2)).max(1);
    let rows: usize = text.iter().map(|l| l.width().max(1).div_ceil(inner)).sum();
    let h = (rows as u16 + 3).min(area.height);
    let r = centered(area, w, h);
    f.render_widget(Clear, r);
    let style = if op.mutating() { t.warn } else { t.title };
    f.render_widget(
        Paragraph::new(text)
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .border_style(style)
                    .title(Span::styled(
                        format!(" Confirm {} ", op.kind()),
                        style.add_modifier(Modifier::BOLD),
                    )),
            )
            .wrap(Wrap { trim: false }),
        r,
    );
}

fn render_quit_confirm(app: &App, f: &mut Frame, area: Rect, jobs: &[String]) {
    let t = &app.theme;
    let mut lines = vec![Line::from(Span::styled(
        match jobs.len() {
            1 => "1 job is running:".to_string(),
            n => format!("{n} jobs are running:"),
        },
        t.text,
    ))];
    for j in jobs {
        lines.push(Line::from(Span::styled(format!("  {j}"), t.header)));
    }
    lines.push(Line::from(""));
    lines.push(Line::from(Span::styled(
        "Quitting cancels them: each stops between two units of work, its audit row ends \
         `cancelled`, and nothing is left half-written. The app quits once they have ended.",
        t.text,
    )));
    let w = area.width.saturating_sub(4).min(80);
    let h = (jobs.len() as u16 + 9).min(area.height);
    let r = centered(area, w, h);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines)
            .block(
                block(t, " Quit? ").title_bottom(
                    Line::from(vec![
                        Span::styled(" y ", t.key),
                        Span::styled("cancel the jobs and quit  ", t.dim),
                        Span::styled(" n ", t.key),
                        Span::styled("stay ", t.dim),
                    ])
                    .alignment(Alignment::Right),
                ),
            )
            .wrap(Wrap { trim: false }),
        r,
    );
}

fn render_message(app: &App, f: &mut Frame, area: Rect, title: &str, body: &str) {
    let t = &app.theme;
    let w = area.width.saturating_sub(4).min(100);
    let lines = Text::from(body.to_string());
    let h = (lines.height() as u16 + 6).min(area.height);
    let r = centered(area, w, h);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines)
            .style(t.text)
            .block(block(t, format!(" {title} ")).title_bottom(
                Line::from(Span::styled(" Esc close ", t.dim)).alignment(Alignment::Right),
            ))
            .wrap(Wrap { trim: false }),
        r,
    );
}
