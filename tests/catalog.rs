//! `catalog import`, `list` and `show` through the real binary, as an operator runs them, on
//! SQLite and (when MIRRORCTL_TEST_DATABASE_URL is set) PostgreSQL, with an s3s-fs mirror
//! bucket in the config. Each story checks the exit code, the one-line error where there is
//! one, and what the database holds afterwards.

mod common;

use std::path::PathBuf;

use chrono::Utc;
use common::{S3Server, TestDb};
use mirrorctl::engine::db::Backend;
use mirrorctl::engine::model::NewMirroredFile;
use serde_json::{json, Value};
use sqlx::Row;

/// A config file over one test database and an empty mirror bucket, and a directory for the
/// catalog files a story writes.
struct Env {
    backend: &'static str,
    db: TestDb,
    bucket: String,
    config: PathBuf,
    dir: tempfile::TempDir,
    _s3: S3Server,
}

impl Env {
    /// `extra` is appended to the config file (e.g. a `[policy]` table).
    async fn new(db: TestDb, extra: &str) -> Env {
        let s3 = S3Server::s3s().await;
        let (bucket_cfg, _) = s3.new_bucket("catalog").await;
        let dir = tempfile::tempdir().expect("temp dir");
        let text = format!(
            "[database]\nurl = {url:?}\n\n{mirror}{extra}",
            url = db.url,
            mirror = s3.bucket_toml("mirror", &bucket_cfg.bucket),
        );
        let config = common::write_config_file(dir.path(), &text);
        let backend = match db.db.backend() {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        };
        // Shown with a failure: which half of the story it was.
        eprintln!("--- {backend}");
        Env {
            backend,
            db,
            bucket: bucket_cfg.bucket,
            config,
            dir,
            _s3: s3,
        }
    }

    /// Writes `bytes` as `name` in the story's directory and returns its path.
    fn file(&self, name: &str, bytes: impl AsRef<[u8]>) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).expect("write catalog file");
        path.to_str().expect("UTF-8 temp path").to_string()
    }

    /// `mirrorctl --config … --headless ARGS`, run off the runtime (s3s-fs lives in this process).
    async fn run(&self, args: &[&str]) -> Run {
        let mut cmd = common::command(&self.config);
        cmd.arg("--headless").args(args);
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("join")
            .expect("run mirrorctl");
        Run {
            what: format!("[{}] mirrorctl {}", self.backend, args.join(" ")),
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `catalog import FILE FLAGS -o json`.
    async fn import(&self, file: &str, flags: &[&str]) -> Run {
        let mut args = vec!["catalog", "import", file];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["-o", "json"]);
        self.run(&args).await
    }

    /// `catalog list -n 1000 -o json` (plus `flags`).
    async fn list(&self, flags: &[&str]) -> Value {
        let mut args = vec!["catalog", "list", "-n", "1000", "-o", "json"];
        args.extend_from_slice(flags);
        self.run(&args).await.ok().json()
    }

    /// Rows of `sql`, every column selected as text (so one query serves both backends).
    async fn rows(&self, sql: &str, binds: &[&str]) -> Vec<Vec<Option<String>>> {
        fn texts<R: Row>(row: &R) -> Vec<Option<String>>
        where
            for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            usize: sqlx::ColumnIndex<R>,
        {
            (0..row.len())
                .map(|i| row.try_get::<Option<String>, _>(i).expect("a text column"))
                .collect()
        }
        match self.db.db.backend() {
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&self.db.url)
                    .await
                    .expect("sqlite");
                let mut q = sqlx::query(sql);
                for b in binds {
                    q = q.bind(*b);
                }
                let rows = q.fetch_all(&pool).await.expect(sql);
                pool.close().await;
                rows.iter().map(texts).collect()
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&self.db.url).await.expect("postgres");
                let mut q = sqlx::query(sql);
                for b in binds {
                    q = q.bind(*b);
                }
                let rows = q.fetch_all(&pool).await.expect(sql);
                pool.close().await;
                rows.iter().map(texts).collect()
            }
        }
    }

    /// Every catalog row and every mirrored copy, to compare before and after a command.
    async fn snapshot(&self) -> Vec<Vec<Option<String>>> {
        let mut rows = self
            .rows(
                "SELECT CAST(id AS TEXT), source, remote_id, file_name, url, CAST(size AS TEXT), \
                 etag, key, CAST(updated_at AS TEXT), CAST(deleted_at AS TEXT) \
                 FROM origin_files ORDER BY id",
                &[],
            )
            .await;
        rows.extend(
            self.rows(
                "SELECT CAST(id AS TEXT), CAST(origin_file_id AS TEXT), key, \
                 CASE WHEN is_stale THEN 'stale' ELSE 'fresh' END, stale_reason, \
                 CAST(deleted_at AS TEXT) FROM mirrored_files ORDER BY id",
                &[],
            )
            .await,
        );
        rows
    }

    /// The catalog row `(source, remote_id)`, live or pruned.
    async fn entry(&self, source: &str, remote_id: &str) -> Option<Entry> {
        let rows = self
            .rows(
                "SELECT CAST(id AS TEXT), url, CAST(size AS TEXT), etag, key, file_name, \
                 CAST(deleted_at AS TEXT) FROM origin_files WHERE source = $1 AND remote_id = $2",
                &[source, remote_id],
            )
            .await;
        assert!(rows.len() <= 1, "(source, remote_id) is unique: {rows:?}");
        rows.into_iter().next().map(|r| Entry {
            id: r[0].as_deref().and_then(|s| s.parse().ok()).expect("id"),
            url: r[1].clone().expect("url"),
            size: r[2].as_deref().map(|s| s.parse().expect("size")),
            etag: r[3].clone(),
            key: r[4].clone(),
            file_name: r[5].clone().expect("file_name"),
            pruned: r[6].is_some(),
        })
    }

    /// `SELECT count(*) FROM {from_where}`.
    async fn count(&self, from_where: &str) -> i64 {
        let sql = format!("SELECT CAST(count(*) AS TEXT) FROM {from_where}");
        let rows = self.rows(&sql, &[]).await;
        rows[0][0]
            .as_deref()
            .and_then(|n| n.parse().ok())
            .expect("a count")
    }
}

#[derive(Debug)]
struct Entry {
    id: i64,
    url: String,
    size: Option<i64>,
    etag: Option<String>,
    key: Option<String>,
    file_name: String,
    pruned: bool,
}

/// One run of the binary.
struct Run {
    what: String,
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "{}: exit {} (expected {code})\nstdout: {}\nstderr: {}",
            self.what, self.code, self.stdout, self.stderr
        );
        self
    }

    fn ok(&self) -> &Self {
        self.expect_code(0)
    }

    /// stdout as the one JSON document it must be.
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "{}: stdout is not one JSON document ({e}): {}\nstderr: {}",
                self.what, self.stdout, self.stderr
            )
        })
    }

    /// A refusal or usage error: exit 2, stderr is one `error: …` line containing each needle.
    fn usage_error(&self, needles: &[&str]) -> &str {
        self.expect_code(2);
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "{}: stderr is not one line: {:?}",
            self.what,
            self.stderr
        );
        assert!(
            lines[0].starts_with("error: "),
            "{}: {:?}",
            self.what,
            lines[0]
        );
        for n in needles {
            assert!(
                lines[0].contains(n),
                "{}: the error does not say {n:?}: {}",
                self.what,
                lines[0]
            );
        }
        assert!(self.stdout.is_empty(), "{}: {}", self.what, self.stdout);
        lines[0]
    }
}

/// A JSON Lines catalog line.
fn line(remote_id: &str, url: &str, size: i64) -> String {
    json!({ "remote_id": remote_id, "url": url, "size": size }).to_string() + "\n"
}

/// `[added, changed, unchanged, marked_stale, pruned, duplicates, skipped]`.
type Counts = [u64; 7];

/// The counts of an import report, in `Counts` order.
fn counts(report: &Value) -> Counts {
    [
        "added",
        "changed",
        "unchanged",
        "marked_stale",
        "pruned",
        "duplicates",
        "skipped",
    ]
    .map(|k| {
        report[k]
            .as_u64()
            .unwrap_or_else(|| panic!("the report has no number {k}: {report}"))
    })
}

/// `(line, field)` of each reported line error.
fn line_errors(report: &Value) -> Vec<(u64, Option<String>)> {
    report["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("the report has no errors array: {report}"))
        .iter()
        .map(|e| {
            (
                e["line"].as_u64().expect("errors[].line"),
                e["field"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// `source/remote_id` of each entry `catalog list -o json` printed.
fn listed(list: &Value) -> Vec<String> {
    list["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("catalog list has no entries: {list}"))
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["source"].as_str().unwrap_or("?"),
                e["remote_id"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jsonl_import_adds_entries_and_a_reimport_changes_nothing() {
    for db in TestDb::all().await {
        let env = Env::new(db, "").await;
        let text = line("1", "pkgs/f1.bin", 10)
            + &(json!({ "remote_id": "2", "url": "pkgs/f2.bin", "size": 20, "etag": "\"e2\"",
                        "file_name": "second.bin", "updated_at": "2026-01-02T03:04:05Z" })
            .to_string()
                + "\n")
            + &line("3", "/pkgs/sub/f3.bin?v=1", 30);
        let file = env.file("catalog.jsonl", &text);

        let run = env.import(&file, &[]).await;
        let r = run.ok().json();
        assert_eq!(counts(&r), [3, 0, 0, 0, 0, 0, 0], "{r}");
        assert_eq!(r["lines"], 3, "{r}");
        assert_eq!(r["entries"], 3, "{r}");
        assert_eq!(line_errors(&r), vec![], "{r}");
        assert_eq!(r["dry_run"], false, "{r}");

        let e2 = env.entry("http", "2").await.expect("entry 2");
        assert_eq!(e2.url, "pkgs/f2.bin");
        assert_eq!(e2.size, Some(20));
        assert_eq!(
            e2.etag.as_deref(),
            Some("e2"),
            "quotes are not part of an ETag"
        );
        assert_eq!(e2.key.as_deref(), Some("pkgs/f2.bin"));
        assert_eq!(e2.file_name, "second.bin");
        assert!(!e2.pruned);
        let e3 = env.entry("http", "3").await.expect("entry 3");
        assert_eq!(
            e3.key.as_deref(),
            Some("pkgs/sub/f3.bin"),
            "no query in a key"
        );
        assert_eq!(e3.file_name, "f3.bin");
        assert_eq!(env.count("origin_files").await, 3);

        let before = env.snapshot().await;
        let r = env.import(&file, &[]).await.ok().json();
        assert_eq!(counts(&r), [0, 0, 3, 0, 0, 0, 0], "{r}");
        assert_eq!(env.snapshot().await, before, "a re-import rewrote rows");

        // The table says the same.
        let run = env.run(&["catalog", "import", &file]).await;
        run.ok();
        assert!(run.stdout.contains("unchanged"), "{}", run.stdout);
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with("unchanged") && l.trim_end().ends_with(" 3")),
            "{}",
            run.stdout
        );

        // A changed URL is a change, counted once, and the row follows it.
        let file = env.file(
            "changed.jsonl",
            text.replace("pkgs/f1.bin", "pkgs/f1-v2.bin"),
        );
        let r = env.import(&file, &[]).await.ok().json();
        assert_eq!(counts(&r), [0, 1, 2, 0, 0, 0, 0], "{r}");
        let e1 = env.entry("http", "1").await.expect("entry 1");
        assert_eq!(e1.key.as_deref(), Some("pkgs/f1-v2.bin"));

        // Standard input reads JSON Lines.
        let mut cmd = common::command(&env.config);
        cmd.args(["--headless", "catalog", "import", "-", "-o", "json"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let stdin_text = line("4", "pkgs/f4.bin", 40);
        let out = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut child = cmd.spawn().expect("spawn");
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(stdin_text.as_bytes()).expect("write stdin");
            drop(stdin);
            child.wait_with_output().expect("wait")
        })
        .await
        .expect("join");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(counts(&r), [1, 0, 0, 0, 0, 0, 0], "{r}");
        assert_eq!(r["input"], "standard input", "{r}");
        assert!(env.entry("http", "4").await.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lines_are_skipped_and_named_or_reject_a_strict_import() {
    for db in TestDb::all().await {
        let env = Env::new(db, "").await;
        let text = line("a", "pkgs/a.bin", 1)
            + "{\"remote_id\":\"bad-size\",\"url\":\"pkgs/x.bin\",\"size\":\"lots\"}\n"
            + "\n"
            + "{\"remote_id\":\"no-url\",\"size\":3}\n"
            + &line("b", "pkgs/b.bin", 2);
        let file = env.file("mixed.jsonl", &text);
        let r = env.import(&file, &[]).await.expect_code(3).json();
        assert_eq!(counts(&r), [2, 0, 0, 0, 0, 0, 2], "{r}");
        assert_eq!(r["lines"], 5, "{r}");
        assert_eq!(
            line_errors(&r),
            vec![(2, Some("size".into())), (4, Some("url".into()))],
            "{r}"
        );
        assert!(env.entry("http", "a").await.is_some());
        assert!(env.entry("http", "b").await.is_some());
        assert!(env.entry("http", "bad-size").await.is_none());
        assert!(env.entry("http", "no-url").await.is_none());
        assert_eq!(env.count("origin_files").await, 2);

        let run = env.run(&["catalog", "import", &file]).await;
        run.expect_code(3);
        assert!(
            run.stdout.contains("line 2: field `size`"),
            "{}",
            run.stdout
        );
        assert!(run.stdout.contains("line 4: field `url`"), "{}", run.stdout);

        // --strict: a bad line after a whole batch was read and staged still writes nothing.
        let before = env.snapshot().await;
        let mut strict = String::new();
        for i in 0..5_001 {
            strict += &line(&format!("s{i}"), &format!("pkgs/s{i}.bin"), i);
        }
        strict += "{\"remote_id\":\"s-bad\",\"url\":\"pkgs/s-bad.bin\",\"size\":-5}\n";
        strict += &line("s-last", "pkgs/s-last.bin", 1);
        let file = env.file("strict.jsonl", &strict);
        env.import(&file, &["--strict"])
            .await
            .usage_error(&["line 5002", "size", "--strict"]);
        assert_eq!(env.snapshot().await, before, "a rejected import wrote rows");
        assert!(env.entry("http", "s0").await.is_none());

        // Without --strict the same file imports its good lines.
        let r = env.import(&file, &[]).await.expect_code(3).json();
        assert_eq!(counts(&r), [5_002, 0, 0, 0, 0, 0, 1], "{r}");
        assert_eq!(line_errors(&r), vec![(5_002, Some("size".into()))], "{r}");

        // --strict on a good file imports it.
        let file = env.file("good.jsonl", line("c", "pkgs/c.bin", 3));
        let r = env.import(&file, &["--strict"]).await.ok().json();
        assert_eq!(counts(&r), [1, 0, 0, 0, 0, 0, 0], "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_line_for_a_remote_id_wins_within_and_across_batches() {
    for db in TestDb::all().await {
        let env = Env::new(db, "").await;
        // Line 1 and line 6,001 are in different batches (5,000 lines each); 2 and 3 in one.
        let mut text = line("dup", "pkgs/dup-first.bin", 1);
        text += &line("near", "pkgs/near-a.bin", 1);
        text += &line("near", "pkgs/near-b.bin", 2);
        for i in 4..=6_000 {
            text += &line(&format!("r{i}"), &format!("pkgs/r{i}.bin"), i);
        }
        text += &line("dup", "pkgs/dup-last.bin", 2);
        let file = env.file("dups.jsonl", &text);

        let r = env.import(&file, &[]).await.ok().json();
        assert_eq!(r["lines"], 6_001, "{r}");
        assert_eq!(r["entries"], 5_999, "{r}");
        assert_eq!(counts(&r), [5_999, 0, 0, 0, 0, 2, 0], "{r}");
        let dup = env.entry("http", "dup").await.expect("dup");
        assert_eq!((dup.url.as_str(), dup.size), ("pkgs/dup-last.bin", Some(2)));
        let near = env.entry("http", "near").await.expect("near");
        assert_eq!((near.url.as_str(), near.size), ("pkgs/near-b.bin", Some(2)));
        assert_eq!(env.count("origin_files").await, 5_999);

        // Against an existing catalog the duplicates are one change each.
        let text = line("dup", "pkgs/dup-v3.bin", 3)
            + &line("dup", "pkgs/dup-v4.bin", 4)
            + &line("new", "pkgs/new.bin", 1)
            + &line("new", "pkgs/new-2.bin", 2);
        let file = env.file("dups2.jsonl", &text);
        let r = env.import(&file, &[]).await.ok().json();
        assert_eq!(counts(&r), [1, 1, 0, 0, 0, 2, 0], "{r}");
        let dup = env.entry("http", "dup").await.expect("dup");
        assert_eq!((dup.url.as_str(), dup.size), ("pkgs/dup-v4.bin", Some(4)));
        let new = env.entry("http", "new").await.expect("new");
        assert_eq!(new.url, "pkgs/new-2.bin");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_is_refused_whole_and_changes_nothing() {
    for db in TestDb::all().await {
        let env = Env::new(db, "").await;
        let base = env.file("base.jsonl", line("kept", "pkgs/kept.bin", 5));
        env.import(&base, &[]).await.ok();
        let before = env.snapshot().await;

        // Not UTF-8, after a whole batch of good lines was read and staged.
        let mut bytes = Vec::new();
        for i in 0..5_001 {
            bytes.extend(line(&format!("u{i}"), &format!("pkgs/u{i}.bin"), 1).into_bytes());
        }
        bytes.extend(b"{\"remote_id\":\"x\",\"url\":\"pkgs/\xff.bin\"}\n");
        let file = env.file("latin1.jsonl", &bytes);
        env.import(&file, &[])
            .await
            .usage_error(&["latin1.jsonl", "line 5002", "UTF-8"]);
        assert_eq!(env.snapshot().await, before, "not UTF-8");

        // A 10 MiB line.
        let huge = line("h1", "pkgs/h1.bin", 1)
            + &json!({ "remote_id": "h2", "url": "pkgs/h2.bin", "pad": "a".repeat(10 << 20) })
                .to_string()
            + "\n";
        let file = env.file("huge.jsonl", &huge);
        env.import(&file, &[])
            .await
            .usage_error(&["line 2", "longer than 1 MiB"]);
        assert_eq!(env.snapshot().await, before, "a 10 MiB line");

        // Empty, and only blank lines.
        let file = env.file("empty.jsonl", "");
        env.import(&file, &[]).await.usage_error(&["empty"]);
        let file = env.file("blank.jsonl", "\n  \n\n");
        env.import(&file, &[]).await.usage_error(&["empty"]);
        let file = env.file("empty.csv", "");
        env.import(&file, &[]).await.usage_error(&["empty"]);
        assert_eq!(env.snapshot().await, before, "an empty file");

        // A CSV without its header row, and one with only the header.
        let file = env.file("noheader.csv", "1,pkgs/a.bin,3\n2,pkgs/b.bin,4\n");
        env.import(&file, &[])
            .await
            .usage_error(&["header", "remote_id", "url"]);
        let file = env.file("onlyheader.csv", "remote_id,url,size\n");
        env.import(&file, &[]).await.usage_error(&["no entries"]);
        assert_eq!(env.snapshot().await, before, "a CSV without a header");

        // An extension that says nothing needs --format; a missing file is named.
        let file = env.file("catalog.txt", line("t", "pkgs/t.bin", 1));
        env.import(&file, &[])
            .await
            .usage_error(&["catalog.txt", "--format"]);
        let missing = env.dir.path().join("missing.jsonl");
        let missing = missing.to_str().expect("UTF-8");
        env.import(missing, &[])
            .await
            .usage_error(&["missing.jsonl"]);
        assert_eq!(env.snapshot().await, before, "refused before reading");

        let r = env.import(&file, &["--format", "jsonl"]).await.ok().json();
        assert_eq!(counts(&r), [1, 0, 0, 0, 0, 0, 0], "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_with_a_header_imports_quoted_fields() {
    for db in TestDb::all().await {
        let env = Env::new(db, "").await;
        // Columns in any order; a quoted field keeps its comma; an empty field is absent.
        let text = "\u{feff}url,remote_id,size,etag,file_name,source\r\n\
                    pkgs/seven.bin,7,70,\"abc\",\"Seven, the file\",gb\r\n\
                    \"pkgs/eight,8.bin\",8,,,,gb\r\n\
                    pkgs/nine.bin,9,90,,,\r\n";
        let file = env.file("catalog.csv", text);
        let r = env.import(&file, &[]).await.ok().json();
        assert_eq!(counts(&r), [3, 0, 0, 0, 0, 0, 0], "{r}");

        let seven = env.entry("gb", "7").await.expect("gb/7");
        assert_eq!(seven.file_name, "Seven, the file");
        assert_eq!(seven.url, "pkgs/seven.bin");
        assert_eq!(seven.size, Some(70));
        assert_eq!(seven.etag.as_deref(), Some("abc"));
        let eight = env.entry("gb", "8").await.expect("gb/8");
        assert_eq!(eight.url, "pkgs/eight,8.bin");
        assert_eq!(eight.key.as_deref(), Some("pkgs/eight,8.bin"));
        assert_eq!((eight.size, eight.etag), (None, None));
        assert_eq!(eight.file_name, "eight,8.bin");
        let nine = env.entry("http", "9").await.expect("no source: http");
        assert_eq!(nine.size, Some(90));

        // A malformed CSV line is named like a JSON one; --format csv overrides the name.
        let file = env.file(
            "more.data",
            "remote_id,url,size\n10,pkgs/ten.bin,ten\n11,pkgs/eleven.bin,11\n",
        );
        let r = env
            .import(&file, &["--format", "csv"])
            .await
            .expect_code(3)
            .json();
        assert_eq!(counts(&r), [1, 0, 0, 0, 0, 0, 1], "{r}");
        assert_eq!(line_errors(&r), vec![(2, Some("size".into()))], "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_size_or_etag_marks_the_mirrored_copy_stale() {
    for db in TestDb::all().await {
        let env = Env::new(db, "").await;
        let first = json!({ "remote_id": "a", "url": "pkgs/a.bin", "size": 100, "etag": "ea" })
            .to_string()
            + "\n"
            + &json!({ "remote_id": "b", "url": "pkgs/b.bin", "size": 200, "etag": "eb" })
                .to_string()
            + "\n"
            + &json!({ "remote_id": "c", "url": "pkgs/c.bin", "size": 300, "etag": "ec" })
                .to_string()
            + "\n";
        let file = env.file("v1.jsonl", &first);
        env.import(&file, &[]).await.ok();
        let list = env.list(&["--unmirrored"]).await;
        assert_eq!(
            (&list["total"], &list["unmirrored"]),
            (&json!(3), &json!(3)),
            "{list}"
        );

        let mut copies = Vec::new();
        for (id, size) in [("a", 100), ("b", 200), ("c", 300)] {
            let e = env.entry("http", id).await.expect("entry");
            copies.push(NewMirroredFile {
                origin_file_id: e.id,
                bucket: env.bucket.clone(),
                key: e.key.expect("key"),
                size,
                sha256: None,
                etag: Some(format!("e{id}")),
                mirrored_at: Utc::now(),
                is_stale: false,
                stale_reason: None,
            });
        }
        let ids = env
            .db
            .db
            .insert_mirrored_files(&copies)
            .await
            .expect("mirrored rows");
        let list = env.list(&["--unmirrored"]).await;
        assert_eq!(list["unmirrored"], 0, "{list}");
        assert_eq!(listed(&list), Vec::<String>::new(), "{list}");

        // The same sizes and ETags (or none given) leave every copy fresh.
        let same = line("a", "pkgs/a.bin", 100)
            + &json!({ "remote_id": "b", "url": "pkgs/b.bin", "etag": "eb" }).to_string()
            + "\n"
            + &json!({ "remote_id": "c", "url": "pkgs/c.bin" }).to_string()
            + "\n";
        let file = env.file("same.jsonl", &same);
        let r = env.import(&file, &[]).await.ok().json();
        assert_eq!(counts(&r), [0, 0, 3, 0, 0, 0, 0], "{r}");
        for &id in &ids {
            let f = env
                .db
                .db
                .get_file_by_id(id)
                .await
                .expect("db")
                .expect("row");
            assert!(!f.is_stale, "{f:?}");
            assert_eq!(f.stale_reason, None);
        }

        // A new size for a, a new ETag for b: their copies are stale, c's stays fresh.
        let changed = line("a", "pkgs/a.bin", 101)
            + &json!({ "remote_id": "b", "url": "pkgs/b.bin", "size": 200, "etag": "eb2" })
                .to_string()
            + "\n"
            + &json!({ "remote_id": "c", "url": "pkgs/c.bin", "size": 300, "etag": "ec" })
                .to_string()
            + "\n";
        let file = env.file("v2.jsonl", &changed);
        let r = env.import(&file, &[]).await.ok().json();
        assert_eq!(counts(&r), [0, 2, 1, 2, 0, 0, 0], "{r}");
        for (&id, stale) in ids.iter().zip([true, true, false]) {
            let f = env
                .db
                .db
                .get_file_by_id(id)
                .await
                .expect("db")
                .expect("row");
            assert_eq!(f.is_stale, stale, "{f:?}");
            let reason = stale.then(|| "origin_changed".to_string());
            assert_eq!(f.stale_reason, reason, "{f:?}");
        }
        assert_eq!(env.entry("http", "a").await.expect("a").size, Some(101));
        assert_eq!(
            env.entry("http", "b").await.expect("b").etag.as_deref(),
            Some("eb2")
        );
        let list = env.list(&["--unmirrored"]).await;
        assert_eq!(
            listed(&list),
            vec!["http/a".to_string(), "http/b".to_string()],
            "{list}"
        );
        let entries = env.list(&[]).await;
        let stale: Vec<_> = entries["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| e["mirrored_stale"].clone())
            .collect();
        assert_eq!(
            stale,
            vec![json!(true), json!(true), json!(false)],
            "{entries}"
        );

        // The same file again: nothing more to mark.
        let r = env.import(&file, &[]).await.ok().json();
        assert_eq!(counts(&r), [0, 0, 3, 0, 0, 0, 0], "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_is_guarded_capped_and_limited_to_the_files_sources() {
    for db in TestDb::all().await {
        let env = Env::new(db, "[policy]\nmax_delete = 2\n").await;
        let mut all = String::new();
        for i in 1..=5 {
            all += &line(&format!("h{i}"), &format!("pkgs/h{i}.bin"), i);
        }
        for i in 1..=2 {
            all += &(json!({ "source": "gb", "remote_id": format!("g{i}"),
                             "url": format!("https://cdn.example/g{i}.zip") })
            .to_string()
                + "\n");
        }
        env.import(&env.file("all.jsonl", &all), &[]).await.ok();
        let before = env.snapshot().await;
        // Lists only h1 and h2 of source http: h3, h4 and h5 are prunable, gb is not listed.
        let file = env.file(
            "some.jsonl",
            line("h1", "pkgs/h1.bin", 1) + &line("h2", "pkgs/h2.bin", 2),
        );

        env.import(&file, &["--prune"])
            .await
            .usage_error(&["--yes"]);
        assert_eq!(env.snapshot().await, before, "--prune without --yes");

        // A dry run within the limit (past it: a_prune_dry_run_previews_past_the_limit).
        let r = env
            .import(&file, &["--prune", "--dry-run", "--max-delete", "3"])
            .await
            .ok()
            .json();
        assert_eq!(counts(&r), [0, 0, 2, 0, 3, 0, 0], "{r}");
        assert_eq!(r["dry_run"], true, "{r}");
        assert_eq!(
            r["pruned_sample"],
            json!(["http/h3", "http/h4", "http/h5"]),
            "{r}"
        );
        assert_eq!(env.snapshot().await, before, "--dry-run");
        let run = env
            .run(&[
                "catalog",
                "import",
                &file,
                "--prune",
                "--dry-run",
                "--max-delete",
                "3",
            ])
            .await;
        run.ok();
        assert!(run.stdout.contains("dry run"), "{}", run.stdout);
        assert!(run.stdout.contains("http/h3"), "{}", run.stdout);

        env.import(&file, &["--prune", "--yes"])
            .await
            .usage_error(&["over the limit", "3", "2"]);
        assert_eq!(env.snapshot().await, before, "over policy.max_delete");
        env.import(&file, &["--prune", "--yes", "--max-delete", "2"])
            .await
            .usage_error(&["over the limit"]);
        assert_eq!(env.snapshot().await, before, "over --max-delete");

        let r = env
            .import(&file, &["--prune", "--yes", "--max-delete", "3"])
            .await
            .ok()
            .json();
        assert_eq!(counts(&r), [0, 0, 2, 0, 3, 0, 0], "{r}");
        assert_eq!(r["dry_run"], false, "{r}");
        for (id, pruned) in [
            ("h1", false),
            ("h2", false),
            ("h3", true),
            ("h4", true),
            ("h5", true),
        ] {
            let e = env.entry("http", id).await.expect("entry stays");
            assert_eq!(e.pruned, pruned, "{id}: {e:?}");
        }
        for id in ["g1", "g2"] {
            assert!(!env.entry("gb", id).await.expect("gb").pruned, "gb/{id}");
        }
        let list = env.list(&[]).await;
        assert_eq!(list["total"], 4, "{list}");
        assert_eq!(
            listed(&list),
            ["http/h1", "http/h2", "gb/g1", "gb/g2"]
                .map(String::from)
                .to_vec(),
            "{list}"
        );
        let run = env.run(&["catalog", "list"]).await;
        run.ok();
        assert!(run.stdout.contains("http/h2"), "{}", run.stdout);
        assert!(!run.stdout.contains("http/h3"), "{}", run.stdout);

        // Pruning again finds nothing; importing a pruned entry brings it back.
        let r = env.import(&file, &["--prune", "--yes"]).await.ok().json();
        assert_eq!(r["pruned"], 0, "{r}");
        let file = env.file("back.jsonl", line("h3", "pkgs/h3.bin", 3));
        let r = env.import(&file, &[]).await.ok().json();
        assert_eq!(counts(&r), [0, 1, 0, 0, 0, 0, 0], "{r}");
        assert!(!env.entry("http", "h3").await.expect("h3").pruned);
    }
}

/// A dry run is the preview an operator reads before choosing `--max-delete`: like `purge
/// --dry-run`, it shows a prune over `policy.max_delete` instead of refusing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_dry_run_previews_past_the_limit() {
    for db in TestDb::all().await {
        let env = Env::new(db, "[policy]\nmax_delete = 2\n").await;
        let mut all = String::new();
        for i in 1..=5 {
            all += &line(&format!("h{i}"), &format!("pkgs/h{i}.bin"), i);
        }
        env.import(&env.file("all.jsonl", &all), &[]).await.ok();
        let before = env.snapshot().await;
        let file = env.file("one.jsonl", line("h1", "pkgs/h1.bin", 1));
        let r = env
            .import(&file, &["--prune", "--dry-run"])
            .await
            .ok()
            .json();
        assert_eq!(counts(&r), [0, 0, 1, 0, 4, 0, 0], "{r}");
        assert_eq!(r["dry_run"], true, "{r}");
        assert_eq!(env.snapshot().await, before, "--dry-run");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_with_credentials_are_stored_but_never_printed() {
    for db in TestDb::all().await {
        let env = Env::new(db, "").await;
        let secret_url = "https://user:pass@host.example/x.zip?token=secret";
        let text = line("cred", secret_url, 7)
            + &line("rel", "pkgs/y.zip?token=secret", 8)
            // Skipped (scheme): its error must not echo the URL either.
            + &line("ftp", "ftp://user:pass@host.example/z.zip?token=secret", 9);
        let file = env.file("creds.jsonl", &text);
        let import = env.import(&file, &[]).await;
        let r = import.expect_code(3).json();
        assert_eq!(counts(&r), [2, 0, 0, 0, 0, 0, 1], "{r}");
        assert_eq!(line_errors(&r), vec![(3, Some("url".into()))], "{r}");

        let cred = env.entry("http", "cred").await.expect("cred");
        assert_eq!(cred.url, secret_url, "stored as given");
        assert_eq!(cred.key.as_deref(), Some("http/cred/x.zip"));
        assert_eq!(
            env.entry("http", "rel").await.expect("rel").url,
            "pkgs/y.zip?token=secret"
        );

        let id = cred.id.to_string();
        let mut outputs = vec![import];
        outputs.push(env.run(&["catalog", "import", &file]).await);
        for args in [
            vec!["catalog", "show", "http/cred"],
            vec!["catalog", "show", "http/cred", "-o", "json"],
            vec!["catalog", "show", id.as_str(), "-o", "json"],
            vec!["catalog", "show", "http/rel"],
            vec!["catalog", "list"],
            vec!["catalog", "list", "-o", "json"],
            vec!["history", "-o", "json"],
        ] {
            let run = env.run(&args).await;
            run.ok();
            outputs.push(run);
        }
        for run in &outputs {
            for leak in ["pass", "secret"] {
                assert!(
                    !run.stdout.contains(leak) && !run.stderr.contains(leak),
                    "{} prints {leak:?}:\nstdout: {}\nstderr: {}",
                    run.what,
                    run.stdout,
                    run.stderr
                );
            }
        }
        // What is printed instead still says where the file is.
        let shown = env
            .run(&["catalog", "show", "http/cred", "-o", "json"])
            .await
            .ok()
            .json();
        let url = shown["url"].as_str().expect("url");
        assert!(
            url.starts_with("https://") && url.contains("host.example/x.zip"),
            "{url}"
        );
        let list = env.list(&[]).await;
        let urls: Vec<&str> = list["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter_map(|e| e["url"].as_str())
            .collect();
        assert_eq!(urls.len(), 2, "{list}");
        assert!(urls[1].starts_with("pkgs/y.zip"), "{list}");

        // A refused file echoes no secret either.
        let file = env.file("noheader.csv", format!("1,{secret_url},3\n"));
        let run = env.import(&file, &[]).await;
        run.usage_error(&["header"]);
        for leak in ["pass", "secret"] {
            assert!(!run.stderr.contains(leak), "{}: {}", run.what, run.stderr);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_entries_and_read_only_mode_are_refused() {
    for db in TestDb::all().await {
        let env = Env::new(db, "").await;
        let file = env.file("one.jsonl", line("1", "pkgs/one.bin", 1));
        env.import(&file, &[]).await.ok();
        let before = env.snapshot().await;

        env.run(&["catalog", "show", "999999"])
            .await
            .usage_error(&["999999"]);
        env.run(&["catalog", "show", "http/nope"])
            .await
            .usage_error(&["http/nope"]);
        env.run(&["catalog", "show", "gb/1"])
            .await
            .usage_error(&["gb/1"]);
        let shown = env
            .run(&["catalog", "show", "http/1", "-o", "json"])
            .await
            .ok()
            .json();
        assert_eq!(shown["remote_id"], "1", "{shown}");

        let file = env.file("two.jsonl", line("2", "pkgs/two.bin", 2));
        env.run(&["--read-only", "catalog", "import", &file])
            .await
            .usage_error(&["read-only"]);
        env.run(&[
            "--read-only",
            "catalog",
            "import",
            &file,
            "--prune",
            "--yes",
        ])
        .await
        .usage_error(&["read-only"]);
        assert_eq!(env.snapshot().await, before, "read-only");
        // Reading is what read-only mode is for.
        let run = env
            .run(&["--read-only", "catalog", "list", "-o", "json"])
            .await;
        assert_eq!(run.ok().json()["total"], 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_writes_an_audit_row() {
    for db in TestDb::all().await {
        let env = Env::new(db, "").await;
        let file = env.file(
            "audit.jsonl",
            line("1", "pkgs/one.bin", 1) + &line("2", "pkgs/two.bin", 2),
        );
        env.import(&file, &[]).await.ok();
        let bad = env.file("audit-bad.jsonl", "{\"remote_id\":\"3\"}\n");
        env.import(&bad, &[]).await.expect_code(3);

        let history = env.run(&["history", "-o", "json"]).await.ok().json();
        let ops: Vec<&Value> = history
            .as_array()
            .unwrap_or_else(|| panic!("history is an array: {history}"))
            .iter()
            .filter(|op| op["kind"] == "catalog-import")
            .collect();
        assert_eq!(ops.len(), 2, "{history}");
        // Newest first.
        assert_eq!(ops[0]["status"], "found_problems", "{history}");
        assert_eq!(ops[0]["summary"]["skipped"], 1, "{history}");
        assert_eq!(ops[1]["status"], "ok", "{history}");
        assert_eq!(ops[1]["summary"]["added"], 2, "{history}");
        assert_eq!(ops[1]["params"]["prune"], false, "{history}");
        assert!(
            ops[1]["params"].to_string().contains("audit.jsonl"),
            "{history}"
        );
        assert!(ops[1]["finished_at"].is_string(), "{history}");
        assert_eq!(
            env.count("operations WHERE kind = 'catalog-import'").await,
            2
        );
    }
}

/// `catalog sync` reads an S3 origin's listing (source `s3`, the key as remote id, URL and
/// mirror key) and an HTTP origin's JSON Lines manifest at `origin.catalog_url`; a prune of
/// what the origin no longer lists has the same guard as an import's.
#[tokio::test]
async fn catalog_sync_reads_the_origin() {
    for db in TestDb::all().await {
        let env = Env::new(db, "").await;
        let (origin_cfg, origin) = env._s3.new_bucket("origin").await;
        for (key, body) in [("pkgs/a.bin", "aaaa"), ("pkgs/b.bin", "bbbbbb")] {
            origin
                .put_bytes(key, bytes::Bytes::from(body), None)
                .await
                .expect("put");
        }
        let base = format!(
            "[database]\nurl = {:?}\n\n{}",
            env.db.url,
            env._s3.bucket_toml("mirror", &env.bucket)
        );
        common::write_config_file(
            env.dir.path(),
            &format!(
                "{base}{}[origin]\nkind = \"s3\"\n",
                env._s3.bucket_toml("origin", &origin_cfg.bucket)
            ),
        );
        let r = env
            .run(&["catalog", "sync", "-o", "json"])
            .await
            .ok()
            .json();
        assert_eq!(
            (r["added"].as_u64(), r["entries"].as_u64()),
            (Some(2), Some(2)),
            "{r}"
        );
        let list = env.list(&[]).await;
        let mut got: Vec<(String, String, String, i64)> = list["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| {
                (
                    e["source"].as_str().unwrap_or("").to_string(),
                    e["remote_id"].as_str().unwrap_or("").to_string(),
                    e["key"].as_str().unwrap_or("").to_string(),
                    e["size"].as_i64().unwrap_or(-1),
                )
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("s3".into(), "pkgs/a.bin".into(), "pkgs/a.bin".into(), 4),
                ("s3".into(), "pkgs/b.bin".into(), "pkgs/b.bin".into(), 6),
            ]
        );
        // Unchanged on a second sync; the object gone at the origin is pruned only with --yes.
        let r = env
            .run(&["catalog", "sync", "-o", "json"])
            .await
            .ok()
            .json();
        assert_eq!(r["unchanged"].as_u64(), Some(2), "{r}");
        origin.delete("pkgs/b.bin").await.expect("delete");
        let before = env.snapshot().await;
        env.run(&["catalog", "sync", "--prune"])
            .await
            .usage_error(&["--yes"]);
        assert_eq!(env.snapshot().await, before);
        let r = env
            .run(&["catalog", "sync", "--prune", "--yes", "-o", "json"])
            .await
            .ok()
            .json();
        assert_eq!(r["pruned"].as_u64(), Some(1), "{r}");
        assert_eq!(env.list(&[]).await["total"].as_i64(), Some(1));

        // An HTTP origin's manifest, relative to origin.base_url.
        let manifest = "{\"remote_id\":\"m1\",\"url\":\"files/m1.bin\",\"size\":3}\n\
                        {\"remote_id\":\"m2\",\"url\":\"files/m2.bin\"}\n";
        let app = axum::Router::new().route(
            "/catalog.jsonl",
            axum::routing::get(move || async move { manifest }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        common::write_config_file(
            env.dir.path(),
            &format!(
                "{base}[origin]\nbase_url = \"http://{addr}/\"\ncatalog_url = \"catalog.jsonl\"\nretries = 0\n"
            ),
        );
        let r = env
            .run(&["catalog", "sync", "-o", "json"])
            .await
            .ok()
            .json();
        assert_eq!(r["added"].as_u64(), Some(2), "{r}");
        let m1 = env
            .run(&["catalog", "show", "http/m1", "-o", "json"])
            .await
            .ok()
            .json();
        assert_eq!(m1["key"], "files/m1.bin", "{m1}");
        // A manifest that is not there: a runtime failure naming the origin, nothing changed.
        common::write_config_file(
            env.dir.path(),
            &format!(
                "{base}[origin]\nbase_url = \"http://{addr}/\"\ncatalog_url = \"nope.jsonl\"\nretries = 0\n"
            ),
        );
        let before = env.snapshot().await;
        let r = env.run(&["catalog", "sync"]).await;
        r.expect_code(1);
        assert!(r.stderr.contains("nope.jsonl"), "{}", r.stderr);
        assert_eq!(env.snapshot().await, before);
        server.abort();
    }
}

/// An HTTP origin on loopback serving `files` at `/files/NAME` (404 for anything else).
async fn serve_files(
    files: Vec<(&'static str, Vec<u8>)>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let files = std::sync::Arc::new(files);
    let app = axum::Router::new().route(
        "/files/{name}",
        axum::routing::get(
            move |axum::extract::Path(name): axum::extract::Path<String>| {
                let files = files.clone();
                async move {
                    match files.iter().find(|(n, _)| *n == name) {
                        Some((_, body)) => (axum::http::StatusCode::OK, body.clone()),
                        None => (axum::http::StatusCode::NOT_FOUND, Vec::new()),
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

/// `prefetch` stores catalog entries without a fresh copy through the miss path: a dry run
/// changes nothing, a run needs --yes, stores each copy with its SHA-256 and inserts its row,
/// counts an origin 404 as failed (exit 1), keeps to --max-bytes, and refuses unknown ids.
#[tokio::test]
async fn prefetch_stores_the_unmirrored_entries() {
    use sha2::Digest;
    let bodies: Vec<(&'static str, Vec<u8>)> = vec![
        ("a.bin", vec![b'a'; 1000]),
        ("b.bin", vec![b'b'; 2000]),
        ("c.bin", vec![b'c'; 3000]),
    ];
    let (addr, server) = serve_files(bodies.clone()).await;
    for db in TestDb::all().await {
        let extra = format!("[origin]\nbase_url = \"http://{addr}/\"\nretries = 0\n");
        let env = Env::new(db, &extra).await;
        let lines = "{\"remote_id\":\"a\",\"url\":\"files/a.bin\",\"size\":1000}\n\
                     {\"remote_id\":\"b\",\"url\":\"files/b.bin\",\"size\":2000}\n\
                     {\"remote_id\":\"c\",\"url\":\"files/c.bin\",\"size\":3000}\n\
                     {\"remote_id\":\"gone\",\"url\":\"files/gone.bin\",\"size\":10}\n";
        let file = env.file("c.jsonl", lines);
        env.import(&file, &[]).await.ok();

        let before = env.snapshot().await;
        let plan = env
            .run(&["prefetch", "--unmirrored", "--dry-run", "-o", "json"])
            .await
            .ok()
            .json();
        assert_eq!(plan["candidates"].as_u64(), Some(4), "{plan}");
        assert_eq!(plan["bytes"].as_u64(), Some(6010), "{plan}");
        env.run(&["prefetch", "--unmirrored"])
            .await
            .usage_error(&["--yes"]);
        let budget = env
            .run(&[
                "prefetch",
                "--unmirrored",
                "--max-bytes",
                "3000",
                "--dry-run",
                "-o",
                "json",
            ])
            .await
            .ok()
            .json();
        assert_eq!(
            (
                budget["candidates"].as_u64(),
                budget["over_budget"].as_u64()
            ),
            (Some(2), Some(2)),
            "{budget}"
        );
        env.run(&["prefetch", "--ids", "999", "--yes"])
            .await
            .usage_error(&["999"]);
        assert_eq!(
            env.snapshot().await,
            before,
            "previews and refusals change nothing"
        );

        let r = env
            .run(&["prefetch", "--unmirrored", "--yes", "-o", "json"])
            .await;
        r.expect_code(1);
        let r = r.json();
        assert_eq!(
            (r["stored"].as_u64(), r["failed"].as_u64()),
            (Some(3), Some(1)),
            "{r}"
        );
        let rows = env
            .rows(
                "SELECT key, sha256, CAST(is_stale AS TEXT) FROM mirrored_files \
                 WHERE deleted_at IS NULL ORDER BY key",
                &[],
            )
            .await;
        let want: Vec<Vec<Option<String>>> = bodies
            .iter()
            .map(|(name, body)| {
                vec![
                    Some(format!("files/{name}")),
                    Some(hex::encode(sha2::Sha256::digest(body))),
                    Some(
                        if env.backend == "sqlite" {
                            "0"
                        } else {
                            "false"
                        }
                        .to_string(),
                    ),
                ]
            })
            .collect();
        assert_eq!(rows, want);
        // Only the entry the origin does not have is left, and a second run fetches only it.
        let left = env.list(&["--unmirrored"]).await;
        assert_eq!(left["unmirrored"].as_i64(), Some(1), "{left}");
        let again = env
            .run(&["prefetch", "--unmirrored", "--yes", "-o", "json"])
            .await;
        again.expect_code(1);
        assert_eq!(again.json()["candidates"].as_u64(), Some(1));
        // --top N ranks by successful downloads in the window and takes the N most
        // downloaded, fetching those without a fresh copy: c (5), a (3), then b (1) left out.
        let ids: Vec<(String, i64)> = env
            .rows(
                "SELECT key, CAST(id AS TEXT) FROM mirrored_files ORDER BY key",
                &[],
            )
            .await
            .into_iter()
            .map(|r| {
                let id = r[1].as_deref().and_then(|v| v.parse().ok()).expect("id");
                (r[0].clone().expect("key"), id)
            })
            .collect();
        let mut events = Vec::new();
        for (key, n) in [("files/a.bin", 3), ("files/b.bin", 1), ("files/c.bin", 5)] {
            let id = ids.iter().find(|(k, _)| k == key).expect("mirrored").1;
            for _ in 0..n {
                events.push(mirrorctl::engine::model::NewDownloadEvent {
                    occurred_at: Utc::now(),
                    file_id: id,
                    cache_hit: true,
                    bytes: 10,
                    duration_ms: 1,
                    status: 200,
                });
            }
        }
        env.db.db.record_downloads(&events).await.expect("events");
        let top_plan = || async {
            env.run(&[
                "prefetch",
                "--top",
                "2",
                "-w",
                "7d",
                "--dry-run",
                "-o",
                "json",
            ])
            .await
            .ok()
            .json()
        };
        let top = top_plan().await;
        assert_eq!(
            (top["candidates"].as_u64(), top["already_mirrored"].as_u64()),
            (Some(0), Some(2)),
            "all fresh: {top}"
        );
        let stale = match env.db.db.backend() {
            Backend::Sqlite => "UPDATE mirrored_files SET is_stale = 1",
            Backend::Postgres => "UPDATE mirrored_files SET is_stale = TRUE",
        };
        env.rows(&format!("{stale} RETURNING key"), &[]).await;
        let top = top_plan().await;
        let keys: Vec<&str> = top["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|i| i["key"].as_str())
            .collect();
        assert_eq!(keys, ["files/c.bin", "files/a.bin"], "{top}");
        let r = env
            .run(&["prefetch", "--top", "2", "--yes", "-o", "json"])
            .await
            .ok()
            .json();
        assert_eq!(r["stored"].as_u64(), Some(2), "{r}");
        let fresh = env
            .rows(
                "SELECT key FROM mirrored_files WHERE deleted_at IS NULL AND NOT is_stale ORDER BY key",
                &[],
            )
            .await;
        assert_eq!(
            fresh,
            vec![
                vec![Some("files/a.bin".to_string())],
                vec![Some("files/c.bin".to_string())]
            ]
        );

        // A named entry that is already fresh is counted, not fetched again.
        let a = env
            .run(&["catalog", "show", "http/a", "-o", "json"])
            .await
            .ok()
            .json();
        let id = a["id"].as_i64().expect("id").to_string();
        let named = env
            .run(&["prefetch", "--ids", &id, "--yes", "-o", "json"])
            .await
            .ok()
            .json();
        assert_eq!(
            (
                named["candidates"].as_u64(),
                named["already_mirrored"].as_u64()
            ),
            (Some(0), Some(1)),
            "{named}"
        );
    }
    server.abort();
}
