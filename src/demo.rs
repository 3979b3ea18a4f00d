//! The embedded demo: an in-process S3-compatible endpoint (s3s-fs) and an in-process HTTP
//! origin over a directory, with a deterministic, realistic dataset generated on first use.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use md5::Digest;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{BucketConfig, Config, Secret};
use crate::engine::db::Db;
use crate::engine::error::{Error, Result};
use crate::engine::model::{InventoryRow, NewDownloadEvent, NewMirroredFile, NewOriginFile};
use crate::engine::s3::S3Bucket;

pub const ACCESS_KEY: &str = "mirrorctl-demo";
pub const SECRET_KEY: &str = "mirrorctl-demo-secret";
pub const BUCKETS: [&str; 3] = ["mirror", "backup", "archive"];
/// Bump when the generator changes so old demo directories are regenerated.
const GENERATOR_VERSION: &str = "5";

/// Sizes of the generated dataset.
const ORIGIN_FILES: usize = 2100;
const DAYS: i64 = 200;
const TARGET_EVENTS: f64 = 240_000.0;
const DORMANT_FILES: usize = 30;
const CHANGED_AT_ORIGIN: usize = 60;
const MISSING_IN_MIRROR: usize = 12;
/// Catalog entries new at the origin and never downloaded: no mirrored copy yet (what the
/// TUI's Catalog view and `prefetch` are for). Generated last, from their own seed, so the
/// rest of the dataset and its counts are as before.
const CATALOG_ONLY: usize = 40;

/// The demo directory: `MIRRORCTL_DEMO_DIR`, else `<data dir>/demo`. An empty variable counts
/// as unset: it must never mean "the current directory" (a demo written there lands in
/// whatever checkout the command ran from).
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MIRRORCTL_DEMO_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    directories::ProjectDirs::from("", "", "mirrorctl")
        .map(|d| d.data_dir().join("demo"))
        .unwrap_or_else(|| PathBuf::from(".mirrorctl-demo"))
}

/// A running demo: both servers, and the config that points at them.
pub struct Demo {
    pub dir: PathBuf,
    pub s3_endpoint: String,
    pub origin_url: String,
    pub config: Config,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Fixed ports for `demo up`; `0` lets the system choose.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ports {
    pub s3: u16,
    pub origin: u16,
}

impl Demo {
    /// Starts both servers over `dir` and builds the config pointing at them.
    /// Does not generate data: see `ensure_generated`.
    pub async fn start(dir: &Path, ports: Ports) -> Result<Demo> {
        std::fs::create_dir_all(dir.join("s3"))
            .and_then(|_| std::fs::create_dir_all(dir.join("origin")))
            .map_err(|e| Error::runtime(format!("demo directory {}: {e}", dir.display())))?;
        for b in BUCKETS {
            std::fs::create_dir_all(dir.join("s3").join(b))?;
        }
        let (s3_addr, s3_task) = start_s3(&dir.join("s3"), ports.s3).await?;
        let (origin_addr, origin_task) = start_origin(&dir.join("origin"), ports.origin).await?;
        let s3_endpoint = format!("http://{s3_addr}");
        let origin_url = format!("http://{origin_addr}/");
        let config = demo_config(dir, &s3_endpoint, &origin_url);
        Ok(Demo {
            dir: dir.to_path_buf(),
            s3_endpoint,
            origin_url,
            config,
            tasks: vec![s3_task, origin_task],
        })
    }

    /// True once a complete dataset of the current generator version exists.
    pub fn is_generated(&self) -> bool {
        std::fs::read_to_string(self.dir.join(".generated"))
            .map(|v| v.trim() == GENERATOR_VERSION)
            .unwrap_or(false)
    }

    /// Generates the dataset unless a complete one exists. Returns whether it generated.
    pub async fn ensure_generated(&self, progress: &dyn Fn(&str)) -> Result<bool> {
        if self.is_generated() {
            return Ok(false);
        }
        self.generate(progress).await?;
        Ok(true)
    }

    /// Wipes the directory's data and generates it again.
    pub async fn generate(&self, progress: &dyn Fn(&str)) -> Result<()> {
        let _ = std::fs::remove_file(self.dir.join(".generated"));
        for f in ["mirror.db", "mirror.db-wal", "mirror.db-shm"] {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
        for sub in ["origin"]
            .iter()
            .map(|s| self.dir.join(s))
            .chain(BUCKETS.iter().map(|b| self.dir.join("s3").join(b)))
        {
            let _ = std::fs::remove_dir_all(&sub);
            std::fs::create_dir_all(&sub)?;
        }
        let db = Db::connect(
            self.config.database_url().map_err(Error::Usage)?,
            4,
            Duration::from_secs(10),
        )
        .await?;
        db.migrate().await?;
        let mirror = S3Bucket::connect(
            self.config
                .buckets
                .mirror
                .as_ref()
                .expect("demo config has a mirror"),
        )
        .await?;
        let backup = S3Bucket::connect(
            self.config
                .buckets
                .backup
                .as_ref()
                .expect("demo config has a backup"),
        )
        .await?;
        generate(&self.dir, &db, &mirror, &backup, progress).await?;
        db.close().await;
        std::fs::write(self.dir.join(".generated"), GENERATOR_VERSION)?;
        Ok(())
    }
}

/// The configuration of a demo at these endpoints.
pub fn demo_config(dir: &Path, s3_endpoint: &str, origin_url: &str) -> Config {
    let mut c = Config::default();
    c.database.url = Some(Secret::new(format!(
        "sqlite://{}",
        dir.join("mirror.db").display()
    )));
    let bucket =
        |name: &str| BucketConfig::with_static_keys(name, s3_endpoint, ACCESS_KEY, SECRET_KEY);
    c.buckets.mirror = Some(bucket("mirror"));
    c.buckets.backup = Some(bucket("backup"));
    let mut archive = bucket("archive");
    archive.prefix = String::new();
    c.buckets.archive = Some(archive);
    c.origin.base_url = Some(origin_url.to_string());
    c
}

async fn bind(port: u16) -> Result<TcpListener> {
    TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| Error::runtime(format!("cannot listen on 127.0.0.1:{port}: {e}")))
}

/// An s3s-fs endpoint over `root` (one directory per bucket), with the demo's keys.
pub async fn start_s3(root: &Path, port: u16) -> Result<(SocketAddr, JoinHandle<()>)> {
    let fs = s3s_fs::FileSystem::new(root)
        .map_err(|e| Error::runtime(format!("S3 endpoint over {}: {e:?}", root.display())))?;
    let mut b = s3s::service::S3ServiceBuilder::new(fs);
    b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = b.build();
    let listener = bind(port).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let _ = socket.set_nodelay(true);
            let conn = http
                .serve_connection(TokioIo::new(socket), service.clone())
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    Ok((addr, task))
}

/// A static HTTP origin over `root`: GET/HEAD with Content-Length, ETag and Last-Modified.
pub async fn start_origin(root: &Path, port: u16) -> Result<(SocketAddr, JoinHandle<()>)> {
    let app = axum::Router::new()
        .route("/{*path}", axum::routing::get(serve_origin_file))
        .with_state(root.to_path_buf());
    let listener = bind(port).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}

async fn serve_origin_file(
    State(root): State<PathBuf>,
    UrlPath(path): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if path.split('/').any(|seg| seg == "..") || path.chars().any(char::is_control) {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let full = root.join(&path);
    let Ok(file) = tokio::fs::File::open(&full).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Ok(meta) = file.metadata().await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !meta.is_file() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
    let etag = origin_etag(&meta);
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_matches('"') == etag)
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let last_modified = DateTime::<Utc>::from(mtime)
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    // 256 KiB reads: every read of a tokio file is a trip to the blocking pool, and the
    // default 4 KiB chunks held a 1 GiB download to ~110 MiB/s.
    let body = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
    let mut resp = axum::body::Body::from_stream(body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.len()));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("\"{etag}\"")) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&last_modified) {
        h.insert(header::LAST_MODIFIED, v);
    }
    resp
}

/// nginx-style `<mtime>-<size>` in hex, with nanosecond mtime so rewrites always change it.
fn origin_etag(meta: &std::fs::Metadata) -> String {
    let ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{ns:x}-{:x}", meta.len())
}

/// Deterministic file content.
fn content(seed: u64, size: usize) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut v = vec![0u8; size];
    rng.fill(&mut v[..]);
    v
}

struct GenFile {
    remote_id: String,
    path: String,
    size: usize,
    seed: u64,
}

/// Builds the dataset: origin files, mirrored objects and rows, months of downloads through
/// the real write path, stale and missing files, backup drift and inventory disagreements.
async fn generate(
    dir: &Path,
    db: &Db,
    mirror: &S3Bucket,
    backup: &S3Bucket,
    progress: &dyn Fn(&str),
) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(0x6d69_7272_6f72);
    let now = Utc::now()
        .duration_trunc(TimeDelta::hours(1))
        .unwrap_or_else(|_| Utc::now());
    let start = now - TimeDelta::days(DAYS);

    // Origin files: mods with one to three files each, log-uniform sizes 512 B – 32 KiB.
    progress("writing origin files");
    let names = [
        "textures", "models", "sounds", "maps", "scripts", "ui", "fonts", "shaders",
    ];
    let mut files = Vec::with_capacity(ORIGIN_FILES);
    let mut mod_id = 4100u32;
    while files.len() < ORIGIN_FILES {
        mod_id += rng.random_range(1..40);
        for _ in 0..rng.random_range(1..=3) {
            let file_id = 90_000 + files.len() as u32 * 7;
            let name = names[rng.random_range(0..names.len())];
            let size = (512.0 * (64.0f64).powf(rng.random::<f64>())) as usize;
            files.push(GenFile {
                remote_id: format!("{mod_id}-{file_id}"),
                path: format!(
                    "mods/{mod_id}/{file_id}/{name}-v{}.zip",
                    rng.random_range(1..9)
                ),
                size,
                seed: files.len() as u64,
            });
        }
    }
    files.truncate(ORIGIN_FILES);
    let origin_root = dir.join("origin");
    let mut origin_rows = Vec::with_capacity(files.len());
    for f in &files {
        let p = origin_root.join(&f.path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, content(f.seed, f.size))?;
        let meta = std::fs::metadata(&p)?;
        origin_rows.push(NewOriginFile {
            source: "http".into(),
            remote_id: f.remote_id.clone(),
            file_name: f.path.rsplit('/').next().unwrap_or(&f.path).to_string(),
            url: f.path.clone(),
            size: Some(f.size as i64),
            etag: Some(origin_etag(&meta)),
            updated_at: start + TimeDelta::seconds(rng.random_range(0..DAYS * 86_400 / 4)),
        });
    }
    let origin_ids = db.insert_origin_files(&origin_rows).await?;

    // Download events: Zipf popularity, daily and weekly rhythm, slow growth.
    progress("simulating downloads");
    let mut cdf = Vec::with_capacity(files.len());
    let mut acc = 0.0;
    let mut order: Vec<usize> = (0..files.len()).collect();
    // Popularity rank is a shuffle of the files, so popular files are spread across mods.
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    for rank in 0..files.len() {
        acc += 1.0 / ((rank + 1) as f64).powf(1.1);
        cdf.push(acc);
    }
    // Dormant files: popular enough to have history, silent for the last 100 days.
    let dormant: std::collections::HashSet<usize> =
        order[40..40 + DORMANT_FILES].iter().copied().collect();
    let dormant_cutoff = now - TimeDelta::days(100);
    let hours = DAYS * 24;
    let base = TARGET_EVENTS / hours as f64 / 0.47;
    let mut raw: Vec<(DateTime<Utc>, usize, u32)> =
        Vec::with_capacity(TARGET_EVENTS as usize + 10_000);
    for h in 0..hours {
        let t = start + TimeDelta::hours(h);
        use chrono::{Datelike, Timelike};
        let hour = t.hour() as f64;
        let daily = 0.55 + 0.45 * ((hour - 18.0) / 24.0 * std::f64::consts::TAU).cos();
        let weekly = if t.weekday().number_from_monday() >= 6 {
            1.3
        } else {
            1.0
        };
        let growth = 0.6 + 0.4 * h as f64 / hours as f64;
        let lambda = base * daily * weekly * growth;
        let n = lambda.floor() as usize + usize::from(rng.random::<f64>() < lambda.fract());
        for _ in 0..n {
            let x = rng.random::<f64>() * acc;
            let rank = cdf.partition_point(|&c| c < x).min(files.len() - 1);
            let idx = order[rank];
            if dormant.contains(&idx) && t >= dormant_cutoff {
                continue;
            }
            let at = t + TimeDelta::seconds(rng.random_range(0..3600));
            raw.push((at, idx, rng.random()));
        }
    }
    raw.sort_by_key(|e| e.0);

    // Mirrored files: every file that was ever downloaded, mirrored at its first download.
    let mut first_seen: Vec<Option<DateTime<Utc>>> = vec![None; files.len()];
    for (at, idx, _) in &raw {
        first_seen[*idx].get_or_insert(*at);
    }
    let mirrored: Vec<usize> = (0..files.len())
        .filter(|i| first_seen[*i].is_some())
        .collect();
    // Pick the special files among the mirrored, non-dormant ones, deterministically.
    let mut pool: Vec<usize> = mirrored
        .iter()
        .copied()
        .filter(|i| !dormant.contains(i))
        .collect();
    for i in (1..pool.len()).rev() {
        pool.swap(i, rng.random_range(0..=i));
    }
    let changed: Vec<usize> = pool[..CHANGED_AT_ORIGIN].to_vec();
    let missing: Vec<usize> =
        pool[CHANGED_AT_ORIGIN..CHANGED_AT_ORIGIN + MISSING_IN_MIRROR].to_vec();
    let drift_pool = &pool[CHANGED_AT_ORIGIN + MISSING_IN_MIRROR..];
    let missing_in_backup: Vec<usize> = drift_pool[..15].to_vec();
    let backup_other_size: Vec<usize> = drift_pool[15..25].to_vec();
    let backup_same_size: Vec<usize> = drift_pool[25..33].to_vec();
    let no_inventory_row: Vec<usize> = drift_pool[33..43].to_vec();
    let inventory_wrong_size: Vec<usize> = drift_pool[43..48].to_vec();

    // Upload the mirror copies (all but the missing ones) and the backup copies with drift.
    progress("uploading objects");
    let mut mirror_rows = Vec::with_capacity(mirrored.len());
    let mut etags = std::collections::HashMap::new();
    let uploads = futures::stream::iter(mirrored.iter().copied().filter(|i| !missing.contains(i)))
        .map(|i| {
            let f = &files[i];
            let body = Bytes::from(content(f.seed, f.size));
            async move {
                mirror
                    .put_bytes(&f.path, body, Some("application/zip"))
                    .await
                    .map(|r| (i, r))
            }
        })
        .buffer_unordered(16);
    futures::pin_mut!(uploads);
    while let Some(r) = uploads.next().await {
        let (i, put) = r?;
        etags.insert(i, put.etag);
    }
    let backup_puts = mirrored
        .iter()
        .copied()
        .filter(|i| !missing_in_backup.contains(i))
        .map(|i| {
            let f = &files[i];
            let body = if backup_other_size.contains(&i) {
                content(f.seed ^ 0xbad, f.size + 17)
            } else if backup_same_size.contains(&i) {
                content(f.seed ^ 0xbad, f.size)
            } else {
                content(f.seed, f.size)
            };
            (f.path.clone(), body)
        })
        .chain((0..10).map(|n| {
            (
                format!("mods/retired/{n}/old-pack.zip"),
                content(900_000 + n, 2048 + n as usize),
            )
        }))
        .collect::<Vec<_>>();
    let puts = futures::stream::iter(backup_puts)
        .map(|(key, body)| async move {
            backup
                .put_bytes(&key, Bytes::from(body), Some("application/zip"))
                .await
        })
        .buffer_unordered(16);
    futures::pin_mut!(puts);
    while let Some(r) = puts.next().await {
        r?;
    }

    for &i in &mirrored {
        let f = &files[i];
        let data = content(f.seed, f.size);
        let already_stale_missing = missing[..5].contains(&i);
        let already_stale_changed = changed[..8].contains(&i);
        mirror_rows.push(NewMirroredFile {
            origin_file_id: origin_ids[i],
            bucket: "mirror".into(),
            key: f.path.clone(),
            size: f.size as i64,
            sha256: Some(hex::encode(sha2::Sha256::digest(&data))),
            etag: etags
                .get(&i)
                .cloned()
                .flatten()
                .or_else(|| Some(hex::encode(md5::Md5::digest(&data)))),
            mirrored_at: first_seen[i].unwrap_or(start),
            is_stale: already_stale_missing || already_stale_changed,
            stale_reason: if already_stale_missing {
                Some("missing".into())
            } else if already_stale_changed {
                Some("origin size changed".into())
            } else {
                None
            },
        });
    }
    let mirrored_ids = db.insert_mirrored_files(&mirror_rows).await?;
    let mut file_id_of = vec![0i64; files.len()];
    for (k, &i) in mirrored.iter().enumerate() {
        file_id_of[i] = mirrored_ids[k];
    }

    // The origin moves on: new content for some files, after they were mirrored.
    for (n, &i) in changed.iter().enumerate() {
        let f = &files[i];
        let size = if n % 3 == 0 {
            f.size
        } else {
            f.size + 1024 + n * 13
        };
        std::fs::write(origin_root.join(&f.path), content(f.seed ^ 0x5eed, size))?;
    }

    progress("recording downloads");
    let mut seen = vec![false; files.len()];
    let mut batch = Vec::with_capacity(20_000);
    for (at, idx, roll) in raw {
        let first = !seen[idx];
        seen[idx] = true;
        let roll = roll as f64 / u32::MAX as f64;
        let (cache_hit, status) = if roll < 0.002 {
            (false, 502)
        } else if first || roll < 0.07 {
            (false, 200)
        } else {
            (true, 200)
        };
        let size = files[idx].size as i64;
        batch.push(NewDownloadEvent {
            occurred_at: at,
            file_id: file_id_of[idx],
            cache_hit,
            bytes: if status == 200 { size } else { 0 },
            duration_ms: if cache_hit {
                4 + (roll * 400.0) as i32 % 40
            } else {
                120 + (roll * 9000.0) as i32 % 1800
            },
            status,
        });
        if batch.len() == batch.capacity() {
            db.record_downloads(&batch).await?;
            batch.clear();
        }
    }
    db.record_downloads(&batch).await?;

    // The backup inventory: what the database believes, wrong in both directions.
    progress("writing the backup inventory");
    let mut inventory = Vec::new();
    for (k, &i) in mirrored.iter().enumerate() {
        if missing.contains(&i) || no_inventory_row.contains(&i) {
            continue;
        }
        let row = &mirror_rows[k];
        inventory.push(InventoryRow {
            path: row.key.clone(),
            size: if inventory_wrong_size.contains(&i) {
                row.size + 4096
            } else {
                row.size
            },
            etag: row.etag.clone(),
            content_type: Some("application/zip".into()),
            is_backed_up: !missing_in_backup.contains(&i),
            last_modified: Some(row.mirrored_at),
            deleted: false,
            updated_at: row.mirrored_at,
        });
    }
    for n in 0..10 {
        inventory.push(InventoryRow {
            path: format!("mods/ghost/{n}/never-uploaded.zip"),
            size: 1000 + n,
            etag: None,
            content_type: Some("application/zip".into()),
            is_backed_up: true,
            last_modified: Some(start),
            deleted: false,
            updated_at: start,
        });
    }
    db.upsert_inventory(&inventory).await?;

    progress("adding catalog entries not mirrored yet");
    let mut rng = ChaCha8Rng::seed_from_u64(0x6361_7461_6c6f);
    let mut catalog_only = Vec::with_capacity(CATALOG_ONLY);
    while catalog_only.len() < CATALOG_ONLY {
        mod_id += rng.random_range(1..40);
        let in_mod = rng
            .random_range(1..=3)
            .min(CATALOG_ONLY - catalog_only.len());
        for _ in 0..in_mod {
            let n = files.len() + catalog_only.len();
            let file_id = 90_000 + n as u32 * 7;
            let name = names[rng.random_range(0..names.len())];
            let size = (512.0 * (64.0f64).powf(rng.random::<f64>())) as usize;
            let path = format!("mods/{mod_id}/{file_id}/{name}-v1.zip");
            let p = origin_root.join(&path);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&p, content(n as u64, size))?;
            let meta = std::fs::metadata(&p)?;
            catalog_only.push(NewOriginFile {
                source: "http".into(),
                remote_id: format!("{mod_id}-{file_id}"),
                file_name: format!("{name}-v1.zip"),
                url: path,
                size: Some(size as i64),
                etag: Some(origin_etag(&meta)),
                // Uploaded in the last three days.
                updated_at: now - TimeDelta::minutes(rng.random_range(5..3 * 24 * 60)),
            });
        }
    }
    db.insert_origin_files(&catalog_only).await?;
    Ok(())
}
