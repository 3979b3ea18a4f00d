//! The mutation lock as a lease, `lock status` / `lock release`, and audit rows of a process
//! that died becoming `interrupted`, on SQLite and PostgreSQL. The holder is a real second
//! process (this test binary re-run as `child_process_holding_the_lock`), killed with SIGKILL
//! to simulate a crash; the CLI is the real binary.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use mirrorctl::config::Config;
use mirrorctl::engine::db::{holder_id, Db};
use mirrorctl::engine::jobs::{audited, Progress, Report};
use mirrorctl::engine::Ctx;

use common::TestDb;

/// The lease the child and the CLI use: short, so that a killed holder expires quickly.
const LEASE: &str = "2s";
const LEASE_S: u64 = 2;
const CHILD_ENV: &str = "MIRRORCTL_TEST_LOCK_CHILD_URL";
/// `MIRRORCTL_OPERATOR` of the child; the operator is `carol@<host>`.
const CHILD_OPERATOR: &str = "carol";

#[derive(serde::Serialize)]
struct Done;
impl Report for Done {}

/// Not a test: the process other tests start (with `CHILD_ENV` set) to hold the lock. It takes
/// the lock for a `purge` inside an audited operation, says READY, and works until its
/// operation is cancelled (the lock taken away) or it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process started by the other tests"]
async fn child_process_holding_the_lock() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    let db = Db::connect(&url, 4, Duration::from_secs(5))
        .await
        .expect("child connects")
        .with_lock_lease(Duration::from_secs(LEASE_S));
    let ctx = Ctx::new(Config::default(), db, false);
    let progress = Progress::none();
    let out = audited(
        &ctx,
        "purge",
        &serde_json::json!({"stale": true}),
        true,
        &progress,
        || async {
            println!("READY");
            loop {
                progress.check()?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            #[allow(unreachable_code)]
            Ok(Done)
        },
    )
    .await;
    match out {
        Ok(_) => println!("DONE"),
        Err(e) => println!("ENDED: {e}"),
    }
}

/// A child process holding the lock; killed on drop.
struct Holder {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Holder {
    fn start(url: &str) -> Holder {
        let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "child_process_holding_the_lock",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_ENV, url)
            .env("MIRRORCTL_OPERATOR", CHILD_OPERATOR)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the child");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.trim() == "READY" => break,
                Some(Ok(_)) => {}
                other => panic!("the child ended before taking the lock: {other:?}"),
            }
        }
        Holder { child, lines }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `host:pid` as the lock row names the child.
    fn holder(&self) -> String {
        let me = holder_id();
        let host = me.rsplit_once(':').expect("host:pid").0;
        format!("{host}:{}", self.pid())
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL: no cleanup runs
        let _ = self.child.wait();
    }

    /// Waits for the child to end by itself; returns what it printed last.
    fn wait_for_end(&mut self, within: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let rest: Vec<String> = self.lines.by_ref().map_while(|l| l.ok()).collect();
                assert!(status.success(), "child failed: {status:?} {rest:?}");
                return rest.join("\n");
            }
            assert!(
                start.elapsed() < within,
                "the child still runs after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config_file(dir: &Path, url: &str) -> PathBuf {
    common::write_config_file(
        dir,
        &format!(
            "[database]\nurl = \"{url}\"\nlock_lease = \"{LEASE}\"\n\n\
             [buckets.mirror]\nbucket = \"unused\"\nendpoint = \"http://127.0.0.1:9\"\npath_style = true\n"
        ),
    )
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

fn run(config: &Path, args: &[&str]) -> Out {
    let out = common::command(config)
        .arg("--headless")
        .args(args)
        .output()
        .expect("run mirrorctl");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The `operations` row the child wrote (the only `purge`).
fn child_operation(config: &Path) -> serde_json::Value {
    let h = run(config, &["history", "-o", "json"]);
    assert_eq!(h.code, 0, "{}", h.stderr);
    h.json()
        .as_array()
        .expect("array")
        .iter()
        .find(|o| o["kind"] == "purge")
        .cloned()
        .expect("the child's purge row")
}

fn lock_status(config: &Path) -> serde_json::Value {
    let s = run(config, &["lock", "status", "-o", "json"]);
    assert_eq!(s.code, 0, "{}", s.stderr);
    s.json()
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_expires_and_its_operation_becomes_interrupted() {
    for t in TestDb::all().await {
        let backend = if t.url.starts_with("sqlite:") {
            "sqlite"
        } else {
            "postgres"
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let config = config_file(dir.path(), &t.url);

        // Nothing held: status says free, release says so and exits 0.
        let s = lock_status(&config);
        assert_eq!(s["state"], "free", "{backend}: {s}");
        assert_eq!(s["held"], false);
        let r = run(&config, &["lock", "release"]);
        assert_eq!(r.code, 0, "{backend}: {}", r.stderr);
        assert_eq!(r.stdout.trim(), "no lock is held");

        let mut holder = Holder::start(&t.url);

        // A live holder blocks a second acquirer with the contract's message.
        let e =
            t.db.acquire_lock("remirror", "bob@ops2")
                .await
                .err()
                .expect("busy while the child holds it");
        assert_eq!(e.exit_code(), 1);
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("busy: purge started by {CHILD_OPERATOR}@")),
            "{backend}: {msg}"
        );
        assert!(msg.contains(&holder.holder()), "{backend}: {msg}");

        // `lock status` names the holder and sees it alive.
        let s = lock_status(&config);
        assert_eq!(s["backend"], backend);
        assert_eq!(s["state"], "held", "{backend}: {s}");
        assert_eq!(s["held"], true);
        assert_eq!(s["holder_alive"], true);
        assert_eq!(s["holder"], holder.holder().as_str());
        assert_eq!(s["kind"], "purge");
        assert!(
            s["operator"]
                .as_str()
                .is_some_and(|o| o.starts_with(&format!("{CHILD_OPERATOR}@"))),
            "{s}"
        );
        assert!(s["operation_id"].is_i64(), "{s}");
        if backend == "postgres" {
            assert!(s["session"]["pid"].is_i64(), "{s}");
            assert_eq!(s["session"]["application_name"], "mirrorctl");
        }

        // Releasing a live holder's lock without --force is refused on one line, exit 2.
        let r = run(&config, &["lock", "release"]);
        assert_eq!(r.code, 2, "{backend}: {} {}", r.stdout, r.stderr);
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
        assert!(r.stderr.contains("live holder"), "{}", r.stderr);
        assert!(r.stderr.contains("--force"), "{}", r.stderr);

        // Past several leases the child keeps its lock and its row alive: a command starting
        // now leaves its `running` row alone.
        std::thread::sleep(Duration::from_secs(LEASE_S * 2));
        assert_eq!(lock_status(&config)["held"], true, "{backend}");
        let op = child_operation(&config);
        assert_eq!(op["status"], "running", "{backend}: {op}");

        // Crash: SIGKILL. The lease (SQLite) or the session (PostgreSQL) ends.
        holder.kill();
        wait_until(
            &format!("{backend}: the lock expires"),
            Duration::from_secs(LEASE_S * 3),
            || lock_status(&config)["held"] == false,
        );
        let s = lock_status(&config);
        assert_eq!(s["state"], "expired", "{backend}: {s}");
        assert_eq!(s["holder_alive"], false);

        // The next command's start closes the dead process's row as `interrupted`.
        wait_until(
            &format!("{backend}: the row becomes interrupted"),
            Duration::from_secs(LEASE_S * 3),
            || child_operation(&config)["status"] == "interrupted",
        );
        let op = child_operation(&config);
        assert!(op["finished_at"].is_string(), "{op}");
        assert!(
            op["summary"]["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("interrupted")),
            "{op}"
        );
        let table = run(&config, &["history"]);
        assert!(table.stdout.contains("interrupted"), "{}", table.stdout);

        // The expired lock blocks nobody: a new acquirer takes it over.
        let guard =
            t.db.acquire_lock("remirror", "bob@ops2")
                .await
                .expect("an expired lock is taken over");
        let s = lock_status(&config);
        assert_eq!(s["kind"], "remirror");
        assert_eq!(s["operator"], "bob@ops2");
        assert_eq!(s["held"], true);
        guard.release().await.expect("release");
        assert_eq!(lock_status(&config)["state"], "free", "{backend}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_removes_a_dead_holders_lock_and_force_takes_a_live_ones() {
    for t in TestDb::all().await {
        let backend = if t.url.starts_with("sqlite:") {
            "sqlite"
        } else {
            "postgres"
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let config = config_file(dir.path(), &t.url);

        // A dead holder's row: release removes it without --force.
        let mut holder = Holder::start(&t.url);
        holder.kill();
        wait_until(
            &format!("{backend}: the lock expires"),
            Duration::from_secs(LEASE_S * 3),
            || lock_status(&config)["held"] == false,
        );
        let r = run(&config, &["lock", "release", "-o", "json"]);
        assert_eq!(r.code, 0, "{backend}: {}", r.stderr);
        let j = r.json();
        assert_eq!(j["released"], true, "{j}");
        assert_eq!(j["forced"], false);
        assert_eq!(j["before"]["state"], "expired");
        assert_eq!(lock_status(&config)["state"], "free");

        // Read-only mode refuses a release.
        let mut holder = Holder::start(&t.url);
        let r = run(&config, &["--read-only", "lock", "release", "--force"]);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stderr.contains("read-only"), "{}", r.stderr);
        assert_eq!(lock_status(&config)["held"], true);

        // --force takes a live holder's lock: the holder stops its operation.
        let r = run(&config, &["lock", "release", "--force", "-o", "json"]);
        assert_eq!(r.code, 0, "{backend}: {} {}", r.stdout, r.stderr);
        let j = r.json();
        assert_eq!(j["released"], true, "{j}");
        assert_eq!(j["forced"], true);
        assert_eq!(j["before"]["holder"], holder.holder().as_str());
        if backend == "postgres" {
            assert!(j["terminated_backend"].is_i64(), "{j}");
            assert!(
                j["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("terminated PostgreSQL backend")),
                "{j}"
            );
        }
        let last = holder.wait_for_end(Duration::from_secs(LEASE_S * 3));
        assert!(
            last.contains("ENDED: stopped: the mutation lock was taken away"),
            "{backend}: {last}"
        );
        let op = child_operation(&config);
        assert_eq!(op["status"], "failed", "{backend}: {op}");
        assert_eq!(lock_status(&config)["state"], "free", "{backend}");

        // Both releases are in the audit log (the read-only refusal did nothing: no row).
        let h = run(&config, &["history", "-o", "json"]).json();
        let releases: Vec<&serde_json::Value> = h
            .as_array()
            .expect("array")
            .iter()
            .filter(|o| o["kind"] == "lock_release")
            .collect();
        assert_eq!(releases.len(), 2, "{backend}: {h}");
        assert!(releases.iter().all(|o| o["status"] == "ok"), "{h}");
        assert_eq!(releases[0]["params"]["force"], true, "{h}");
        assert_eq!(releases[1]["params"]["force"], false, "{h}");
    }
}

/// Two processes racing for an expired SQLite lease: exactly one wins; a holder elsewhere
/// blocks until its lease ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_sqlite_lease_is_taken_over_by_one_acquirer() {
    let t = TestDb::sqlite().await;
    let old = Utc::now() - chrono::Duration::minutes(5);
    sqlx::query(
        "INSERT INTO operation_lock (name, kind, operator, holder, started_at, token, heartbeat_at, expires_at) \
         VALUES ('mutation', 'archive', 'dave@gone', 'gone-host:1', $1, 'dead', $1, $2)",
    )
    .bind(old)
    .bind(old + chrono::Duration::seconds(60))
    .execute(&sqlite_pool(&t.url).await)
    .await
    .expect("write an expired lock row");
    for round in 0..5 {
        let mut pools = Vec::new();
        for _ in 0..4 {
            pools.push(
                Db::connect(&t.url, 2, Duration::from_secs(5))
                    .await
                    .expect("connect"),
            );
        }
        let tries = pools
            .iter()
            .map(|db| db.acquire_lock("purge", "racer"))
            .collect::<Vec<_>>();
        let results = futures::future::join_all(tries).await;
        let mut won = Vec::new();
        for r in results {
            match r {
                Ok(g) => won.push(g),
                Err(e) => assert!(
                    e.to_string()
                        .starts_with("busy: purge started by racer at "),
                    "round {round}: {e}"
                ),
            }
        }
        assert_eq!(won.len(), 1, "round {round}: one winner");
        // Leave an expired row again for the next round.
        for g in won {
            g.release().await.expect("release");
        }
        sqlx::query(
            "INSERT INTO operation_lock (name, kind, operator, holder, started_at, token, heartbeat_at, expires_at) \
             VALUES ('mutation', 'archive', 'dave@gone', 'gone-host:1', $1, 'dead', $1, $2)",
        )
        .bind(old)
        .bind(old + chrono::Duration::seconds(60))
        .execute(&sqlite_pool(&t.url).await)
        .await
        .expect("write an expired lock row");
    }
    // A holder in another container (a host and PID namespace this process cannot look
    // into) blocks until its lease ends, then is taken over.
    let now = Utc::now();
    sqlx::query(
        "UPDATE operation_lock SET holder = 'other-container:1', \
         token = 'other-container:1:4026531836:100:00ff', heartbeat_at = $1, expires_at = $2",
    )
    .bind(now)
    .bind(now + chrono::Duration::seconds(3))
    .execute(&sqlite_pool(&t.url).await)
    .await
    .expect("a fresh foreign lease");
    let e =
        t.db.acquire_lock("purge", "erin")
            .await
            .err()
            .expect("a fresh lease of a holder elsewhere blocks");
    assert!(e.to_string().contains("other-container:1"), "{e}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let g =
        t.db.acquire_lock("purge", "erin")
            .await
            .expect("its lease ended: taken over");
    g.release().await.expect("release");
    sqlx::query(
        "INSERT INTO operation_lock (name, kind, operator, holder, started_at, token) \
         VALUES ('mutation', 'archive', 'dave@gone', 'gone-host:1', $1, 'dead')",
    )
    .bind(old)
    .execute(&sqlite_pool(&t.url).await)
    .await
    .expect("write a row without a lease");

    // A row without a lease (written before leases existed) counts as expired too.
    sqlx::query("UPDATE operation_lock SET heartbeat_at = NULL, expires_at = NULL")
        .execute(&sqlite_pool(&t.url).await)
        .await
        .expect("strip the lease");
    let g =
        t.db.acquire_lock("purge", "erin")
            .await
            .expect("a row without a lease is taken over");
    g.release().await.expect("release");
}

async fn sqlite_pool(url: &str) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect(url).await.expect("sqlite pool")
}
