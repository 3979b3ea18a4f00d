//! `validate` at scale, against real servers over real sockets (s3s-fs in-process and Garage
//! out of process, SQLite and PostgreSQL, an HTTP origin on loopback): a file the origin or the
//! mirror cannot answer for is that file's error and the run goes on; an `--all` run whose
//! listing fails for good stops with a checkpoint that `--resume` continues from, checking only
//! the files after it; rows whose result did not change are only stamped, in one statement per
//! batch. Faults the servers will not produce on demand come from a loopback proxy in front of
//! the real S3 server.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use common::origin::{sha256, start_origin, Origin};
use common::proxy::FaultProxy;
use common::{S3Server, TestDb};
use futures::{StreamExt, TryStreamExt};
use mirrorctl::config::{BucketConfig, Config, HumanDuration};
use mirrorctl::engine::jobs::{Progress, Report};
use mirrorctl::engine::model::{NewMirroredFile, NewOriginFile};
use mirrorctl::engine::ops::validate::{self, ValidateParams, ValidateStatus};
use mirrorctl::engine::s3::S3Bucket;
use mirrorctl::engine::Ctx;

/// A mirror of `n` small files, all fresh: each at the origin, uploaded to a new bucket and
/// recorded. The program reaches the bucket through a fault proxy; the test also directly.
struct Fixture {
    label: String,
    db: TestDb,
    origin_url: String,
    origin: Arc<Origin>,
    proxy: FaultProxy,
    /// The bucket as the program sees it: through the proxy.
    bucket_cfg: BucketConfig,
    /// The bucket itself.
    bucket: S3Bucket,
    ids: Vec<i64>,
    /// Keys in byte order, `keys[i]` the key of `ids[i]`.
    keys: Vec<String>,
}

/// The state of a row that validation reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
struct RowState {
    key: String,
    is_stale: bool,
    stale_reason: Option<String>,
    last_validated_at: Option<DateTime<Utc>>,
}

impl Fixture {
    async fn new(server: &S3Server, db: TestDb, n: usize) -> Fixture {
        let label = format!(
            "{} / {}",
            server.name,
            db.url.split(':').next().unwrap_or("")
        );
        let (origin_url, origin) = start_origin().await;
        let (direct, bucket) = server.new_bucket("vs").await;
        let proxy = FaultProxy::start(&server.endpoint).await;
        let mut bucket_cfg = direct;
        bucket_cfg.endpoint = Some(proxy.endpoint.clone());
        let keys: Vec<String> = (0..n).map(|i| format!("f/{i:05}.bin")).collect();
        let bodies: Vec<Bytes> = (0..n).map(|i| body(i, 0)).collect();
        {
            let mut files = origin.files.lock().expect("origin files");
            for (k, b) in keys.iter().zip(&bodies) {
                files.insert(k.clone(), b.clone());
            }
        }
        futures::stream::iter(keys.iter().zip(&bodies))
            .map(|(k, b)| bucket.put_bytes(k, b.clone(), None))
            .buffer_unordered(16)
            .try_collect::<Vec<_>>()
            .await
            .expect("upload");
        let mut f = Fixture {
            label,
            db,
            origin_url,
            origin,
            proxy,
            bucket_cfg,
            bucket,
            ids: Vec::new(),
            keys,
        };
        // The rows hold what the origin says (its ETag as its HEAD returns it).
        let origin_client = f.ctx(false).origin().await.expect("origin client").clone();
        let etags: Vec<Option<String>> = futures::stream::iter(f.keys.clone())
            .map(|k| {
                let o = origin_client.clone();
                async move {
                    o.head(&k)
                        .await
                        .map(|m| m.expect("the origin has the file").etag)
                }
            })
            .buffered(16)
            .try_collect()
            .await
            .expect("origin head");
        let origin_rows: Vec<NewOriginFile> = f
            .keys
            .iter()
            .zip(&bodies)
            .zip(etags)
            .enumerate()
            .map(|(i, ((k, b), etag))| NewOriginFile {
                source: "http".into(),
                remote_id: format!("r{i}"),
                file_name: k.clone(),
                url: k.clone(),
                size: Some(b.len() as i64),
                etag,
                updated_at: Utc::now(),
            })
            .collect();
        let origin_ids =
            f.db.db
                .insert_origin_files(&origin_rows)
                .await
                .expect("origin rows");
        let rows: Vec<NewMirroredFile> = f
            .keys
            .iter()
            .zip(&bodies)
            .zip(origin_ids)
            .map(|((k, b), origin_file_id)| NewMirroredFile {
                origin_file_id,
                bucket: f.bucket.name().to_string(),
                key: k.clone(),
                size: b.len() as i64,
                sha256: Some(sha256(b)),
                etag: None,
                mirrored_at: Utc::now(),
                is_stale: false,
                stale_reason: None,
            })
            .collect();
        f.ids =
            f.db.db
                .insert_mirrored_files(&rows)
                .await
                .expect("mirrored rows");
        f
    }

    fn config(&self) -> Config {
        let mut c = common::config(&self.db.url, self.bucket_cfg.clone());
        c.origin.base_url = Some(self.origin_url.clone());
        c.origin.retries = 0;
        c.origin.timeout = HumanDuration(Duration::from_secs(5));
        c
    }

    fn ctx(&self, read_only: bool) -> Ctx {
        Ctx::new(self.config(), self.db.db.clone(), read_only)
    }

    /// The origin serves new content (same size, new ETag) for file `i`.
    fn change_origin(&self, i: usize, version: u8) {
        self.origin
            .files
            .lock()
            .expect("origin files")
            .insert(self.keys[i].clone(), body(i, version));
    }

    /// Every live row, in key order.
    async fn rows(&self) -> Vec<RowState> {
        let sql = "SELECT key, is_stale, stale_reason, last_validated_at FROM mirrored_files \
                   WHERE deleted_at IS NULL";
        let mut rows: Vec<RowState> = if self.db.url.starts_with("sqlite:") {
            let pool = sqlx::SqlitePool::connect(&self.db.url)
                .await
                .expect("sqlite");
            sqlx::query_as(sql).fetch_all(&pool).await.expect("rows")
        } else {
            let pool = sqlx::PgPool::connect(&self.db.url).await.expect("postgres");
            sqlx::query_as(sql).fetch_all(&pool).await.expect("rows")
        };
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        rows
    }

    /// A config file for the binary: the same database, bucket (through the proxy) and origin.
    fn config_file(&self, dir: &Path) -> PathBuf {
        let b = &self.bucket_cfg;
        let text = format!(
            "[database]\nurl = {db:?}\n\n[buckets.mirror]\nbucket = {bucket:?}\nendpoint = {ep:?}\n\
             path_style = true\naccess_key_id = {key:?}\nsecret_access_key = {secret:?}\n\n\
             [origin]\nbase_url = {origin:?}\nretries = 0\n",
            db = self.db.url,
            bucket = b.bucket,
            ep = b.endpoint.clone().unwrap_or_default(),
            key = b
                .access_key_id
                .as_ref()
                .map(|k| k.expose())
                .unwrap_or_default(),
            secret = b
                .secret_access_key
                .as_ref()
                .map(|k| k.expose())
                .unwrap_or_default(),
            origin = self.origin_url,
        );
        common::write_config_file(dir, &text)
    }
}

/// The content of file `i` at `version` (0 to 9: the same size in every version).
fn body(i: usize, version: u8) -> Bytes {
    Bytes::from(format!("file {i:05}, version {version}\n").repeat(3))
}

fn all() -> ValidateParams {
    ValidateParams {
        all: true,
        ..Default::default()
    }
}

/// Runs the binary headless off the runtime (the servers it talks to live in this process).
async fn mirrorctl(config: &Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = common::command(config);
    cmd.arg("--headless").args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run mirrorctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// 1,100 files: more than one listing page (1,000 keys) and two write batches (500).
const MANY: usize = 1100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_that_fails_for_good_stops_the_run_and_resume_checks_only_the_rest() {
    for server in S3Server::all().await {
        for db in TestDb::all().await {
            let f = Fixture::new(&server, db, MANY).await;
            let label = f.label.clone();
            let bucket = f.bucket.name().to_string();
            let ctx = f.ctx(false);
            // The origin moves on for three files; the mirror loses two.
            for i in [10, 600, 1050] {
                f.change_origin(i, 1);
            }
            f.bucket
                .delete_batch(&[f.keys[20].clone(), f.keys[1060].clone()])
                .await
                .expect("delete");

            // The listing's second page keeps failing: the run stops, exit 1.
            f.proxy
                .faults
                .fail_continued_listings
                .store(true, Ordering::SeqCst);
            let err = validate::run(&ctx, all(), &Progress::none())
                .await
                .expect_err("a listing that fails for good stops the run");
            assert_eq!(err.exit_code(), 1, "{label}: {err}");
            assert!(
                err.to_string().contains("gave up after 4 attempts"),
                "{label}: {err}"
            );
            let ops = f.db.db.list_operations(1).await.expect("history");
            assert_eq!(ops[0].status, "failed", "{label}");

            // What was written is named by the checkpoint: a whole number of batches, at least
            // the first, and its counts are those of the files up to its key.
            let cp =
                f.db.db
                    .validate_checkpoint(&bucket)
                    .await
                    .expect("db")
                    .expect("a checkpoint");
            assert_eq!(cp.operation_id, ops[0].id, "{label}");
            let after = cp.after_key.clone().expect("a batch was recorded");
            let done = f.keys.iter().position(|k| *k == after).expect("a row key") + 1;
            assert_eq!(cp.counts.checked as usize, done, "{label}");
            assert!(
                done % 500 == 0 && done < MANY,
                "{label}: stopped after {done}"
            );
            let first_part: usize = [10, 20, 600, 1050, 1060]
                .iter()
                .filter(|&&i| i < done)
                .count();
            assert_eq!(cp.counts.newly_stale as usize, first_part, "{label}");
            let before = f.rows().await;
            for (i, r) in before.iter().enumerate() {
                assert_eq!(
                    r.last_validated_at.is_some(),
                    i < done,
                    "{label}: row {i} of a checkpoint after {done}"
                );
            }

            // Read-only mode cannot continue a run that records.
            let err = validate::run(
                &f.ctx(true),
                ValidateParams {
                    resume: true,
                    ..Default::default()
                },
                &Progress::none(),
            )
            .await
            .expect_err("read-only resume");
            assert_eq!(err.exit_code(), 2, "{label}: {err}");

            // Stamps have whole seconds: a second apart, the two runs' stamps tell them apart.
            f.proxy
                .faults
                .fail_continued_listings
                .store(false, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(1100)).await;
            let resumed_at = mirrorctl::engine::db::ts(Utc::now());
            let dir = tempfile::tempdir().expect("temp dir");
            let cfg = f.config_file(dir.path());
            let (code, out, err) = mirrorctl(&cfg, &["validate", "--resume", "-o", "json"]).await;
            assert_eq!(code, 3, "{label}: {out}{err}");
            assert!(
                err.contains(&format!(
                    "resuming validate --all from key {after:?}, {done} files already checked"
                )),
                "{label}: {err}"
            );
            let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
            // The counts are those of a full run over the starting state.
            for (k, n) in [
                ("checked", MANY),
                ("fresh", MANY - 5),
                ("stale", 3),
                ("missing_in_mirror", 2),
                ("newly_stale", 5),
                ("errors", 0),
            ] {
                assert_eq!(v[k].as_u64(), Some(n as u64), "{label}: {k} in {out}");
            }
            assert_eq!(
                v["resumed_from"]["after_key"].as_str(),
                Some(after.as_str())
            );
            assert_eq!(v["resumed_from"]["checked"].as_u64(), Some(done as u64));
            assert_eq!(
                v["resumed_from"]["operation_id"].as_i64(),
                Some(cp.operation_id)
            );

            // Exactly the files after the checkpoint were checked again.
            let resumed = f.rows().await;
            for (i, (was, now)) in before.iter().zip(&resumed).enumerate() {
                if i < done {
                    assert_eq!(
                        now.last_validated_at, was.last_validated_at,
                        "{label}: row {i}, before the checkpoint, was checked again"
                    );
                } else {
                    assert!(
                        now.last_validated_at.is_some_and(|t| t >= resumed_at),
                        "{label}: row {i}, after the checkpoint, was not checked: {now:?}"
                    );
                }
            }
            let marked: Vec<usize> = (0..MANY).filter(|&i| resumed[i].is_stale).collect();
            assert_eq!(marked, vec![10, 20, 600, 1050, 1060], "{label}");
            assert!(
                f.db.db
                    .validate_checkpoint(&bucket)
                    .await
                    .expect("db")
                    .is_none(),
                "{label}: a completed run clears the checkpoint"
            );

            // A full run now finds the same and changes no result.
            let full = validate::run(&ctx, all(), &Progress::none())
                .await
                .expect("full run");
            assert_eq!(
                (
                    full.checked,
                    full.fresh,
                    full.stale,
                    full.missing_in_mirror,
                    full.newly_stale,
                    full.errors
                ),
                (MANY as u64, MANY as u64 - 5, 3, 2, 0, 0),
                "{label}"
            );
            let after_full = f.rows().await;
            let results = |rows: &[RowState]| -> Vec<(bool, Option<String>)> {
                rows.iter()
                    .map(|r| (r.is_stale, r.stale_reason.clone()))
                    .collect()
            };
            assert_eq!(results(&after_full), results(&resumed), "{label}");

            // Nothing left to resume: a usage error that says so.
            let (code, _, err) = mirrorctl(&cfg, &["validate", "--resume"]).await;
            assert_eq!(code, 2, "{label}: {err}");
            assert!(err.contains("nothing to resume"), "{label}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{label}: {err}");
        }
    }
}

/// A cancelled `--all` (Ctrl-C headless, a job stopped in the TUI) keeps its checkpoint too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_resumes_where_it_stopped() {
    let server = S3Server::s3s().await;
    for db in TestDb::all().await {
        let f = Fixture::new(&server, db, 700).await;
        let label = f.label.clone();
        let ctx = f.ctx(false);
        f.change_origin(650, 1);
        // Cancel once the first batch is counted: the run stops after writing it.
        let this = Arc::new(std::sync::OnceLock::<Progress>::new());
        let cancel = this.clone();
        let progress = Progress::with_sink(move |e| {
            if let mirrorctl::engine::jobs::JobEvent::Progress { done, .. } = e {
                if done >= 500 {
                    if let Some(p) = cancel.get() {
                        p.cancel();
                    }
                }
            }
        });
        let _ = this.set(progress.clone());
        let err = validate::run(&ctx, all(), &progress)
            .await
            .expect_err("cancelled");
        assert_eq!(err.to_string(), "cancelled", "{label}");
        let cp =
            f.db.db
                .validate_checkpoint(f.bucket.name())
                .await
                .expect("db")
                .expect("checkpoint");
        assert_eq!(
            cp.after_key.as_deref(),
            Some(f.keys[499].as_str()),
            "{label}"
        );
        assert_eq!(cp.counts.checked, 500, "{label}");

        let r = validate::run(
            &ctx,
            ValidateParams {
                resume: true,
                ..Default::default()
            },
            &Progress::none(),
        )
        .await
        .expect("resume");
        assert_eq!(
            (r.checked, r.fresh, r.newly_stale),
            (700, 699, 1),
            "{label}"
        );
        // Items are this run's: the 200 files after the checkpoint, one of them stale.
        assert_eq!(r.items.len(), 1, "{label}");
        assert_eq!(r.items[0].key, f.keys[650], "{label}");
        assert_eq!(
            r.resumed_from.as_ref().map(|x| x.checked),
            Some(500),
            "{label}"
        );
        let ops = f.db.db.list_operations(2).await.expect("history");
        assert_eq!(
            (ops[0].status.as_str(), ops[1].status.as_str()),
            ("found_problems", "cancelled"),
            "{label}"
        );
        assert_eq!(ops[0].params["resume"], serde_json::json!(true), "{label}");
    }
}

/// `kill -9` of the binary half-way: its audit row becomes `interrupted` once its lease ends,
/// and `--resume` continues from the last batch it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_run_resumes_from_its_last_written_batch() {
    let server = S3Server::s3s().await;
    for db in TestDb::all().await {
        let f = Fixture::new(&server, db, MANY).await;
        let label = f.label.clone();
        let bucket = f.bucket.name().to_string();
        f.change_origin(1080, 1);
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = f.config_file(dir.path());
        let text = std::fs::read_to_string(&cfg).expect("config");
        let cfg = common::write_config_file(
            dir.path(),
            &text.replace("[database]\n", "[database]\nlock_lease = \"2s\"\n"),
        );
        // The listing's second page fails while the first pages' batches are written: the
        // process is killed while it retries, after at least one batch.
        f.proxy
            .faults
            .fail_continued_listings
            .store(true, Ordering::SeqCst);
        let mut child = common::command(&cfg)
            .args(["--headless", "validate", "--all"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn mirrorctl");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let cp = loop {
            let cp = f.db.db.validate_checkpoint(&bucket).await.expect("db");
            if let Some(cp) = cp.filter(|c| c.after_key.is_some()) {
                break cp;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{label}: no batch written"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        child.kill().expect("kill -9");
        let _ = child.wait();
        f.proxy
            .faults
            .fail_continued_listings
            .store(false, Ordering::SeqCst);
        // What was written last (a batch may have landed between the poll and the kill).
        let cp =
            f.db.db
                .validate_checkpoint(&bucket)
                .await
                .expect("db")
                .unwrap_or(cp);
        let done = cp.counts.checked;
        assert!(done >= 500 && done < MANY as u64, "{label}: {done}");
        tokio::time::sleep(Duration::from_millis(2500)).await;

        let (code, out, err) = mirrorctl(&cfg, &["validate", "--resume", "-o", "json"]).await;
        assert_eq!(code, 3, "{label}: {out}{err}");
        assert!(
            err.contains(&format!("{done} files already checked")),
            "{label}: {err}"
        );
        let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
        assert_eq!(
            (
                v["checked"].as_u64(),
                v["fresh"].as_u64(),
                v["newly_stale"].as_u64()
            ),
            (Some(MANY as u64), Some(MANY as u64 - 1), Some(1)),
            "{label}: {out}"
        );
        let ops = f.db.db.list_operations(2).await.expect("history");
        assert_eq!(
            (ops[0].status.as_str(), ops[1].status.as_str()),
            ("found_problems", "interrupted"),
            "{label}"
        );
        assert_eq!(ops[1].id, cp.operation_id, "{label}");
        let rows = f.rows().await;
        assert!(
            rows.iter().all(|r| r.last_validated_at.is_some()),
            "{label}"
        );
        assert_eq!(rows.iter().filter(|r| r.is_stale).count(), 1, "{label}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_the_mirror_or_the_origin_cannot_answer_for_is_its_error_and_the_run_goes_on() {
    for server in S3Server::all().await {
        for db in TestDb::all().await {
            let f = Fixture::new(&server, db, 8).await;
            let label = f.label.clone();
            // The mirror fails every request for file 2; the origin no longer has file 5.
            *f.proxy.faults.fail_paths_containing.lock().expect("faults") = Some(f.keys[2].clone());
            f.origin
                .files
                .lock()
                .expect("origin files")
                .remove(&f.keys[5]);
            let ids = ValidateParams {
                ids: f.ids.clone(),
                ..Default::default()
            };
            let r = validate::run(&f.ctx(false), ids, &Progress::none())
                .await
                .expect("the run completes");
            assert_eq!(
                (
                    r.checked,
                    r.fresh,
                    r.mirror_errors,
                    r.origin_errors,
                    r.errors
                ),
                (8, 6, 1, 1, 2),
                "{label}: {:?}",
                r.items
            );
            assert!(r.found_problems(), "{label}");
            let item = |i: usize| {
                r.items
                    .iter()
                    .find(|it| it.key == f.keys[i])
                    .expect("item")
                    .clone()
            };
            let mirror_failed = item(2);
            assert_eq!(mirror_failed.status, ValidateStatus::MirrorError, "{label}");
            assert!(
                mirror_failed
                    .error
                    .as_deref()
                    .is_some_and(|e| e.contains(f.bucket.name())),
                "{label}: {mirror_failed:?}"
            );
            let origin_failed = item(5);
            assert_eq!(origin_failed.status, ValidateStatus::OriginError, "{label}");
            assert!(origin_failed.error.is_some(), "{label}");
            assert!(item(0).error.is_none(), "{label}");
            // Nothing is written for a file whose check failed; the others are stamped.
            let rows = f.rows().await;
            for (i, row) in rows.iter().enumerate() {
                assert!(!row.is_stale, "{label}: row {i}");
                assert_eq!(
                    row.last_validated_at.is_some(),
                    i != 2 && i != 5,
                    "{label}: row {i}"
                );
            }

            // With --all the listing answers for the mirror: only the origin's error is left.
            let r = validate::run(&f.ctx(false), all(), &Progress::none())
                .await
                .expect("the run completes");
            assert_eq!((r.fresh, r.mirror_errors, r.errors), (7, 0, 1), "{label}");

            // The binary: exit 3 and the error in the JSON and in the table.
            let dir = tempfile::tempdir().expect("temp dir");
            let cfg = f.config_file(dir.path());
            let id_list = f
                .ids
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let (code, out, err) =
                mirrorctl(&cfg, &["validate", "--ids", &id_list, "-o", "json"]).await;
            assert_eq!(code, 3, "{label}: {out}{err}");
            let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
            assert_eq!(v["errors"].as_u64(), Some(2), "{label}: {out}");
            assert_eq!(v["mirror_errors"].as_u64(), Some(1), "{label}: {out}");
            let failed = v["items"]
                .as_array()
                .expect("items")
                .iter()
                .find(|i| i["status"] == "mirror_error")
                .expect("a mirror_error item");
            assert!(failed["error"].is_string(), "{label}: {failed}");
            let (code, out, _) = mirrorctl(&cfg, &["validate", "--ids", &id_list]).await;
            assert_eq!(code, 3, "{label}");
            assert!(
                out.contains("mirror_error") && out.contains("mirror errors"),
                "{label}: {out}"
            );
        }
    }
}

/// PostgreSQL: a file whose result did not change gets only its `last_validated_at`, in one
/// statement per batch; `is_stale`/`stale_reason` are written only for files whose result
/// changed. Counted by triggers the test adds: one per statement that updates
/// `mirrored_files`, one per row whose update names `is_stale` or `stale_reason` (whatever the
/// values: `UPDATE OF` fires on the columns listed in SET).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_rows_are_only_stamped_in_one_statement_per_batch() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let server = S3Server::s3s().await;
    let f = Fixture::new(&server, db, 600).await;
    let pool = sqlx::PgPool::connect(&f.db.url).await.expect("postgres");
    for ddl in [
        "CREATE TABLE update_log (what TEXT NOT NULL)",
        "CREATE FUNCTION log_update() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN INSERT INTO update_log VALUES (TG_ARGV[0]); RETURN NULL; END $$",
        "CREATE TRIGGER log_statements AFTER UPDATE ON mirrored_files \
         FOR EACH STATEMENT EXECUTE FUNCTION log_update('statement')",
        "CREATE TRIGGER log_marks AFTER UPDATE OF is_stale, stale_reason ON mirrored_files \
         FOR EACH ROW EXECUTE FUNCTION log_update('mark')",
    ] {
        sqlx::query(ddl)
            .execute(&pool)
            .await
            .expect("test triggers");
    }
    let updates = || async {
        let counts: (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE what = 'statement'), count(*) FILTER (WHERE what = 'mark') \
             FROM update_log",
        )
        .fetch_one(&pool)
        .await
        .expect("log");
        sqlx::query("DELETE FROM update_log")
            .execute(&pool)
            .await
            .expect("clear log");
        counts
    };
    let ctx = f.ctx(false);
    for i in [5, 300, 550] {
        f.change_origin(i, 1);
    }
    f.bucket.delete(&f.keys[7]).await.expect("delete");
    let r = validate::run(&ctx, all(), &Progress::none())
        .await
        .expect("first run");
    assert_eq!((r.stale, r.missing_in_mirror, r.newly_stale), (3, 1, 4));
    // Two batches (500 + 100): a stamp statement each, and the four new marks one by one.
    assert_eq!(updates().await, (2 + 4, 4));

    // Nothing changed: the already-stale files are stamped with the fresh ones, not re-marked.
    let r = validate::run(&ctx, all(), &Progress::none())
        .await
        .expect("second run");
    assert_eq!(
        (r.checked, r.stale, r.missing_in_mirror, r.newly_stale),
        (600, 3, 1, 0)
    );
    assert_eq!(updates().await, (2, 0));
    assert!(f.rows().await.iter().all(|r| r.last_validated_at.is_some()));

    // File 5 is fresh again (cleared), file 100 goes stale (marked), file 300 changes once
    // more (a new reason, marked): three rows written, by one clear and two marks.
    f.change_origin(5, 0);
    f.change_origin(100, 1);
    f.change_origin(300, 2);
    let r = validate::run(&ctx, all(), &Progress::none())
        .await
        .expect("third run");
    assert_eq!((r.stale, r.newly_stale, r.fresh), (3, 1, 596));
    assert_eq!(updates().await, (2 + 1 + 2, 3));
    let totals = f.db.db.storage_totals().await.expect("totals");
    assert_eq!(totals.stale, 4, "the counters trigger saw every change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_help_teaches_resume_and_bad_combinations_are_usage_errors() {
    let out = std::process::Command::new(common::binary())
        .args(["validate", "--help"])
        .output()
        .expect("run mirrorctl");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    for needle in ["--resume", "checkpoint", "mirror_error", "Exit 0"] {
        assert!(
            help.contains(needle),
            "validate --help lacks {needle:?}:\n{help}"
        );
    }
    let out = std::process::Command::new(common::binary())
        .args(["--headless", "validate", "--resume", "--ids", "1"])
        .output()
        .expect("run mirrorctl");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--resume") && err.contains("--ids"), "{err}");
}
