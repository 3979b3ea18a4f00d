//! `doctor` and `uploads list|abort` through the real binary: every check passing on s3s-fs +
//! SQLite and on Garage + PostgreSQL (with the write probe cleaned up), each bad input named in
//! one line with its exit code (closed port, a server that never answers, wrong secret, wrong
//! region, missing bucket, a config that does not parse, no database), pending migrations, a
//! lock left by a gone process, the origin's HEAD, and orphaned uploads listed and aborted on
//! Garage (never a young one).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{S3Server, TestDb};
use serde_json::Value;

struct Run {
    what: String,
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "{}: not JSON ({e}): {}\n{}",
                self.what, self.stdout, self.stderr
            )
        })
    }

    fn code(&self, want: i32) -> &Run {
        assert_eq!(
            self.code, want,
            "{}: exit {} (want {want})\nstdout:\n{}\nstderr:\n{}",
            self.what, self.code, self.stdout, self.stderr
        );
        self
    }

    /// The check called `name` of a doctor JSON report.
    fn check(&self, name: &str) -> Value {
        let v = self.json();
        v["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{}: no check {name:?} in {}", self.what, self.stdout))
    }
}

/// A config file in its own directory.
struct Config {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

fn config(text: &str) -> Config {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = common::write_config_file(dir.path(), text);
    Config { path, _dir: dir }
}

fn db_toml(url: &str) -> String {
    format!("[database]\nurl = {url:?}\nconnect_timeout = \"5s\"\n\n")
}

/// `mirrorctl --config … ARGS`, off the runtime (s3s-fs lives in this process).
async fn run(config: &Config, args: &[&str]) -> Run {
    let mut cmd = common::command(&config.path);
    cmd.args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run mirrorctl");
    Run {
        what: format!("mirrorctl {}", args.join(" ")),
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Keys under the doctor's reserved prefix.
async fn probe_keys(s3: &S3Server, bucket: &str) -> usize {
    let b = mirrorctl::engine::s3::S3Bucket::connect(&s3.bucket_config(bucket))
        .await
        .expect("connect");
    b.list_page(".mirrorctl-doctor/", None, None, 100)
        .await
        .expect("list")
        .objects
        .len()
}

/// Every check of a report passed or was skipped.
fn all_pass(r: &Run) {
    let v = r.json();
    assert_eq!(v["status"], "ok", "{}: {}", r.what, r.stdout);
    for c in v["checks"].as_array().expect("checks") {
        assert!(
            c["status"] == "ok" || c["status"] == "skip",
            "{}: {c}",
            r.what
        );
        assert!(c["detail"].as_str().is_some_and(|d| !d.contains('\n')));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_passes_on_s3s_and_sqlite_and_cleans_up_its_probe() {
    let s3 = S3Server::s3s().await;
    let db = TestDb::sqlite().await;
    let (mirror, _) = s3.new_bucket("dr-mirror").await;
    let (backup, _) = s3.new_bucket("dr-backup").await;
    let c = config(&format!(
        "{}{}{}",
        db_toml(&db.url),
        s3.bucket_toml("mirror", &mirror.bucket),
        s3.bucket_toml("backup", &backup.bucket)
    ));
    let r = run(&c, &["doctor", "--write", "-o", "json"]).await;
    r.code(0);
    all_pass(&r);
    assert_eq!(r.check("schema")["status"], "ok");
    assert_eq!(r.check("lock")["status"], "ok");
    assert_eq!(r.check("bucket mirror/main/archive write")["status"], "ok");
    assert_eq!(r.check("bucket backup write")["status"], "ok");
    // s3s-fs has no ListMultipartUploads: skipped with a note, not a failure.
    let up = r.check("bucket backup uploads");
    assert_eq!(up["status"], "skip", "{up}");
    assert!(up["detail"]
        .as_str()
        .unwrap()
        .contains("ListMultipartUploads"));
    assert_eq!(r.check("origin")["status"], "skip");
    assert_eq!(probe_keys(&s3, &mirror.bucket).await, 0);
    assert_eq!(probe_keys(&s3, &backup.bucket).await, 0);

    // The table: one line per check, marks first.
    let t = run(&c, &["doctor"]).await;
    t.code(0);
    assert!(t.stdout.starts_with("✓ config"), "{}", t.stdout);
    assert!(t.stdout.contains("✓ bucket backup "), "{}", t.stdout);
    assert!(t.stdout.contains("- origin"), "{}", t.stdout);

    // uploads on s3s-fs: one line saying the server cannot, exit 1, no panic.
    let u = run(&c, &["--headless", "uploads", "list"]).await;
    u.code(1);
    assert!(
        u.stderr.contains("does not implement ListMultipartUploads")
            && u.stderr.lines().count() == 1,
        "{}",
        u.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_passes_on_garage_and_postgres_with_the_origin() {
    let Some(g) = S3Server::garage() else { return };
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let (mirror, _) = g.new_bucket("dr-mirror").await;
    let origin_dir = tempfile::tempdir().expect("origin dir");
    std::fs::create_dir_all(origin_dir.path().join("pkgs")).unwrap();
    std::fs::write(origin_dir.path().join("pkgs/a.bin"), vec![1u8; 4096]).unwrap();
    let (addr, _origin) = mirrorctl::demo::start_origin(origin_dir.path(), 0)
        .await
        .expect("origin");
    let c = config(&format!(
        "{}{}[origin]\nbase_url = \"http://{addr}/\"\n",
        db_toml(&db.url),
        g.bucket_toml("mirror", &mirror.bucket),
    ));
    let entry = |remote_id: &str, url: &str| mirrorctl::engine::db::CatalogEntry {
        source: "http".into(),
        remote_id: remote_id.into(),
        url: url.into(),
        file_name: url.rsplit('/').next().unwrap().into(),
        size: Some(4096),
        etag: None,
        updated_at: None,
        key: url.into(),
    };
    db.db
        .catalog_register(&entry("1", "pkgs/a.bin"), chrono::Utc::now())
        .await
        .expect("catalog");
    let r = run(&c, &["doctor", "--write", "-o", "json"]).await;
    r.code(0);
    all_pass(&r);
    let origin = r.check("origin");
    assert_eq!(origin["status"], "ok", "{origin}");
    assert!(origin["detail"].as_str().unwrap().contains("pkgs/a.bin"));
    assert_eq!(
        r.check("bucket mirror/main/archive uploads")["status"],
        "ok"
    );
    assert_eq!(probe_keys(&g, &mirror.bucket).await, 0);

    // The entry gone at the origin: a warning (exit 3) pointing at the catalog.
    std::fs::remove_file(origin_dir.path().join("pkgs/a.bin")).unwrap();
    let r = run(&c, &["doctor", "-o", "json"]).await;
    r.code(3);
    let origin = r.check("origin");
    assert_eq!(origin["status"], "warn", "{origin}");
    assert!(origin["hint"].as_str().unwrap().contains("catalog"));
}

/// Runs `doctor -o json` and returns the mirror bucket's check, asserting the exit code and
/// that the detail says `cause` and the hint names `key`.
async fn bad_bucket(toml: &str, cause: &str, key: &str) {
    let c = config(toml);
    let t = Instant::now();
    let r = run(&c, &["doctor", "-o", "json"]).await;
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    r.code(1);
    let b = r.check("bucket mirror/main/archive");
    assert_eq!(b["status"], "fail", "{b}");
    let detail = b["detail"].as_str().unwrap();
    assert!(detail.contains(cause), "want {cause:?}: {detail}");
    assert!(!detail.contains('\n'));
    assert!(
        b["hint"].as_str().unwrap().contains(key),
        "want {key:?}: {b}"
    );
    // The database checks still ran.
    assert_eq!(r.check("database")["status"], "ok");
    // The table names the cause on the bucket's line.
    let t = run(&c, &["doctor"]).await;
    let line = t
        .stdout
        .lines()
        .find(|l| l.starts_with("✗ bucket"))
        .unwrap_or_else(|| panic!("{}", t.stdout));
    assert!(line.contains(cause), "{line}");
}

fn bucket_toml(endpoint: &str, bucket: &str, key: &str, secret: &str, extra: &str) -> String {
    format!(
        "[buckets.mirror]\nbucket = \"{bucket}\"\nendpoint = \"{endpoint}\"\npath_style = true\n\
         access_key_id = \"{key}\"\nsecret_access_key = \"{secret}\"\ntimeout = \"3s\"\n{extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_names_each_bad_bucket_setting() {
    let db = TestDb::sqlite().await;
    // A closed port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let closed = format!("http://127.0.0.1:{port}");
    bad_bucket(
        &(db_toml(&db.url) + &bucket_toml(&closed, "b", "k", "s", "")),
        "unreachable",
        "buckets.mirror.endpoint",
    )
    .await;

    // A server that accepts connections and never answers: a timeout, not a hang.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let _held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            conns.push(s);
        }
    });
    bad_bucket(
        &(db_toml(&db.url) + &bucket_toml(&format!("http://{silent_addr}"), "b", "k", "s", "")),
        "timed out",
        "buckets.mirror.endpoint",
    )
    .await;

    let Some(g) = S3Server::garage() else { return };
    let (mirror, _) = g.new_bucket("dr-bad").await;
    let wrong_secret = "0".repeat(64);
    bad_bucket(
        &(db_toml(&db.url) + &bucket_toml(&g.endpoint, &mirror.bucket, &g.key, &wrong_secret, "")),
        "credentials rejected",
        "buckets.mirror.secret_access_key",
    )
    .await;
    bad_bucket(
        &(db_toml(&db.url)
            + &bucket_toml(
                &g.endpoint,
                &mirror.bucket,
                &g.key,
                &g.secret,
                "region = \"eu-west-1\"",
            )),
        "wrong region",
        "buckets.mirror.region",
    )
    .await;
    bad_bucket(
        &(db_toml(&db.url)
            + &bucket_toml(&g.endpoint, "dr-no-such-bucket-x", &g.key, &g.secret, "")),
        "bucket does not exist",
        "buckets.mirror.bucket",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_reports_config_and_database_failures() {
    let s3 = S3Server::s3s().await;
    let (mirror, _) = s3.new_bucket("dr-cfg").await;
    // A config that does not parse: the only check, exit 2.
    let c = config("[database]\nurl = 3\n");
    let r = run(&c, &["doctor", "-o", "json"]).await;
    r.code(2);
    let v = r.json();
    assert_eq!(v["checks"].as_array().unwrap().len(), 1, "{v}");
    let check = r.check("config");
    assert_eq!(check["status"], "fail");
    assert!(
        check["detail"].as_str().unwrap().contains("database.url"),
        "{check}"
    );
    let t = run(&c, &["doctor"]).await;
    t.code(2);
    assert!(t.stdout.starts_with("✗ config"), "{}", t.stdout);

    // A database that is not there: failed, and the buckets are still checked.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = config(&format!(
        "{}{}",
        db_toml(&format!("postgres://u:hunter2@127.0.0.1:{port}/x")),
        s3.bucket_toml("mirror", &mirror.bucket)
    ));
    let r = run(&c, &["doctor", "-o", "json"]).await;
    r.code(1);
    let d = r.check("database");
    assert_eq!(d["status"], "fail", "{d}");
    assert!(d["hint"].as_str().unwrap().contains("database.url"));
    assert!(!r.stdout.contains("hunter2"), "a password was printed");
    assert_eq!(r.check("bucket mirror/main/archive")["status"], "ok");
    assert_eq!(r.check("origin")["status"], "skip");
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_finds_pending_migrations_and_a_gone_lock_holder() {
    let s3 = S3Server::s3s().await;
    let (mirror, _) = s3.new_bucket("dr-mig").await;

    // A SQLite file one migration behind.
    let db = TestDb::sqlite().await;
    let last: i64 = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&sqlite_pool(&db.url).await)
        .await
        .unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(last)
        .execute(&sqlite_pool(&db.url).await)
        .await
        .unwrap();
    let c = config(&format!(
        "{}{}",
        db_toml(&db.url),
        s3.bucket_toml("mirror", &mirror.bucket)
    ));
    let r = run(&c, &["doctor", "-o", "json"]).await;
    r.code(3);
    let s = r.check("schema");
    assert_eq!(s["status"], "warn", "{s}");
    assert!(s["detail"].as_str().unwrap().contains("1 of "), "{s}");
    assert!(
        s["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("{last:04}_")),
        "{s}"
    );
    assert!(s["hint"].as_str().unwrap().contains("mirrorctl migrate"));
    // Doctor changed nothing: still behind.
    let r = run(&c, &["doctor", "-o", "json"]).await;
    assert_eq!(r.check("schema")["status"], "warn");

    // The lock row of a process that is gone.
    let db = TestDb::sqlite().await;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    sqlx::query(
        "INSERT INTO operation_lock (name, kind, operator, holder, started_at) \
         VALUES ('mutation', 'purge', 'alice@ops', $1, '2026-01-02T03:04:05Z')",
    )
    .bind(format!("{host}:{}", u32::MAX - 7))
    .execute(&sqlite_pool(&db.url).await)
    .await
    .unwrap();
    let c = config(&format!(
        "{}{}",
        db_toml(&db.url),
        s3.bucket_toml("mirror", &mirror.bucket)
    ));
    let r = run(&c, &["doctor", "-o", "json"]).await;
    r.code(3);
    let l = r.check("lock");
    assert_eq!(l["status"], "warn", "{l}");
    assert!(l["detail"].as_str().unwrap().contains("alice@ops"), "{l}");
    assert!(l["detail"].as_str().unwrap().contains("gone"), "{l}");

    // A fresh PostgreSQL database without the schema.
    let Some(pg) = TestDb::postgres().await else {
        return;
    };
    let empty = format!("{}_empty", pg.url.rsplit('/').next().unwrap());
    let mut admin = url::Url::parse(&pg.url).unwrap();
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(admin.as_str()).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {empty}"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    admin.set_path(&format!("/{empty}"));
    let c = config(&format!(
        "{}{}",
        db_toml(admin.as_str()),
        s3.bucket_toml("mirror", &mirror.bucket)
    ));
    let r = run(&c, &["doctor", "-o", "json"]).await;
    r.code(3);
    let s = r.check("schema");
    assert_eq!(s["status"], "warn", "{s}");
    assert!(
        s["detail"]
            .as_str()
            .unwrap()
            .contains("no mirrorctl schema"),
        "{s}"
    );
    assert_eq!(r.check("lock")["status"], "skip");
    // Every other command refuses that database; doctor got this far.
    run(&c, &["--headless", "stats"]).await.code(2);
}

async fn sqlite_pool(url: &str) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect(url).await.expect("sqlite")
}

/// Starts an incomplete multipart upload of `key` with the SDK; its upload id.
async fn start_upload(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> String {
    client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .expect("create multipart upload")
        .upload_id()
        .expect("upload id")
        .to_string()
}

fn sdk_client(s: &S3Server) -> aws_sdk_s3::Client {
    let creds = aws_sdk_s3::config::Credentials::new(&s.key, &s.secret, None, None, "test");
    let cfg = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .http_client(mirrorctl::engine::tls::sdk_https_client())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .endpoint_url(&s.endpoint)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(cfg)
}

fn upload_ids(r: &Run) -> Vec<String> {
    r.json()["uploads"]
        .as_array()
        .expect("uploads")
        .iter()
        .map(|u| u["upload_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_list_and_abort_on_garage_spare_young_uploads() {
    let Some(g) = S3Server::garage() else { return };
    for db in TestDb::all().await {
        let (mirror, _) = g.new_bucket("up-mirror").await;
        let (backup, _) = g.new_bucket("up-backup").await;
        let c = config(&format!(
            "{}{}{}",
            db_toml(&db.url),
            g.bucket_toml("mirror", &mirror.bucket),
            g.bucket_toml("backup", &backup.bucket)
        ));
        let client = sdk_client(&g);
        let old_a = start_upload(&client, &mirror.bucket, "pkgs/old-a.bin").await;
        let old_b = start_upload(&client, &backup.bucket, "pkgs/old-b.bin").await;
        tokio::time::sleep(Duration::from_secs(6)).await;
        let young = start_upload(&client, &mirror.bucket, "pkgs/young.bin").await;

        let all = run(&c, &["--headless", "uploads", "list", "-o", "json"]).await;
        all.code(0);
        let ids = upload_ids(&all);
        assert_eq!(ids.len(), 3, "{}", all.stdout);
        // Oldest first, each with its bucket and age.
        let first = &all.json()["uploads"][0];
        assert!(first["age_s"].as_i64().unwrap() >= 5, "{first}");
        let backup_only = run(
            &c,
            &[
                "--headless",
                "uploads",
                "list",
                "--bucket",
                "backup",
                "-o",
                "json",
            ],
        )
        .await;
        assert_eq!(upload_ids(backup_only.code(0)), vec![old_b.clone()]);
        let old = run(
            &c,
            &[
                "--headless",
                "uploads",
                "list",
                "--older-than",
                "5s",
                "-o",
                "json",
            ],
        )
        .await;
        let mut old_ids = upload_ids(old.code(0));
        old_ids.sort();
        let mut want = vec![old_a.clone(), old_b.clone()];
        want.sort();
        assert_eq!(old_ids, want);
        let table = run(&c, &["--headless", "uploads", "list"]).await;
        assert!(
            table.code(0).stdout.contains("pkgs/young.bin"),
            "{}",
            table.stdout
        );

        // Refused without --yes and in read-only mode; a dry run counts and names them.
        run(
            &c,
            &["--headless", "uploads", "abort", "--older-than", "5s"],
        )
        .await
        .code(2);
        run(
            &c,
            &[
                "--read-only",
                "--headless",
                "uploads",
                "abort",
                "--older-than",
                "5s",
                "--yes",
            ],
        )
        .await
        .code(2);
        let dry = run(
            &c,
            &[
                "--headless",
                "uploads",
                "abort",
                "--older-than",
                "5s",
                "--dry-run",
                "-o",
                "json",
            ],
        )
        .await;
        let v = dry.code(0).json();
        assert_eq!(v["candidates"], 2, "{v}");
        assert_eq!(v["aborted"], 0, "{v}");
        assert_eq!(
            upload_ids(&run(&c, &["--headless", "uploads", "list", "-o", "json"]).await).len(),
            3
        );

        // An hour's threshold touches nothing.
        let none = run(
            &c,
            &[
                "--headless",
                "uploads",
                "abort",
                "--older-than",
                "1h",
                "--yes",
                "-o",
                "json",
            ],
        )
        .await;
        assert_eq!(none.code(0).json()["aborted"], 0);

        let done = run(
            &c,
            &[
                "--headless",
                "uploads",
                "abort",
                "--older-than",
                "5s",
                "--yes",
            ],
        )
        .await;
        done.code(0);
        assert!(done.stdout.contains("aborted 2 of 2"), "{}", done.stdout);
        let left = run(&c, &["--headless", "uploads", "list", "-o", "json"]).await;
        assert_eq!(upload_ids(left.code(0)), vec![young.clone()]);

        // Audited: one row per abort run, the last one ok with its count.
        let ops = db.db.list_operations(10).await.unwrap();
        let last = ops
            .iter()
            .find(|o| o.kind == "uploads-abort")
            .expect("audit row");
        assert_eq!(last.status, "ok");
        assert_eq!(
            last.summary.as_ref().map(|s| s["aborted"].clone()),
            Some(serde_json::json!(2))
        );

        // Doctor sees no upload older than 7 days, the young one is not counted.
        let r = run(&c, &["doctor", "-o", "json"]).await;
        assert_eq!(r.check("bucket backup uploads")["status"], "ok");
        client
            .abort_multipart_upload()
            .bucket(&mirror.bucket)
            .key("pkgs/young.bin")
            .upload_id(&young)
            .send()
            .await
            .expect("clean up");
    }
}
