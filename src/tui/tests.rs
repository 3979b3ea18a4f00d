//! Tests of the TUI: state tests that feed actions (keys, query results, job events) into
//! `update`, and `TestBackend` snapshots of every view at 80×24, 120×40 and 160×48 with every
//! dynamic value (times, counts) fixed by building the state directly.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind};
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::Terminal;

use crate::config::ThemeName;
use crate::engine::db::{CatalogRow, FleetRow, TaskRow};
use crate::engine::jobs::JobEvent;
use crate::engine::model::{
    DailyDownloads, FileDetail, FileRow, FileSort, OperationRecord, SeriesPoint,
};
use crate::engine::ops::archive::{PartitionEntry, PartitionState};
use crate::engine::ops::catalog::CatalogList;
use crate::engine::ops::files::{FileReport, OriginView};
use crate::engine::ops::fleet::FleetReport;
use crate::engine::ops::purge::{PurgeImpact, PurgeReport, PurgeTarget};
use crate::engine::ops::replication::ReplicationStatus;
use crate::engine::ops::stats::{StatsReport, Window};

use super::app::{
    update, Action, App, DashboardData, Effect, JobState, Level, Mode, Options, View,
};
use super::keymap::{self, BINDINGS, COMMANDS};
use super::ops::{self, OpRequest, Preview, PurgeRequest};
use super::view;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 14, 0, 0)
        .single()
        .unwrap_or_default()
}

fn opts(start: Option<&str>, read_only: bool) -> Options {
    Options {
        read_only,
        theme: ThemeName::Dark,
        refresh: Duration::from_secs(5),
        timezone: crate::config::TimeZoneName::Utc,
        start: start.map(str::to_string),
        unused_days: 90,
    }
}

fn app_at(start: Option<&str>, (w, h): (u16, u16)) -> App {
    let mut app = App::new(opts(start, false), now(), (w, h));
    app.effects.clear();
    app
}

fn key(c: char) -> Action {
    Action::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
}

fn code(c: KeyCode) -> Action {
    Action::Key(KeyEvent::new(c, KeyModifiers::NONE))
}

fn typed(app: &mut App, s: &str) {
    for c in s.chars() {
        update(app, key(c));
    }
}

fn stats() -> StatsReport {
    let series = (0..24)
        .map(|h| SeriesPoint {
            at: now() - TimeDelta::hours(23 - h),
            hits: 40 + (h * 7) % 60,
            misses: 3 + h % 5,
            errors: h % 2,
        })
        .collect();
    StatsReport {
        window: Window::Day,
        since: Some(now() - TimeDelta::hours(24)),
        generated_at: now(),
        requests: 1723,
        hits: 1612,
        misses: 104,
        hit_rate: Some(1612.0 / 1716.0),
        bytes_served: 15_278_000,
        bandwidth_saved_bytes: 14_282_000,
        storage_objects: 2100,
        storage_bytes: 16_441_000,
        stale_files: 13,
        errors: 7,
        error_rate: Some(7.0 / 1723.0),
        revalidations: 0,
        archived_months: Vec::new(),
        series,
    }
}

fn dashboard_data() -> DashboardData {
    DashboardData {
        stats: stats(),
        last_validate: Some(now() - TimeDelta::minutes(42)),
        last_drift: None,
        last_archive: Some(now() - TimeDelta::days(3)),
        latest_drift_run: None,
        latest_archive_run: Some(OperationRecord {
            id: 77,
            kind: "archive".into(),
            params: serde_json::json!({ "older_than_months": 3 }),
            operator: "cron@mirror-1".into(),
            started_at: now() - TimeDelta::days(3) - TimeDelta::minutes(2),
            finished_at: Some(now() - TimeDelta::days(3)),
            status: "ok".into(),
            summary: Some(serde_json::json!({ "archived": 2, "rows": 184_233, "dry_run": false })),
        }),
        check: None,
    }
}

/// The dashboard's figures checked against `[alerts]` with `[costs]` prices: the hit rate
/// (93.9 %) under its critical 95 %, the storage cost (16.4 MB at 5,000 a GB: 82.20 USD) over
/// its warning 50, the last validation (42 minutes ago) older than its critical 30 minutes,
/// the error rate (0.4 %) under its 5 %.
fn dashboard_with_alerts() -> DashboardData {
    use crate::config::{AlertsConfig, CostsConfig, HumanDuration};
    use crate::engine::ops::check;
    let mut data = dashboard_data();
    let alerts = AlertsConfig {
        hit_rate_below: Some(0.95),
        error_rate_above: Some(0.05),
        storage_cost_above: Some(100.0),
        warn_storage_cost_above: Some(50.0),
        validation_older_than: Some(HumanDuration(Duration::from_secs(30 * 60))),
        ..Default::default()
    };
    let prices = CostsConfig {
        currency: "USD".into(),
        storage_per_gb_month: Some(5000.0),
        egress_per_gb: Some(90.0),
        per_1000_requests: Some(0.4),
    };
    data.check = Some(check::evaluate(
        &alerts,
        &prices,
        &check::CheckInputs {
            stats: &data.stats,
            last_validate: data.last_validate,
            replication_lag_s: None,
            now: now(),
        },
    ));
    data
}

fn file_row(i: i64) -> FileRow {
    FileRow {
        id: i + 1,
        bucket: "mirror".into(),
        key: format!(
            "mods/{}/{}/textures-v{}.zip",
            4000 + i * 17,
            90000 + i * 31,
            i % 9
        ),
        size: 1000 + i * 997,
        downloads: 50_000 - i * 13,
        bytes_served: (50_000 - i * 13) * (1000 + i * 997),
        last_downloaded_at: if i % 7 == 3 {
            None
        } else {
            Some(now() - TimeDelta::minutes(i * 11))
        },
        is_stale: i % 5 == 2,
    }
}

/// A files view over a million rows with the first page loaded.
fn files_app(size: (u16, u16)) -> App {
    let mut app = app_at(Some("files"), size);
    let generation = app.files.generation;
    update(
        &mut app,
        Action::FilesLoaded {
            generation,
            offset: 0,
            result: Ok(((0..200).map(file_row).collect(), Some(1_000_000))),
        },
    );
    app.effects.clear();
    app
}

fn file_report() -> FileReport {
    let file = FileDetail {
        id: 418,
        bucket: "mirror".into(),
        key: "mods/8383/92919/ui-v7.zip".into(),
        size: 2995,
        downloads: 8996,
        bytes_served: 26_940_000,
        last_downloaded_at: Some(now() - TimeDelta::minutes(48)),
        is_stale: true,
        origin_file_id: 77,
        sha256: Some("85ebda1dc594d8befb9b5e4c2bd3d7226b27b6a15b5296c0178a429332d0df49".into()),
        etag: Some("9843ed7b0d13e0052f22b2577b899c7b".into()),
        mirrored_at: now() - TimeDelta::days(200),
        last_validated_at: Some(now() - TimeDelta::hours(5)),
        stale_reason: Some("origin size 3120 != mirrored 2995".into()),
        deleted_at: None,
        origin_source: "modio".into(),
        origin_remote_id: "92919".into(),
        origin_file_name: "ui-v7.zip".into(),
        origin_url: "http://127.0.0.1:1/files/ui-v7.zip".into(),
        origin_size: Some(3120),
        origin_etag: Some("18ea6456e0d9e9a1-bb3".into()),
        origin_updated_at: now() - TimeDelta::days(2),
        version: 3,
        content_etag: Some("18ea6456e0d9e9a1-bb3".into()),
    };
    FileReport {
        origin: OriginView {
            url: file.origin_url.clone(),
            size: file.origin_size,
            etag: file.origin_etag.clone(),
            updated_at: file.origin_updated_at,
            live: None,
        },
        file,
        mirror_object: None,
        downloads_per_day: (0..30)
            .filter(|d| d % 4 != 1)
            .map(|d| DailyDownloads {
                day: (now() - TimeDelta::days(29 - d))
                    .format("%Y-%m-%d")
                    .to_string(),
                downloads: 10 + (d * 13) % 50,
                bytes: 0,
                from_archive: false,
            })
            .collect(),
        archive_unavailable: Vec::new(),
    }
}

fn operations() -> Vec<OperationRecord> {
    let kinds = [
        ("validate", "ok"),
        ("purge", "dry_run"),
        ("drift", "found_problems"),
        ("archive", "failed"),
    ];
    (0..12)
        .map(|i| {
            let (kind, status) = kinds[i as usize % kinds.len()];
            OperationRecord {
                id: 100 - i,
                kind: kind.into(),
                params: serde_json::json!({ "all": true }),
                operator: "oncall@mirror-1".into(),
                started_at: now() - TimeDelta::hours(i * 3),
                finished_at: Some(now() - TimeDelta::hours(i * 3) + TimeDelta::seconds(4 + i)),
                status: status.into(),
                summary: Some(serde_json::json!({ "checked": 2100 - i, "stale": i })),
            }
        })
        .collect()
}

/// Row `r` of the unmirrored catalog, with id `id`: the first ones stale copies, then new
/// entries never mirrored.
fn catalog_row_with_id(r: i64, id: i64) -> CatalogRow {
    let names = ["textures", "maps", "ui", "models", "sounds"];
    let (mod_id, file_id) = (25_000 + r * 13, 104_700 + r * 7);
    let key = format!(
        "mods/{mod_id}/{file_id}/{}-v1.zip",
        names[r as usize % names.len()]
    );
    let stale = r < 4;
    CatalogRow {
        id,
        source: "http".into(),
        remote_id: format!("{mod_id}-{file_id}"),
        file_name: key.rsplit('/').next().unwrap_or_default().to_string(),
        url: key.clone(),
        size: (r % 11 != 6).then_some(500 + r * 733),
        etag: None,
        key: Some(key),
        updated_at: now() - TimeDelta::minutes(r * 37 + 5),
        deleted_at: None,
        mirrored_id: stale.then_some(id),
        mirrored_stale: stale.then_some(true),
    }
}

fn catalog_row(r: i64) -> CatalogRow {
    catalog_row_with_id(r, if r < 4 { 17 + r * 290 } else { 2097 + r })
}

/// The unmirrored part of a demo-like catalog: 2,140 entries, 53 without a fresh copy.
fn catalog_app(size: (u16, u16)) -> App {
    let mut app = App::new(opts(Some("catalog"), false), now(), size);
    let Some(Effect::LoadCatalog {
        generation,
        offset,
        limit,
        after_id,
    }) = app.effects.pop()
    else {
        panic!(
            "the catalog view did not ask for its rows: {:?}",
            app.effects
        );
    };
    assert_eq!((offset, after_id), (0, 0));
    update(
        &mut app,
        Action::CatalogLoaded {
            generation,
            offset,
            limit,
            result: Ok(CatalogList {
                total: 2140,
                unmirrored: 53,
                entries: (0..53).map(catalog_row).collect(),
            }),
        },
    );
    app.effects.clear();
    app
}

/// Answers the catalog queries queued in `app` as a database of `n` unmirrored entries would
/// (row `r` has id `3r + 1`), until it asks for no more; returns how many it asked.
fn serve_catalog(app: &mut App, n: i64, unmirrored: i64) -> usize {
    let mut queries = 0;
    loop {
        let loads: Vec<_> = std::mem::take(&mut app.effects)
            .into_iter()
            .filter_map(|e| match e {
                Effect::LoadCatalog {
                    generation,
                    offset,
                    after_id,
                    limit,
                } => Some((generation, offset, after_id, limit)),
                _ => None,
            })
            .collect();
        if loads.is_empty() {
            return queries;
        }
        for (generation, offset, after_id, limit) in loads {
            queries += 1;
            assert!(queries < 200, "runaway catalog queries");
            assert!(limit <= super::app::CATALOG_SKIP, "limit {limit}");
            let first = if after_id == 0 {
                0
            } else {
                (after_id - 1) / 3 + 1
            };
            let entries = (first..(first + limit).min(n))
                .map(|r| catalog_row_with_id(r % 50, 3 * r + 1))
                .collect();
            update(
                app,
                Action::CatalogLoaded {
                    generation,
                    offset,
                    limit,
                    result: Ok(CatalogList {
                        total: n + 5000,
                        unmirrored,
                        entries,
                    }),
                },
            );
        }
    }
}

/// The screen as text, one line per row.
fn screen(b: &Buffer) -> String {
    let mut out = String::new();
    for y in 0..b.area.height {
        let mut line = String::new();
        for x in 0..b.area.width {
            line.push_str(b[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn draw(app: &App) -> String {
    let backend = TestBackend::new(app.width, app.height);
    let mut terminal = match Terminal::new(backend) {
        Ok(t) => t,
        Err(e) => panic!("test terminal: {e}"),
    };
    if let Err(e) = terminal.draw(|f| view::render(app, f)) {
        panic!("draw: {e}");
    }
    screen(terminal.backend().buffer())
}

const SIZES: [(u16, u16); 3] = [(80, 24), (120, 40), (160, 48)];

fn fleet_row(id: &str, beat_age_s: i64, stopped: bool) -> FleetRow {
    FleetRow {
        instance_id: id.into(),
        version: "0.1.0".into(),
        hostname: id.split('-').next().unwrap_or(id).into(),
        listen: "0.0.0.0:8080".into(),
        peer_url: Some(format!("http://{id}:9090")),
        started_at: now() - TimeDelta::hours(26),
        heartbeat_at: now() - TimeDelta::seconds(beat_age_s),
        requests_per_s: if stopped { 0.0 } else { 41.5 },
        fills_in_flight: if stopped { 0 } else { 3 },
        queue_depth: if stopped { 0 } else { 12 },
        stopped_at: stopped.then(|| now() - TimeDelta::seconds(beat_age_s)),
    }
}

/// Four replicas: one up holding the metrics lease, one up, one gone, one stopped.
fn fleet_report() -> FleetReport {
    crate::engine::ops::fleet::report(
        vec![
            fleet_row("web1-4021-a1b2c3", 1, false),
            fleet_row("web2-977-0f9e8d", 2, false),
            fleet_row("web3-1203-77aa01", 95, false),
            fleet_row("web4-88-c0ffee", 3600, true),
        ],
        Some("web1-4021-a1b2c3".into()),
        now(),
    )
}

fn task(id: i64, path: &str, state: &str, attempts: i32, error: &str) -> TaskRow {
    TaskRow {
        id,
        path: path.into(),
        op: if path.ends_with(".tmp") {
            "delete"
        } else {
            "put"
        }
        .into(),
        version: 2,
        size: 64 * 1024 * id,
        state: state.into(),
        attempts,
        last_error: Some(error.into()),
        created_at: now() - TimeDelta::minutes(id % 50),
        next_attempt_at: now() + TimeDelta::seconds(if state == "failed" { 0 } else { 40 }),
    }
}

/// A backlog behind a backup that answers slowly: two failed tasks, two retrying.
fn replication_status() -> ReplicationStatus {
    ReplicationStatus {
        generated_at: now(),
        pending: 1204,
        pending_bytes: 97_650_000,
        running: 16,
        in_flight: 2,
        failed: 2,
        oldest_pending_at: Some(now() - TimeDelta::seconds(123)),
        lag_s: 123.0,
        drain_per_s: 12.5,
        eta_s: Some(1204.0 / 12.5),
        troubled: vec![
            task(
                412,
                "apps/photos/2026/11/IMG_4410.jpg",
                "failed",
                10,
                "backup bucket mod-mirror-backup at http://127.0.0.1:3900: access denied",
            ),
            task(
                398,
                "apps/reports/q3/summary-final-v2.pdf",
                "failed",
                10,
                "main no longer holds ETag \"9843ed7b\": superseded",
            ),
            task(
                1530,
                "apps/photos/2026/11/IMG_4502.jpg",
                "pending",
                3,
                "backup: connection reset by peer",
            ),
            task(
                1529,
                "apps/cache/upload.tmp",
                "pending",
                1,
                "backup: timed out after 30s",
            ),
        ],
    }
}

/// The Replication view after `n` refreshes of a backlog that grew, then started to drain.
fn replication_app(size: (u16, u16), n: i64) -> App {
    let mut app = app_at(Some("replication"), size);
    for i in 0..n {
        let mut s = replication_status();
        s.generated_at = now() - TimeDelta::seconds(5 * (n - 1 - i));
        let grow = if i < n * 2 / 3 { i } else { n * 4 / 3 - i };
        s.pending = 200 + grow * 30;
        s.lag_s = 10.0 + grow as f64 * 3.0;
        if i == n - 1 {
            s = replication_status();
        }
        update(&mut app, Action::ReplicationLoaded(Ok(Box::new(s))));
    }
    app.effects.clear();
    app
}

fn idle_replication() -> ReplicationStatus {
    ReplicationStatus {
        generated_at: now(),
        pending: 0,
        pending_bytes: 0,
        running: 0,
        in_flight: 0,
        failed: 0,
        oldest_pending_at: None,
        lag_s: 0.0,
        drain_per_s: 0.0,
        eta_s: Some(0.0),
        troubled: Vec::new(),
    }
}

/// Every view (and the popups) at every size, as the operator sees them.
fn partition(year: i32, month: u32, state: PartitionState, object: Option<&str>) -> PartitionEntry {
    PartitionEntry {
        partition: format!("download_events_y{year}m{month:02}"),
        year,
        month,
        rows: 1_722_073,
        rows_estimated: false,
        bytes: Some(22_755_188),
        state,
        object: object.map(str::to_string),
        live_rows: 0,
    }
}

fn scenes(size: (u16, u16)) -> Vec<(&'static str, App)> {
    let mut scenes = Vec::new();

    let mut dash = app_at(None, size);
    update(
        &mut dash,
        Action::StatsLoaded(Ok(Box::new(dashboard_data()))),
    );
    scenes.push(("dashboard", dash.clone()));

    let mut alerts = app_at(None, size);
    update(
        &mut alerts,
        Action::StatsLoaded(Ok(Box::new(dashboard_with_alerts()))),
    );
    scenes.push(("dashboard_alerts", alerts));

    let mut loading = app_at(None, size);
    loading.dashboard.loading = true;
    scenes.push(("dashboard_loading", loading));

    let mut files = files_app(size);
    for _ in 0..3 {
        update(&mut files, code(KeyCode::Down));
    }
    scenes.push(("files", files.clone()));

    let mut filtered = files_app(size);
    filtered.files.filter = "textures".into();
    filtered.files.sort = FileSort::Size;
    scenes.push(("files_filtered_sorted", filtered));

    let mut detail = files.clone();
    update(&mut detail, code(KeyCode::Enter));
    update(&mut detail, Action::FileLoaded(Ok(Box::new(file_report()))));
    scenes.push(("file_detail", detail));

    // The oldest days of the chart read back from an archived month.
    let mut archived = files.clone();
    update(&mut archived, code(KeyCode::Enter));
    let mut report = file_report();
    for d in report.downloads_per_day.iter_mut().take(6) {
        d.from_archive = true;
    }
    update(&mut archived, Action::FileLoaded(Ok(Box::new(report))));
    scenes.push(("file_detail_archived_days", archived));

    let mut jobs = app_at(None, size);
    jobs.dashboard.data = Some(dashboard_data());
    update(
        &mut jobs,
        Action::PreviewLoaded {
            op: OpRequest::Validate,
            result: Ok(Preview {
                lines: vec!["checks every file".into()],
                count: Some(2100),
                bytes: Some(16_441_000),
                price: Vec::new(),
            }),
        },
    );
    scenes.push(("confirm_validate", jobs.clone()));
    update(&mut jobs, key('y'));
    update(
        &mut jobs,
        Action::Job {
            id: 1,
            event: JobEvent::Progress {
                done: 500,
                total: Some(2100),
                msg: "validating".into(),
            },
        },
    );
    jobs.now = now() + TimeDelta::seconds(5);
    scenes.push(("jobs_running", jobs.clone()));
    update(
        &mut jobs,
        Action::JobDone {
            id: 1,
            result: Ok(
                "checked 2100: 2028 fresh, 60 stale (59 newly), 12 missing, 0 origin errors".into(),
            ),
        },
    );
    jobs.notifications.clear();
    scenes.push(("jobs_done", jobs.clone()));

    let mut drift = jobs.clone();
    update(&mut drift, key('4'));
    scenes.push(("drift", drift));
    let mut archive = jobs.clone();
    update(&mut archive, key('5'));
    update(
        &mut archive,
        Action::ArchiveLoaded(Ok(vec![
            partition(
                2026,
                7,
                PartitionState::Archived,
                Some("s3://archive/download_events/year=2026/month=07/_manifest.json"),
            ),
            partition(2026, 8, PartitionState::Live, None),
        ])),
    );
    scenes.push(("archive", archive));

    let mut history = app_at(Some("history"), size);
    update(&mut history, Action::HistoryLoaded(Ok(operations())));
    update(&mut history, code(KeyCode::Down));
    scenes.push(("history", history.clone()));
    update(&mut history, code(KeyCode::Enter));
    scenes.push(("history_detail", history));

    let mut help = dash.clone();
    update(&mut help, key('?'));
    scenes.push(("help", help));

    let mut command = dash.clone();
    update(&mut command, key(':'));
    typed(&mut command, "pu");
    scenes.push(("command_line", command));

    let mut catalog = catalog_app(size);
    for _ in 0..5 {
        update(&mut catalog, code(KeyCode::Down));
    }
    scenes.push(("catalog", catalog.clone()));

    let mut mirror_now = catalog.clone();
    update(&mut mirror_now, key('m'));
    let Some(Effect::Preview(op)) = mirror_now.effects.pop() else {
        panic!("m asked for no preview");
    };
    update(
        &mut mirror_now,
        Action::PreviewLoaded {
            op,
            result: Ok(Preview {
                lines: vec![
                    "Fetches each entry from the origin and stores it in the mirror bucket as a"
                        .into(),
                    "download miss would; a stale copy is replaced.".into(),
                    "  mods/25065/104735/textures-v1.zip".into(),
                ],
                count: Some(1),
                bytes: Some(4165),
                price: Vec::new(),
            }),
        },
    );
    scenes.push(("catalog_confirm_mirror_now", mirror_now));

    let mut all = catalog.clone();
    update(&mut all, key('P'));
    let Some(Effect::Preview(op)) = all.effects.pop() else {
        panic!("P asked for no preview");
    };
    update(
        &mut all,
        Action::PreviewLoaded {
            op,
            result: Ok(Preview {
                lines: vec![
                    "Fetches each entry from the origin and stores it in the mirror bucket as a"
                        .into(),
                    "download miss would; a stale copy is replaced.".into(),
                    "  mods/25000/104700/textures-v1.zip".into(),
                    "  mods/25013/104707/maps-v1.zip".into(),
                    "  mods/25026/104714/ui-v1.zip".into(),
                ],
                count: Some(53),
                bytes: Some(412_330),
                price: Vec::new(),
            }),
        },
    );
    scenes.push(("catalog_confirm_prefetch_all", all));

    let mut empty = App::new(opts(Some("catalog"), false), now(), size);
    if let Some(Effect::LoadCatalog {
        generation, limit, ..
    }) = empty.effects.pop()
    {
        update(
            &mut empty,
            Action::CatalogLoaded {
                generation,
                offset: 0,
                limit,
                result: Ok(CatalogList {
                    total: 2140,
                    unmirrored: 0,
                    entries: Vec::new(),
                }),
            },
        );
    }
    empty.effects.clear();
    scenes.push(("catalog_all_mirrored", empty));

    let mut fleet = app_at(Some("fleet"), size);
    update(
        &mut fleet,
        Action::FleetLoaded(Ok(Box::new(fleet_report()))),
    );
    scenes.push(("fleet", fleet));

    let mut fleet_empty = app_at(Some("fleet"), size);
    update(
        &mut fleet_empty,
        Action::FleetLoaded(Ok(Box::new(crate::engine::ops::fleet::report(
            Vec::new(),
            None,
            now(),
        )))),
    );
    scenes.push(("fleet_empty", fleet_empty));

    let mut replication = replication_app(size, 40);
    update(&mut replication, code(KeyCode::Down));
    scenes.push(("replication", replication.clone()));

    let mut retry = replication.clone();
    update(&mut retry, key('R'));
    let Some(Effect::Preview(op)) = retry.effects.pop() else {
        panic!("R asked for no preview");
    };
    update(
        &mut retry,
        Action::PreviewLoaded {
            op,
            result: Ok(Preview {
                lines: vec![
                    "Puts the tasks back in the queue, due now with their attempts reset;".into(),
                    "serve's replication workers then copy each key to the backup.".into(),
                    "  398 apps/reports/q3/summary-final-v2.pdf: main no longer holds ETag".into(),
                    "  412 apps/photos/2026/11/IMG_4410.jpg: access denied".into(),
                ],
                count: Some(2),
                bytes: Some(52_428_800),
                price: Vec::new(),
            }),
        },
    );
    scenes.push(("replication_confirm_retry_failed", retry));

    let mut purge = app_at(None, size);
    purge.dashboard.data = Some(dashboard_data());
    update(
        &mut purge,
        Action::PreviewLoaded {
            op: OpRequest::Purge(PurgeRequest {
                prefix: Some("mods/".into()),
                ..PurgeRequest::new(PurgeTarget::MaxBytes(500 << 30))
            }),
            result: Ok(ops::purge_preview(&purge_report())),
        },
    );
    scenes.push(("confirm_purge_max_bytes", purge));

    let mut replication_empty = app_at(Some("replication"), size);
    update(
        &mut replication_empty,
        Action::ReplicationLoaded(Ok(Box::new(idle_replication()))),
    );
    scenes.push(("replication_empty", replication_empty));

    let mut error = dash;
    update(
        &mut error,
        Action::HistoryLoaded(Err("database sqlite://x: unable to open".into())),
    );
    scenes.push(("error_notification", error));
    scenes
}

#[test]
fn snapshots_of_every_view_at_every_size() {
    for size in SIZES {
        for (name, app) in scenes(size) {
            let text = draw(&app);
            insta::assert_snapshot!(format!("{name}_{}x{}", size.0, size.1), text);
        }
    }
}

#[test]
fn every_scene_fits_and_shows_its_view() {
    for size in SIZES {
        for (name, app) in scenes(size) {
            let text = draw(&app);
            assert!(
                text.contains("1 Dash") && text.contains("9 Repl"),
                "{name} at {size:?} lost the tab bar"
            );
            assert!(
                !text.contains("loading…") || name.contains("loading"),
                "{name} at {size:?} is still loading"
            );
        }
    }
}

/// A dry run of `purge --max-bytes 500GiB --prefix mods/` as the engine reports it.
fn purge_report() -> PurgeReport {
    PurgeReport {
        selection: "least recently used under \"mods/\" until those fit in 500 GiB".into(),
        candidates: 1204,
        bytes: 3_328_599_654,
        dry_run: true,
        first_keys: vec![
            "mods/1841/old-texture-pack.zip".into(),
            "mods/77/with space/ü.zip".into(),
        ],
        impact: Some(PurgeImpact {
            days: 30,
            since: now() - TimeDelta::days(30),
            downloads: 4711,
            bytes: 9_876_543_210,
            files: 412,
            requests: 101_234,
            hit_rate: Some(0.931),
            hit_rate_after: Some(0.884),
        }),
        ..Default::default()
    }
}

#[test]
fn purge_confirmation_names_count_bytes_price_and_the_headless_command() {
    let mut app = app_at(None, (100, 30));
    update(
        &mut app,
        Action::PreviewLoaded {
            op: OpRequest::Purge(PurgeRequest {
                prefix: Some("mods/".into()),
                pattern: Some("*it's.zip".into()),
                max_delete: Some(5000),
                ..PurgeRequest::new(PurgeTarget::MaxBytes(500 << 30))
            }),
            result: Ok(ops::purge_preview(&purge_report())),
        },
    );
    let text = draw(&app);
    for want in [
        "1,204 files, 3.10 GiB",
        "4,711 downloads (9.20",
        "GiB of origin egress) into misses (412 files)",
        "hit rate 93.1% → 88.4%",
        "--max-bytes 500GiB --prefix mods/ --match",
        "\"*it's.zip\" --max-delete 5000 --yes",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
}

#[test]
fn purge_commands_take_the_headless_options_and_the_policy_window() {
    let mut app = App::new(
        Options {
            unused_days: 45,
            ..opts(None, false)
        },
        now(),
        (80, 24),
    );
    app.effects.clear();
    let preview_of = |app: &App| {
        app.effects.iter().find_map(|e| match e {
            Effect::Preview(OpRequest::Purge(r)) => Some(r.clone()),
            _ => None,
        })
    };
    for (line, want) in [
        (
            "purge unused",
            PurgeRequest::new(PurgeTarget::UnusedDays(45)),
        ),
        (
            "purge max-bytes 2GiB max-delete 10",
            PurgeRequest {
                max_delete: Some(10),
                ..PurgeRequest::new(PurgeTarget::MaxBytes(2 << 30))
            },
        ),
        (
            "purge match 'mods/*.zip'",
            PurgeRequest {
                pattern: Some("mods/*.zip".into()),
                ..PurgeRequest::new(PurgeTarget::All)
            },
        ),
        (
            "purge --stale --prefix \"a b/\"",
            PurgeRequest {
                prefix: Some("a b/".into()),
                ..PurgeRequest::new(PurgeTarget::Stale)
            },
        ),
    ] {
        app.effects.clear();
        update(&mut app, key(':'));
        typed(&mut app, line);
        update(&mut app, code(KeyCode::Enter));
        assert_eq!(preview_of(&app), Some(want), "{line}");
    }
    app.effects.clear();
    update(&mut app, key(':'));
    typed(&mut app, "purge");
    update(&mut app, code(KeyCode::Enter));
    assert!(preview_of(&app).is_none());
    assert!(app
        .notifications
        .last()
        .is_some_and(|n| n.level == Level::Error && n.text.contains("usage: purge")));
    // `mirrorctl purge --unused-days 7 --prefix mods/` opens on that purge, not another.
    let app = App::new(
        opts(Some("purge unused 7 prefix mods/"), false),
        now(),
        (80, 24),
    );
    assert_eq!(
        preview_of(&app),
        Some(PurgeRequest {
            prefix: Some("mods/".into()),
            ..PurgeRequest::new(PurgeTarget::UnusedDays(7))
        })
    );
}

#[test]
fn start_command_opens_its_view_with_the_action_awaiting_confirmation() {
    let app = App::new(opts(Some("drift"), false), now(), (80, 24));
    assert_eq!(app.view, View::Drift);
    assert!(app
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Preview(OpRequest::DriftCheck))));
    let app = App::new(opts(Some("validate"), false), now(), (80, 24));
    assert!(app
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Preview(OpRequest::Validate))));
    let app = App::new(opts(Some("files"), false), now(), (80, 24));
    assert_eq!(app.view, View::Files);
    assert!(app
        .effects
        .iter()
        .any(|e| matches!(e, Effect::LoadFiles { count: true, .. })));
    let app = App::new(opts(None, false), now(), (80, 24));
    assert_eq!(app.view, View::Dashboard);
    assert!(app
        .effects
        .iter()
        .any(|e| matches!(e, Effect::LoadStats(Window::Day))));
}

#[test]
fn number_keys_tab_and_commands_switch_views() {
    let mut app = app_at(None, (80, 24));
    update(&mut app, key('2'));
    assert_eq!(app.view, View::Files);
    update(&mut app, code(KeyCode::Tab));
    assert_eq!(app.view, View::Jobs);
    update(&mut app, code(KeyCode::BackTab));
    update(&mut app, code(KeyCode::BackTab));
    assert_eq!(app.view, View::Dashboard);
    update(&mut app, key(':'));
    typed(&mut app, "history");
    update(&mut app, code(KeyCode::Enter));
    assert_eq!(app.view, View::History);
    assert!(app.effects.iter().any(|e| matches!(e, Effect::LoadHistory)));
    update(&mut app, key('q'));
    assert!(app.quit);
}

#[test]
fn files_page_from_the_database_as_the_selection_moves() {
    let mut app = files_app((80, 24));
    let rows = app.files_visible_rows();
    // Within the cached page: no query.
    for _ in 0..(rows + 5) {
        update(&mut app, code(KeyCode::Down));
    }
    assert!(app.effects.is_empty());
    assert_eq!(app.files.selected, rows + 5);
    assert_eq!(app.files.top, 6);
    // Past it: one query for the page around the viewport, never more than a page.
    for _ in 0..20 {
        update(&mut app, code(KeyCode::PageDown));
    }
    let loads: Vec<_> = app
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::LoadFiles { start, query, .. } => Some((*start, query.limit)),
            _ => None,
        })
        .collect();
    assert!(!loads.is_empty());
    assert!(loads.iter().all(|(_, limit)| *limit <= 200));
    let top = app.files.top;
    let (offset, limit) = *loads.last().unwrap_or(&(0, 0));
    assert!(
        offset <= top && top + rows <= offset + limit,
        "page {offset}+{limit} misses viewport at {top}"
    );
    // The end of a million rows is one key away, read backwards from the end.
    app.effects.clear();
    update(&mut app, key('G'));
    assert_eq!(app.files.selected, 999_999);
    assert!(app.effects.iter().any(|e| matches!(e,
        Effect::LoadFiles { start, query, .. }
            if *start > 999_000 && query.from_end && query.offset < 200)));
}

#[test]
fn files_pages_start_after_a_row_already_seen() {
    // The first 200 rows (ids 1..=200) are loaded: a page further on starts after the last.
    let app = files_app((80, 24));
    let q = app.files.query(230, 200);
    assert_eq!(q.after.as_ref().map(|r| r.id), Some(200));
    assert_eq!(q.offset, 30);
    assert!(!q.from_end);
}

#[test]
fn answers_to_an_old_sort_are_dropped() {
    let mut app = files_app((80, 24));
    let old = app.files.generation;
    update(&mut app, key('s'));
    assert_ne!(app.files.generation, old);
    assert_eq!(app.files.sort, FileSort::BytesServed);
    assert!(app
        .effects
        .iter()
        .any(|e| matches!(e, Effect::LoadFiles { query, count: true, .. } if query.sort == FileSort::BytesServed)));
    update(
        &mut app,
        Action::FilesLoaded {
            generation: old,
            offset: 0,
            result: Ok((vec![file_row(9)], Some(1))),
        },
    );
    assert!(app.files.page.is_empty());
    update(&mut app, key('S'));
    update(&mut app, key('S'));
    assert_eq!(app.files.sort, FileSort::Size);
}

#[test]
fn filter_applies_on_enter_and_esc_clears_it() {
    let mut app = files_app((80, 24));
    update(&mut app, key('/'));
    typed(&mut app, "maps");
    assert!(matches!(&app.mode, Mode::Filter { input } if input == "maps"));
    assert!(app.effects.is_empty());
    update(&mut app, code(KeyCode::Enter));
    assert_eq!(app.files.filter, "maps");
    assert!(app.effects.iter().any(
        |e| matches!(e, Effect::LoadFiles { query, .. } if query.filter.as_deref() == Some("maps"))
    ));
    update(&mut app, code(KeyCode::Esc));
    assert_eq!(app.files.filter, "");
}

#[test]
fn command_line_completes_and_runs() {
    assert_eq!(keymap::tab_complete("pu"), "purge ");
    assert_eq!(keymap::tab_complete("purge u"), "purge unused");
    assert_eq!(keymap::tab_complete("d"), "d");
    assert!(keymap::complete("d").contains(&"drift".to_string()));
    let mut app = app_at(None, (80, 24));
    update(&mut app, key(':'));
    typed(&mut app, "pu");
    update(&mut app, code(KeyCode::Tab));
    typed(&mut app, "unused 30");
    update(&mut app, code(KeyCode::Enter));
    assert_eq!(app.mode, Mode::Normal);
    assert!(app
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Preview(OpRequest::Purge(r)) if r.target == PurgeTarget::UnusedDays(30))));
    update(&mut app, key(':'));
    typed(&mut app, "frobnicate");
    update(&mut app, code(KeyCode::Enter));
    assert!(app
        .notifications
        .iter()
        .any(|n| n.level == Level::Error && n.text.contains("frobnicate")));
}

#[test]
fn read_only_refuses_mutations_before_any_dry_run() {
    let mut app = App::new(opts(None, true), now(), (80, 24));
    app.effects.clear();
    update(&mut app, key(':'));
    typed(&mut app, "purge stale");
    update(&mut app, code(KeyCode::Enter));
    assert!(app.effects.is_empty());
    let n = app
        .notifications
        .last()
        .map(|n| n.text.clone())
        .unwrap_or_default();
    assert!(n.contains("read-only"), "{n}");
    // Looking is still allowed.
    update(&mut app, key(':'));
    typed(&mut app, "drift check");
    update(&mut app, code(KeyCode::Enter));
    assert!(app
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Preview(OpRequest::DriftCheck))));
    assert!(draw(&app)
        .lines()
        .next()
        .is_some_and(|l| l.ends_with(" RO")));
}

#[test]
fn confirmation_starts_a_job_that_reports_progress_and_finishes() {
    let mut app = app_at(None, (80, 24));
    update(&mut app, key('v'));
    assert!(app
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Preview(OpRequest::Validate))));
    app.effects.clear();
    let preview = Preview {
        lines: vec![],
        count: Some(12),
        bytes: Some(3400),
        price: Vec::new(),
    };
    update(
        &mut app,
        Action::PreviewLoaded {
            op: OpRequest::Purge(PurgeRequest::new(PurgeTarget::Stale)),
            result: Ok(preview),
        },
    );
    let text = draw(&app);
    assert!(text.contains("12 files, 3.32 KiB"), "{text}");
    assert!(
        text.contains("mirrorctl --headless purge --stale --yes"),
        "{text}"
    );
    // Keys other than y/n do nothing while the question is open.
    update(&mut app, key('2'));
    assert!(matches!(app.mode, Mode::Confirm { .. }));
    update(&mut app, code(KeyCode::Enter));
    assert_eq!(app.view, View::Jobs);
    assert!(app.effects.iter().any(|e| matches!(
        e,
        Effect::StartJob {
            id: 1,
            op: OpRequest::Purge(r)
        } if r.target == PurgeTarget::Stale
    )));
    update(
        &mut app,
        Action::Job {
            id: 1,
            event: JobEvent::Progress {
                done: 6,
                total: Some(12),
                msg: "deleting".into(),
            },
        },
    );
    assert_eq!((app.jobs[0].done, app.jobs[0].total), (6, Some(12)));
    app.effects.clear();
    update(&mut app, key('c'));
    assert!(app
        .effects
        .iter()
        .any(|e| matches!(e, Effect::CancelJob(1))));
    assert_eq!(app.jobs[0].state, JobState::Cancelling);
    update(
        &mut app,
        Action::JobDone {
            id: 1,
            result: Err("cancelled".into()),
        },
    );
    assert!(matches!(
        app.jobs[0].state,
        JobState::Finished { ok: false, .. }
    ));
    // A late progress event does not revive it.
    update(
        &mut app,
        Action::Job {
            id: 1,
            event: JobEvent::Progress {
                done: 7,
                total: Some(12),
                msg: "late".into(),
            },
        },
    );
    assert_eq!(app.jobs[0].done, 6);
}

#[test]
fn declining_a_confirmation_changes_nothing() {
    let mut app = app_at(None, (80, 24));
    update(
        &mut app,
        Action::PreviewLoaded {
            op: OpRequest::DriftRepair,
            result: Ok(Preview {
                lines: vec![],
                count: Some(3),
                bytes: None,
                price: Vec::new(),
            }),
        },
    );
    update(&mut app, key('n'));
    assert_eq!(app.mode, Mode::Normal);
    assert!(app.effects.is_empty());
    assert!(app.jobs.is_empty());
}

#[test]
fn errors_are_notifications_that_expire() {
    let mut app = app_at(None, (80, 24));
    update(&mut app, Action::StatsLoaded(Err("database down".into())));
    assert_eq!(app.notifications.len(), 1);
    assert!(draw(&app).contains("database down"));
    update(&mut app, Action::Tick(now() + TimeDelta::seconds(5)));
    assert_eq!(app.notifications.len(), 1);
    update(&mut app, Action::Tick(now() + TimeDelta::seconds(30)));
    assert!(app.notifications.is_empty());
    assert_eq!(app.next_expiry(), None);
}

#[test]
fn help_is_generated_from_the_keymap() {
    let text: String = view::help_lines(&super::theme::Theme::default())
        .iter()
        .map(|l| {
            l.spans
                .iter()
                .map(|s| s.content.as_ref())
                .collect::<String>()
                + "\n"
        })
        .collect();
    for b in BINDINGS {
        assert!(text.contains(b.help), "help lacks {:?}", b.help);
    }
    for c in COMMANDS {
        assert!(text.contains(c.usage), "help lacks :{}", c.usage);
    }
}

#[test]
fn every_bound_key_does_something_in_its_scope() {
    // Keys are unique within a scope, so a lookup finds the binding that help shows.
    for b in BINDINGS {
        for k in b.keys {
            let mods = if k.ctrl {
                KeyModifiers::CONTROL
            } else {
                KeyModifiers::NONE
            };
            let found = keymap::lookup(&[b.scope], &KeyEvent::new(k.code, mods));
            assert_eq!(found, Some(b.command), "{} in {:?}", k.label(), b.scope);
        }
    }
}

#[test]
fn mouse_scrolls_and_clicks() {
    let mut app = files_app((120, 40));
    let scroll = |kind| {
        Action::Mouse(MouseEvent {
            kind,
            column: 10,
            row: 10,
            modifiers: KeyModifiers::NONE,
        })
    };
    update(&mut app, scroll(MouseEventKind::ScrollDown));
    assert_eq!(app.files.selected, 3);
    update(&mut app, scroll(MouseEventKind::ScrollUp));
    assert_eq!(app.files.selected, 0);
    update(
        &mut app,
        Action::Mouse(MouseEvent {
            kind: MouseEventKind::Down(MouseButton::Left),
            column: 20,
            row: 7,
            modifiers: KeyModifiers::NONE,
        }),
    );
    assert_eq!(app.files.selected, 4);
    // The tab bar: " mirrorctl " then " 1 Dashboard " …
    let tab_x = view::tabs_start(120) + 2;
    update(
        &mut app,
        Action::Mouse(MouseEvent {
            kind: MouseEventKind::Down(MouseButton::Left),
            column: tab_x,
            row: 0,
            modifiers: KeyModifiers::NONE,
        }),
    );
    assert_eq!(app.view, View::Dashboard);
}

#[test]
fn esc_then_key_typed_fast_is_two_keys() {
    let mut app = files_app((80, 24));
    update(&mut app, code(KeyCode::Enter));
    assert!(app.files.detail.is_some());
    update(
        &mut app,
        Action::Key(KeyEvent::new(KeyCode::Char('/'), KeyModifiers::ALT)),
    );
    assert!(app.files.detail.is_none());
    assert!(matches!(app.mode, Mode::Filter { .. }));
}

#[test]
fn window_switch_reloads_stats_and_ignores_answers_for_another_window() {
    let mut app = app_at(None, (80, 24));
    update(&mut app, key('w'));
    assert_eq!(app.dashboard.window, Window::Week);
    assert!(app
        .effects
        .iter()
        .any(|e| matches!(e, Effect::LoadStats(Window::Week))));
    update(
        &mut app,
        Action::StatsLoaded(Ok(Box::new(dashboard_data()))),
    );
    assert!(
        app.dashboard.data.is_none(),
        "a 24h answer must not show as 7d"
    );
}

#[test]
fn mono_theme_uses_no_colour() {
    let mut app = App::new(
        Options {
            theme: ThemeName::Mono,
            ..opts(None, false)
        },
        now(),
        (80, 24),
    );
    update(
        &mut app,
        Action::StatsLoaded(Ok(Box::new(dashboard_data()))),
    );
    let backend = TestBackend::new(80, 24);
    let mut terminal = Terminal::new(backend).unwrap_or_else(|e| panic!("{e}"));
    terminal
        .draw(|f| view::render(&app, f))
        .unwrap_or_else(|e| panic!("{e}"));
    let buf = terminal.backend().buffer();
    for cell in buf.content() {
        assert_eq!(cell.fg, ratatui::style::Color::Reset);
        assert_eq!(cell.bg, ratatui::style::Color::Reset);
    }
}

/// Render time of the files view over 1,000,000 rows while scrolling through them.
/// `cargo test --release --lib tui::tests::bench_files_render -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_files_render() {
    for (w, h) in [(80u16, 24u16), (120, 40), (200, 60)] {
        let mut app = files_app((w, h));
        let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap_or_else(|e| panic!("{e}"));
        let frames = 2000;
        let mut worst = Duration::ZERO;
        let mut drawing = Duration::ZERO;
        let start = std::time::Instant::now();
        for i in 0..frames {
            // Jump through the million rows, serving each page as the database would.
            update(&mut app, code(KeyCode::PageDown));
            if i % 50 == 0 {
                update(&mut app, key('G'));
            }
            let loads: Vec<_> = std::mem::take(&mut app.effects);
            for e in loads {
                if let Effect::LoadFiles {
                    generation, query, ..
                } = e
                {
                    let rows = (query.offset..(query.offset + query.limit).min(1_000_000))
                        .map(file_row)
                        .collect();
                    update(
                        &mut app,
                        Action::FilesLoaded {
                            generation,
                            offset: query.offset,
                            result: Ok((rows, None)),
                        },
                    );
                }
            }
            app.effects.clear();
            let t = std::time::Instant::now();
            terminal
                .draw(|f| view::render(&app, f))
                .unwrap_or_else(|e| panic!("{e}"));
            let took = t.elapsed();
            drawing += took;
            worst = worst.max(took);
        }
        let total = start.elapsed();
        println!(
            "files view {w}x{h}, 1,000,000 rows: {frames} frames, mean draw {:.3} ms, worst draw {:.3} ms (whole loop incl. building pages {:.3} ms/frame)",
            drawing.as_secs_f64() * 1000.0 / frames as f64,
            worst.as_secs_f64() * 1000.0,
            total.as_secs_f64() * 1000.0 / frames as f64
        );
    }
}

#[test]
fn drift_view_lists_the_keys_of_the_latest_check() {
    use crate::engine::ops::drift::{DriftItem, InventoryStatus, PairStatus};
    let item = |key: &str, status, inventory_status, detail: Option<&str>| DriftItem {
        key: key.into(),
        status,
        inventory_status,
        detail: detail.map(str::to_string),
        main: None,
        backup: None,
        inventory: None,
    };
    let mut app = app_at(None, (100, 30));
    update(&mut app, key('4'));
    update(
        &mut app,
        Action::DriftItems(vec![
            item(
                "mods/1/a.zip",
                Some(PairStatus::Differ),
                None,
                Some("size 10 vs 12"),
            ),
            item(
                "mods/2/b.zip",
                Some(PairStatus::Same),
                Some(InventoryStatus::InventoryMissing),
                None,
            ),
        ]),
    );
    let text = draw(&app);
    assert!(text.contains("2 keys disagree"), "{text}");
    assert!(
        text.contains("differ") && text.contains("mods/1/a.zip") && text.contains("size 10 vs 12"),
        "{text}"
    );
    assert!(text.contains("inventory missing   mods/2/b.zip"), "{text}");
}

#[test]
fn archive_rows_are_selectable_and_verified_or_restored() {
    let loaded = || {
        Action::ArchiveLoaded(Ok(vec![
            partition(
                2026,
                6,
                PartitionState::Archived,
                Some("s3://archive/download_events/year=2026/month=06/_manifest.json"),
            ),
            partition(2026, 7, PartitionState::Restored, None),
            partition(2026, 8, PartitionState::Live, None),
        ]))
    };
    let mut app = app_at(Some("archive"), (120, 40));
    update(&mut app, loaded());
    app.effects.clear();
    // The first row is selected: verify and restore it.
    update(&mut app, key('v'));
    assert!(app.effects.iter().any(|e| matches!(e,
        Effect::Preview(OpRequest::ArchiveVerify { partition }) if partition == "download_events_y2026m06")));
    app.effects.clear();
    update(&mut app, key('R'));
    assert!(app.effects.iter().any(|e| matches!(e,
        Effect::Preview(OpRequest::ArchiveRestore { partition }) if partition == "download_events_y2026m06")));
    // A restored month can be verified, not restored again; a live one neither.
    app.effects.clear();
    update(&mut app, code(KeyCode::Down));
    assert_eq!(app.archive.selected, 1);
    update(&mut app, key('R'));
    assert!(app.effects.is_empty());
    assert!(app
        .notifications
        .iter()
        .any(|n| n.text.contains("already restored")));
    update(&mut app, key('v'));
    assert_eq!(app.effects.len(), 1);
    app.effects.clear();
    update(&mut app, code(KeyCode::Down));
    update(&mut app, code(KeyCode::Down));
    assert_eq!(app.archive.selected, 2, "clamped at the last row");
    update(&mut app, key('v'));
    assert!(app.effects.is_empty());
    // The command line names the partition.
    update(&mut app, key(':'));
    typed(&mut app, "archive restore download_events_y2026m06");
    update(&mut app, code(KeyCode::Enter));
    assert!(app.effects.iter().any(|e| matches!(e,
        Effect::Preview(OpRequest::ArchiveRestore { partition }) if partition == "download_events_y2026m06")));
    // Restore changes the database: refused read-only; verify is allowed.
    let mut ro = App::new(opts(Some("archive"), true), now(), (120, 40));
    update(&mut ro, loaded());
    ro.effects.clear();
    update(&mut ro, key('R'));
    assert!(ro.effects.is_empty());
    update(&mut ro, key('v'));
    assert_eq!(ro.effects.len(), 1);
    assert_eq!(
        OpRequest::ArchiveRestore {
            partition: "download_events_y2026m06".into()
        }
        .headless_command(),
        "mirrorctl --headless archive restore download_events_y2026m06"
    );
}

#[test]
fn drift_keys_scroll() {
    use crate::engine::ops::drift::DriftItem;
    let mut app = app_at(Some("drift"), (120, 30));
    let items: Vec<DriftItem> = (0..100)
        .map(|i| DriftItem {
            key: format!("mods/key-{i:03}"),
            status: Some(crate::engine::ops::drift::PairStatus::MissingInBackup),
            inventory_status: None,
            detail: None,
            main: None,
            backup: None,
            inventory: None,
        })
        .collect();
    update(&mut app, Action::DriftItems(items));
    let screen = |app: &App| {
        let backend = ratatui::backend::TestBackend::new(120, 30);
        let mut term = ratatui::Terminal::new(backend).expect("terminal");
        term.draw(|f| crate::tui::view::render(app, f))
            .expect("draw");
        format!("{:?}", term.backend().buffer())
    };
    let before = screen(&app);
    assert!(before.contains("mods/key-000") && !before.contains("mods/key-050"));
    for _ in 0..50 {
        update(&mut app, key('j'));
    }
    assert_eq!(app.drift_top, 50);
    let after = screen(&app);
    assert!(
        after.contains("mods/key-050") && !after.contains("mods/key-000"),
        "{after}"
    );
    assert!(after.contains("51–"), "{after}");
    update(&mut app, code(KeyCode::End));
    assert_eq!(app.drift_top, 99, "clamped at the last key");
}

#[test]
fn mirror_now_confirms_a_prefetch_of_the_selected_entry_and_refreshes_the_list() {
    let mut app = catalog_app((120, 40));
    assert_eq!(app.view, View::Catalog);
    update(&mut app, code(KeyCode::Down));
    update(&mut app, code(KeyCode::Down));
    let row = app.catalog.row(2).cloned().expect("row 2 loaded");
    update(&mut app, key('m'));
    let want = OpRequest::PrefetchIds {
        ids: vec![row.id],
        label: row.key.clone().unwrap_or_default(),
    };
    assert!(
        app.effects
            .iter()
            .any(|e| matches!(e, Effect::Preview(op) if *op == want)),
        "{:?}",
        app.effects
    );
    // Enter on an entry is the same action.
    app.effects.clear();
    update(&mut app, code(KeyCode::Enter));
    assert!(app
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Preview(op) if *op == want)));
    app.effects.clear();
    update(
        &mut app,
        Action::PreviewLoaded {
            op: want.clone(),
            result: Ok(Preview {
                lines: vec![],
                count: Some(1),
                bytes: Some(2699),
                price: Vec::new(),
            }),
        },
    );
    assert!(matches!(&app.mode, Mode::Confirm { op, .. } if *op == want));
    let text = draw(&app);
    assert!(
        text.contains(&format!(
            "mirrorctl --headless prefetch --ids {} --yes",
            row.id
        )),
        "{text}"
    );
    assert!(text.contains("Affects:  1 files, 2.64 KiB"), "{text}");
    assert!(text.contains("Confirm prefetch"), "{text}");
    update(&mut app, key('y'));
    assert_eq!(app.view, View::Jobs);
    assert!(app
        .effects
        .iter()
        .any(|e| matches!(e, Effect::StartJob { id: 1, op } if *op == want)));
    app.effects.clear();
    let generation = app.catalog.generation;
    update(
        &mut app,
        Action::JobDone {
            id: 1,
            result: Ok("prefetched 1 of 1 files (2.64 KiB), 0 failed".into()),
        },
    );
    // The list is counted again when next shown, from its first row.
    assert_ne!(app.catalog.generation, generation);
    update(&mut app, key('7'));
    assert!(app.effects.iter().any(|e| matches!(
        e,
        Effect::LoadCatalog {
            generation: g,
            offset: 0,
            after_id: 0,
            ..
        } if *g == app.catalog.generation
    )));
    // A job ending while the catalog is on screen reloads it at once.
    let mut open = catalog_app((80, 24));
    open.jobs.push(super::app::JobEntry {
        id: 1,
        op: OpRequest::PrefetchUnmirrored,
        started_at: now(),
        done: 0,
        total: None,
        msg: String::new(),
        state: JobState::Running,
    });
    update(
        &mut open,
        Action::JobDone {
            id: 1,
            result: Ok("prefetched 53 of 53 files".into()),
        },
    );
    assert!(open
        .effects
        .iter()
        .any(|e| matches!(e, Effect::LoadCatalog { .. })));
}

#[test]
fn prefetch_all_asks_first_and_read_only_refuses_both() {
    let mut app = catalog_app((80, 24));
    update(&mut app, key('P'));
    assert!(app
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Preview(OpRequest::PrefetchUnmirrored))));
    assert_eq!(
        OpRequest::PrefetchUnmirrored.headless_command(),
        "mirrorctl --headless prefetch --unmirrored --yes"
    );
    assert!(OpRequest::PrefetchUnmirrored.mutating());
    let mut ro = App::new(opts(Some("catalog"), true), now(), (80, 24));
    ro.effects.clear();
    ro.catalog = app.catalog.clone();
    for k in ['m', 'P'] {
        update(&mut ro, key(k));
        assert!(ro.effects.is_empty(), "{k} in read-only: {:?}", ro.effects);
        let n = ro.notifications.last().map(|n| n.text.clone());
        assert!(
            n.as_deref()
                .is_some_and(|n| n.contains("refused: prefetch is not allowed in read-only mode")),
            "{n:?}"
        );
    }
}

#[test]
fn prefetch_opens_the_catalog_with_its_selection_awaiting_confirmation() {
    let preview = |start: &str| {
        let app = App::new(opts(Some(start), false), now(), (80, 24));
        assert_eq!(app.view, View::Catalog, "{start}");
        assert!(app
            .effects
            .iter()
            .any(|e| matches!(e, Effect::LoadCatalog { .. })));
        app.effects.iter().find_map(|e| match e {
            Effect::Preview(op) => Some(op.clone()),
            _ => None,
        })
    };
    assert_eq!(preview("prefetch"), Some(OpRequest::PrefetchUnmirrored));
    assert_eq!(
        preview("prefetch 5,7"),
        Some(OpRequest::PrefetchIds {
            ids: vec![5, 7],
            label: "2 catalog entries".into()
        })
    );
    assert_eq!(
        preview("prefetch top 50 24h"),
        Some(OpRequest::PrefetchTop {
            n: 50,
            window_days: 1
        })
    );
    assert_eq!(preview("catalog"), None);
    assert_eq!(
        OpRequest::PrefetchTop {
            n: 50,
            window_days: 7
        }
        .headless_command(),
        "mirrorctl --headless prefetch --top 50 --window 7d --yes"
    );
    // The same words on the command line.
    let mut app = app_at(None, (80, 24));
    update(&mut app, key(':'));
    typed(&mut app, "prefetch 12");
    update(&mut app, code(KeyCode::Enter));
    assert_eq!(app.view, View::Catalog);
    assert!(app.effects.iter().any(|e| matches!(e,
        Effect::Preview(OpRequest::PrefetchIds { ids, .. }) if ids == &[12])));
    app.effects.clear();
    update(&mut app, key(':'));
    typed(&mut app, "prefetch top x");
    update(&mut app, code(KeyCode::Enter));
    assert!(!app.effects.iter().any(|e| matches!(e, Effect::Preview(_))));
    assert!(app
        .notifications
        .iter()
        .any(|n| n.level == Level::Error && n.text.contains("positive")));
    // Tab reaches the catalog too, after History (then the fleet, the last view).
    let mut app = app_at(Some("history"), (80, 24));
    update(&mut app, code(KeyCode::Tab));
    assert_eq!(app.view, View::Catalog);
    update(&mut app, code(KeyCode::Tab));
    assert_eq!(app.view, View::Fleet);
    update(&mut app, code(KeyCode::Tab));
    assert_eq!(app.view, View::Replication);
    update(&mut app, code(KeyCode::Tab));
    assert_eq!(app.view, View::Dashboard);
}

#[test]
fn catalog_pages_by_cursor_and_reaches_the_end_of_a_long_list() {
    let n = 100_000;
    let mut app = App::new(opts(Some("catalog"), false), now(), (120, 40));
    assert_eq!(serve_catalog(&mut app, n, n), 1);
    assert_eq!(app.catalog.len, Some(n));
    let id_at = |app: &App, r: i64| app.catalog.row(r).map(|e| e.id);
    assert_eq!(id_at(&app, 0), Some(1));
    // Within the cached rows: no query.
    for _ in 0..30 {
        update(&mut app, code(KeyCode::Down));
    }
    assert!(app.effects.is_empty());
    // The end: a few big queries that skip ahead, each from the cursor the last one found.
    update(&mut app, key('G'));
    let queries = serve_catalog(&mut app, n, n);
    assert!((2..=10).contains(&queries), "{queries} queries");
    assert_eq!(app.catalog.selected, n - 1);
    assert_eq!(
        id_at(&app, n - 1),
        Some(3 * (n - 1) + 1),
        "row numbers drifted"
    );
    // Back up a page at a time from known cursors: small queries, rows where they belong.
    for _ in 0..20 {
        update(&mut app, code(KeyCode::PageUp));
        serve_catalog(&mut app, n, n);
        let top = app.catalog.top;
        assert_eq!(id_at(&app, top), Some(3 * top + 1));
    }
    update(&mut app, key('g'));
    assert!(app.effects.iter().any(|e| matches!(
        e,
        Effect::LoadCatalog {
            offset: 0,
            after_id: 0,
            ..
        }
    )));
    serve_catalog(&mut app, n, n);
    assert_eq!(id_at(&app, 0), Some(1));
}

#[test]
fn catalog_counts_again_from_the_top_when_the_list_changed_under_it() {
    let n = 50_000;
    let mut app = App::new(opts(Some("catalog"), false), now(), (120, 40));
    serve_catalog(&mut app, n, n);
    for _ in 0..30 {
        update(&mut app, code(KeyCode::PageDown));
        serve_catalog(&mut app, n, n);
    }
    let (selected, generation) = (app.catalog.selected, app.catalog.generation);
    assert!(app.catalog.page_offset > 0);
    // A refresh whose counts moved: the page's row numbers cannot be trusted.
    update(&mut app, Action::Refresh);
    let queries = serve_catalog(&mut app, n, n - 1);
    assert!(queries >= 2, "{queries}");
    assert_ne!(app.catalog.generation, generation);
    assert_eq!(
        app.catalog.selected, selected,
        "the position on screen stays"
    );
    assert_eq!(app.catalog.unmirrored, Some(n - 1));
    // Unchanged counts: one query for the rows on screen.
    update(&mut app, Action::Refresh);
    assert_eq!(serve_catalog(&mut app, n, n - 1), 1);
}

#[test]
fn fleet_view_loads_on_8_and_refresh_and_marks_gone_replicas() {
    let mut app = app_at(None, (120, 40));
    update(&mut app, key('8'));
    assert_eq!(app.view, View::Fleet);
    assert!(matches!(app.effects.as_slice(), [Effect::LoadFleet]));
    assert!(app.fleet.loading);
    app.effects.clear();
    update(&mut app, Action::FleetLoaded(Ok(Box::new(fleet_report()))));
    assert!(!app.fleet.loading);
    // The periodic refresh asks again.
    update(&mut app, Action::Refresh);
    assert!(matches!(app.effects.as_slice(), [Effect::LoadFleet]));
    app.effects.clear();

    // The gone replica's status is in the theme's error colour, its row in the warning one.
    let backend = TestBackend::new(app.width, app.height);
    let mut terminal = Terminal::new(backend).unwrap_or_else(|e| panic!("{e}"));
    terminal
        .draw(|f| view::render(&app, f))
        .unwrap_or_else(|e| panic!("{e}"));
    let buf = terminal.backend().buffer();
    let text = screen(buf);
    let (y, line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("web3-1203-77aa01"))
        .unwrap_or_else(|| panic!("no gone replica on screen:\n{text}"));
    let x = line
        .find("gone")
        .map(|b| line[..b].chars().count())
        .unwrap_or_else(|| panic!("no status on {line:?}"));
    assert_eq!(buf[(x as u16, y as u16)].style().fg, app.theme.bad.fg);
    let id_x = line
        .find("web3")
        .map(|b| line[..b].chars().count())
        .unwrap_or(0);
    assert_eq!(buf[(id_x as u16, y as u16)].style().fg, app.theme.warn.fg);
    let (uy, uline) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("web2-977-0f9e8d"))
        .unwrap_or_else(|| panic!("no up replica on screen:\n{text}"));
    let ux = uline
        .find(" up ")
        .map(|b| uline[..b].chars().count() + 1)
        .unwrap_or(0);
    assert_eq!(buf[(ux as u16, uy as u16)].style().fg, app.theme.good.fg);

    // `:fleet` and `mirrorctl fleet` open it too; a failed load is a notification.
    let mut app = app_at(None, (80, 24));
    update(&mut app, key(':'));
    typed(&mut app, "fleet");
    update(&mut app, code(KeyCode::Enter));
    assert_eq!(app.view, View::Fleet);
    update(
        &mut app,
        Action::FleetLoaded(Err("database x: unreachable".into())),
    );
    assert_eq!(app.fleet.error.as_deref(), Some("database x: unreachable"));
    assert!(app
        .notifications
        .iter()
        .any(|n| n.level == Level::Error && n.text.contains("fleet: database x")));
    let app = App::new(opts(Some("fleet"), false), now(), (80, 24));
    assert_eq!(app.view, View::Fleet);
    assert!(app.effects.iter().any(|e| matches!(e, Effect::LoadFleet)));
}

#[test]
fn tab_bar_shortens_the_names_when_they_do_not_fit() {
    let wide = draw(&app_at(None, (120, 40)));
    let first = wide.lines().next().unwrap_or_default().to_string();
    assert!(
        first.starts_with(" mirrorctl ") && first.ends_with(" 8 Fleet  9 Replication"),
        "{first}"
    );
    let narrow = draw(&app_at(None, (80, 24)));
    let first = narrow.lines().next().unwrap_or_default().to_string();
    assert_eq!(
        first,
        " 1 Dash  2 Files  3 Jobs  4 Drift  5 Arch  6 Hist  7 Cat  8 Fleet  9 Repl"
    );
    // A click lands on the tab drawn there, at either width.
    for (w, x) in [(80u16, 71u16), (120, 100)] {
        let mut app = app_at(None, (w, 24));
        update(
            &mut app,
            Action::Mouse(MouseEvent {
                kind: MouseEventKind::Down(MouseButton::Left),
                column: x,
                row: 0,
                modifiers: KeyModifiers::NONE,
            }),
        );
        assert_eq!(app.view, View::Replication, "click at {x} of {w}");
    }
}

#[test]
fn replication_view_loads_samples_and_retries_through_a_confirmation() {
    let mut app = app_at(None, (120, 40));
    update(&mut app, key('9'));
    assert_eq!(app.view, View::Replication);
    assert!(matches!(app.effects.as_slice(), [Effect::LoadReplication]));
    assert!(app.replication.loading);
    assert!(draw(&app).contains("loading…"));
    app.effects.clear();
    update(
        &mut app,
        Action::ReplicationLoaded(Ok(Box::new(replication_status()))),
    );
    assert!(!app.replication.loading);
    assert_eq!(app.replication.samples.len(), 1);

    // Each refresh is a sample; the ring keeps the newest REPLICATION_SAMPLES.
    for i in 1..=(super::app::REPLICATION_SAMPLES as i64 + 10) {
        update(&mut app, Action::Refresh);
        assert!(matches!(app.effects.as_slice(), [Effect::LoadReplication]));
        app.effects.clear();
        let mut s = replication_status();
        s.generated_at = now() + TimeDelta::seconds(5 * i);
        s.pending = i;
        update(&mut app, Action::ReplicationLoaded(Ok(Box::new(s))));
    }
    let samples = &app.replication.samples;
    assert_eq!(samples.len(), super::app::REPLICATION_SAMPLES);
    assert_eq!(samples.back().map(|x| x.pending), Some(130));
    assert_eq!(samples.front().map(|x| x.pending), Some(11));
    // Behind another view the figures are still sampled, one query at a time.
    update(&mut app, key('1'));
    app.effects.clear();
    update(&mut app, Action::Refresh);
    assert_eq!(
        app.effects
            .iter()
            .filter(|e| matches!(e, Effect::LoadReplication))
            .count(),
        1
    );
    update(&mut app, Action::Refresh);
    assert_eq!(
        app.effects
            .iter()
            .filter(|e| matches!(e, Effect::LoadReplication))
            .count(),
        1,
        "a second sample was asked for while the first was in flight"
    );
    update(
        &mut app,
        Action::ReplicationLoaded(Err("database x: unreachable".into())),
    );
    assert!(app.notifications.is_empty(), "{:?}", app.notifications);
    update(&mut app, key('9'));
    app.effects.clear();
    update(
        &mut app,
        Action::ReplicationLoaded(Ok(Box::new(replication_status()))),
    );

    // Failed first, selectable; the figures that need looking at are coloured.
    let text = draw(&app);
    assert!(
        text.contains("Troubled tasks 2 failed, 2 retrying"),
        "{text}"
    );
    let backend = TestBackend::new(app.width, app.height);
    let mut terminal = Terminal::new(backend).unwrap_or_else(|e| panic!("{e}"));
    terminal
        .draw(|f| view::render(&app, f))
        .unwrap_or_else(|e| panic!("{e}"));
    let buf = terminal.backend().buffer();
    let at = |needle: &str| {
        text.lines()
            .enumerate()
            .find_map(|(y, l)| {
                l.find(needle)
                    .map(|b| (l[..b].chars().count() as u16, y as u16))
            })
            .unwrap_or_else(|| panic!("{needle:?} not on screen:\n{text}"))
    };
    assert_eq!(buf[at("2m 3s")].style().fg, app.theme.warn.fg);
    assert_eq!(buf[at("2 tasks")].style().fg, app.theme.bad.fg);
    update(&mut app, code(KeyCode::Down));
    update(&mut app, code(KeyCode::Down));
    assert_eq!(app.replication.selected, 2);
    update(&mut app, key('G'));
    assert_eq!(app.replication.selected, 3);
    update(&mut app, key('g'));
    // A click selects the task drawn on that row, at both sizes.
    for size in [(80, 24), (120, 40)] {
        let mut small = replication_app(size, 3);
        let text = draw(&small);
        let y = text
            .lines()
            .position(|l| l.contains(" 1529 pending"))
            .unwrap_or_else(|| panic!("task 1529 not on screen:\n{text}"));
        update(
            &mut small,
            Action::Mouse(MouseEvent {
                kind: MouseEventKind::Down(MouseButton::Left),
                column: 10,
                row: y as u16,
                modifiers: KeyModifiers::NONE,
            }),
        );
        assert_eq!(
            small.replication.selected, 3,
            "click at row {y} of {size:?}"
        );
    }

    // r: the selected task, through a dry run and the confirmation.
    update(&mut app, key('r'));
    let Some(Effect::Preview(op)) = app.effects.pop() else {
        panic!("r asked for no preview: {:?}", app.effects);
    };
    assert!(matches!(&op, OpRequest::ReplicationRetry { ids, .. } if ids == &[412]));
    assert_eq!(
        op.headless_command(),
        "mirrorctl --headless replication retry --ids 412"
    );
    // R: every failed task; the count of the dry run and the headless command are shown.
    update(&mut app, key('R'));
    let Some(Effect::Preview(op)) = app.effects.pop() else {
        panic!("R asked for no preview");
    };
    assert_eq!(op, OpRequest::ReplicationRetryFailed);
    assert!(op.mutating());
    update(
        &mut app,
        Action::PreviewLoaded {
            op,
            result: Ok(Preview {
                lines: vec![],
                count: Some(2),
                bytes: Some(1024),
                price: Vec::new(),
            }),
        },
    );
    let text = draw(&app);
    assert!(text.contains("Affects:  2 tasks, 1 KiB"), "{text}");
    assert!(
        text.contains("mirrorctl --headless replication retry --failed"),
        "{text}"
    );
    update(&mut app, key('y'));
    assert!(app.effects.iter().any(|e| matches!(
        e,
        Effect::StartJob {
            op: OpRequest::ReplicationRetryFailed,
            ..
        }
    )));
    assert_eq!(app.view, View::Jobs);
    let id = app.jobs[0].id;
    update(&mut app, key('9'));
    app.effects.clear();
    update(
        &mut app,
        Action::JobDone {
            id,
            result: Ok("requeued 2 tasks".into()),
        },
    );
    assert!(matches!(app.effects.as_slice(), [Effect::LoadReplication]));

    // `:replication retry failed`, and `mirrorctl replication retry --ids 7,8` opens on it.
    let mut app = app_at(None, (80, 24));
    update(&mut app, key(':'));
    typed(&mut app, "replication retry failed");
    update(&mut app, code(KeyCode::Enter));
    assert_eq!(app.view, View::Replication);
    assert!(app
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Preview(OpRequest::ReplicationRetryFailed))));
    let app = App::new(opts(Some("replication retry 7,8"), false), now(), (80, 24));
    assert_eq!(app.view, View::Replication);
    assert!(app.effects.iter().any(|e| matches!(e,
        Effect::Preview(OpRequest::ReplicationRetry { ids, .. }) if ids == &[7, 8])));

    // Read-only: both refused before any dry run.
    let mut ro = App::new(opts(Some("replication"), true), now(), (80, 24));
    ro.effects.clear();
    update(
        &mut ro,
        Action::ReplicationLoaded(Ok(Box::new(replication_status()))),
    );
    for k in ['r', 'R'] {
        update(&mut ro, key(k));
        assert!(ro.effects.is_empty(), "{k} in read-only: {:?}", ro.effects);
        let n = ro.notifications.last().map(|n| n.text.clone());
        assert!(
            n.as_deref()
                .is_some_and(|n| n.contains("refused: retry is not allowed in read-only mode")),
            "{n:?}"
        );
    }

    // Nothing replicated: the empty state says where tasks come from; r has nothing to retry.
    let mut empty = app_at(Some("replication"), (80, 24));
    update(
        &mut empty,
        Action::ReplicationLoaded(Ok(Box::new(idle_replication()))),
    );
    assert!(draw(&empty).contains("writes through the S3 front (serve.s3_listen)"));
    update(&mut empty, key('r'));
    assert!(empty.effects.is_empty());
    // Once tasks were seen, a drained queue shows its figures and trends, not the empty state.
    let mut drained = replication_app((80, 24), 5);
    update(
        &mut drained,
        Action::ReplicationLoaded(Ok(Box::new(idle_replication()))),
    );
    let text = draw(&drained);
    assert!(text.contains("No task failed"), "{text}");
    assert!(!text.contains("serve.s3_listen"), "{text}");
}

/// Starts a validate job through its confirmation; returns the app on the Jobs view.
fn app_with_running_job() -> App {
    let mut app = app_at(None, (100, 30));
    update(
        &mut app,
        Action::PreviewLoaded {
            op: OpRequest::Validate,
            result: Ok(Preview {
                lines: vec![],
                count: Some(3),
                bytes: None,
                price: Vec::new(),
            }),
        },
    );
    update(&mut app, key('y'));
    assert_eq!(app.jobs[0].state, JobState::Running);
    app.effects.clear();
    app
}

#[test]
fn quitting_with_a_running_job_asks_and_a_confirmed_quit_cancels_it_first() {
    let mut app = app_with_running_job();
    update(&mut app, key('q'));
    assert!(!app.quit, "a running job must not be killed without asking");
    assert!(matches!(app.mode, Mode::QuitConfirm { .. }));
    let text = draw(&app);
    assert!(text.contains("Quit?") && text.contains("#1 "), "{text}");
    // n stays, nothing cancelled.
    update(&mut app, key('n'));
    assert_eq!(app.mode, Mode::Normal);
    assert!(!app.quit && app.effects.is_empty());
    assert_eq!(app.jobs[0].state, JobState::Running);
    // y cancels the job, and the app waits for it to end before quitting.
    update(&mut app, key('q'));
    update(&mut app, key('y'));
    assert!(app
        .effects
        .iter()
        .any(|e| matches!(e, Effect::CancelJob(1))));
    assert_eq!(app.jobs[0].state, JobState::Cancelling);
    assert!(!app.quit);
    update(&mut app, Action::Tick(now() + TimeDelta::seconds(1)));
    assert!(!app.quit, "quits only once the cancelled job has ended");
    update(
        &mut app,
        Action::JobDone {
            id: 1,
            result: Err("cancelled".into()),
        },
    );
    assert!(app.quit);
}

#[test]
fn a_confirmed_quit_gives_up_waiting_after_its_grace_and_ctrl_c_forces_it() {
    let mut app = app_with_running_job();
    typed(&mut app, ":q!");
    update(&mut app, code(KeyCode::Enter));
    assert_eq!(app.jobs[0].state, JobState::Cancelling);
    assert!(!app.quit);
    update(&mut app, Action::Tick(now() + TimeDelta::seconds(16)));
    assert!(app.quit, "a job that never ends does not keep the UI open");

    let mut app = app_with_running_job();
    let ctrl_c = || Action::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    update(&mut app, ctrl_c());
    assert!(matches!(app.mode, Mode::QuitConfirm { .. }));
    update(&mut app, ctrl_c());
    assert!(!app.quit && app.quitting.is_some());
    update(&mut app, ctrl_c());
    assert!(app.quit);

    // Without running jobs, q quits at once.
    let mut app = app_at(None, (80, 24));
    update(&mut app, key('q'));
    assert!(app.quit);
}

#[test]
fn drift_view_shows_the_latest_run_from_the_audit_log_with_zoned_times() {
    let mut app = app_at(Some("drift"), (100, 30));
    let mut data = dashboard_data();
    data.latest_drift_run = Some(OperationRecord {
        id: 41,
        kind: "drift".into(),
        params: serde_json::json!({}),
        operator: "oncall@mirror-1".into(),
        started_at: now() - TimeDelta::minutes(7),
        finished_at: Some(now() - TimeDelta::minutes(5)),
        status: "found_problems".into(),
        summary: Some(serde_json::json!({
            "summary": { "same": 2040, "missing_in_backup": 12, "differ": 3 },
            "elapsed_seconds": 1.5
        })),
    });
    update(&mut app, Action::StatsLoaded(Ok(Box::new(data.clone()))));
    let text = draw(&app);
    let at = (now() - TimeDelta::minutes(5)).format("%Y-%m-%d %H:%M UTC");
    assert!(
        text.contains(&format!("Last run:  {at} (5m ago)")),
        "{text}"
    );
    assert!(text.contains("found_problems"), "{text}");
    assert!(text.contains("Latest run #41"), "{text}");
    assert!(text.contains("missing in backup 12"), "{text}");

    // With tui.timezone = "local" the label is the offset, never a bare time.
    let mut app = App::new(
        Options {
            timezone: crate::config::TimeZoneName::Local,
            ..opts(Some("drift"), false)
        },
        now(),
        (100, 30),
    );
    update(&mut app, Action::StatsLoaded(Ok(Box::new(data))));
    let local = (now() - TimeDelta::minutes(5))
        .with_timezone(&chrono::Local)
        .format("%Y-%m-%d %H:%M %:z")
        .to_string();
    let text = draw(&app);
    assert!(text.contains(&local), "{local} in {text}");

    // After a job finishes, the view asks for the audit log again.
    let mut app = app_at(Some("drift"), (100, 30));
    app.effects.clear();
    update(
        &mut app,
        Action::PreviewLoaded {
            op: OpRequest::Validate,
            result: Ok(Preview {
                lines: vec![],
                count: None,
                bytes: None,
                price: Vec::new(),
            }),
        },
    );
    update(&mut app, key('y'));
    app.effects.clear();
    update(
        &mut app,
        Action::JobDone {
            id: 1,
            result: Ok("ok".into()),
        },
    );
    assert!(app
        .effects
        .iter()
        .any(|e| matches!(e, Effect::LoadStats(_))));
}

#[test]
fn dashboard_shows_costs_and_paints_breached_thresholds() {
    use crate::engine::ops::check::Status;
    let data = dashboard_with_alerts();
    let report = data
        .check
        .clone()
        .unwrap_or_else(|| panic!("no check report"));
    assert_eq!(report.status_of("hit_rate"), Some(Status::Critical));
    assert_eq!(report.status_of("storage_cost"), Some(Status::Warning));
    assert_eq!(report.status_of("validation_age"), Some(Status::Critical));
    assert_eq!(report.status_of("error_rate"), Some(Status::Ok));
    for size in [(80, 24), (120, 40)] {
        let mut app = app_at(None, size);
        update(&mut app, Action::StatsLoaded(Ok(Box::new(data.clone()))));
        let backend = TestBackend::new(app.width, app.height);
        let mut terminal = Terminal::new(backend).unwrap_or_else(|e| panic!("{e}"));
        terminal
            .draw(|f| view::render(&app, f))
            .unwrap_or_else(|e| panic!("{e}"));
        let buf = terminal.backend().buffer();
        let text = screen(buf);
        let at = |needle: &str| -> (u16, u16) {
            text.lines()
                .enumerate()
                .find_map(|(y, l)| {
                    l.find(needle)
                        .map(|b| (l[..b].chars().count() as u16, y as u16))
                })
                .unwrap_or_else(|| panic!("{needle:?} not on screen:\n{text}"))
        };
        // Storage: 16.441 MB × 5,000 a GB-month; saved: 14.282 MB × 90 a GB − 1,612 GETs × 0.4/1000.
        assert_eq!(buf[at("82.20 USD")].style().fg, app.theme.warn.fg, "{text}");
        assert_eq!(buf[at("0.64 USD")].style().fg, app.theme.good.fg, "{text}");
        assert_eq!(buf[at("93.9%")].style().fg, app.theme.bad.fg, "{text}");
        assert_eq!(buf[at("42m ago")].style().fg, app.theme.bad.fg, "{text}");
        assert_eq!(buf[at("7 (0.4%)")].style().fg, app.theme.text.fg, "{text}");
        assert_eq!(buf[at("2 critical")].style().fg, app.theme.bad.fg, "{text}");
        assert_eq!(buf[at("1 warning")].style().fg, app.theme.warn.fg, "{text}");
    }
    // Without [alerts] and [costs] the dashboard is as before: no cost lines, no badges.
    let mut app = app_at(None, (120, 40));
    update(
        &mut app,
        Action::StatsLoaded(Ok(Box::new(dashboard_data()))),
    );
    let text = draw(&app);
    assert!(
        !text.contains("Cost/month") && !text.contains("critical"),
        "{text}"
    );
}
