//! Archived months read back (the archive's retrieval path): one file's downloads per day in
//! months whose events now live only in Parquet on S3. The parts are downloaded once into a
//! local cache (bounded, keyed by partition and manifest checksum, so a re-archived month is
//! fetched anew) and decoded with a predicate on `file_id`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::codec::daily_downloads;
use super::verify::{archive_bucket_for, download, load_manifest};
use super::{Manifest, MANIFEST_NAME};
use crate::engine::db::{ArchiveRecord, Month};
use crate::engine::error::{Error, Result};
use crate::engine::model::DailyDownloads;
use crate::engine::s3::S3Bucket;
use crate::engine::Ctx;

/// The cache holds at most this much; the least recently used months go first. A month of
/// 17M events is about 170 MiB of Parquet.
const CACHE_MAX_BYTES: u64 = 2 << 30;
/// Overrides where the cache lives (default: the user cache dir's `mirrorctl/archive`).
pub const CACHE_DIR_ENV: &str = "MIRRORCTL_CACHE_DIR";
/// Touched at every use of a cached month: its mtime orders eviction.
const LAST_USED: &str = ".last_used";
/// The manifest as it was verified against the record's checksum.
const CACHED_MANIFEST: &str = "manifest.json";

/// Days read from archives, and the archived months that could not be read.
#[derive(Debug, Default)]
pub struct ArchivedDays {
    pub days: Vec<DailyDownloads>,
    /// `partition: why`, one per archived month in the window that could not be read.
    pub unavailable: Vec<String>,
}

/// Downloads per day of one file since `since`, from the archived months that overlap the
/// window (months restored into the database are read there, not here). A month whose archive
/// cannot be read is named in `unavailable` instead of failing the whole answer.
pub async fn downloads_per_day(
    ctx: &Ctx,
    file_id: i64,
    since: DateTime<Utc>,
) -> Result<ArchivedDays> {
    let records: Vec<ArchiveRecord> = ctx
        .db
        .archive_records()
        .await?
        .into_iter()
        .filter(|r| r.state == "archived")
        .filter(|r| {
            Month::from_partition_name(&r.partition).is_some_and(|m| m.next().start() > since)
        })
        .collect();
    let mut out = ArchivedDays::default();
    if records.is_empty() {
        return Ok(out);
    }
    let Some(root) = cache_root() else {
        out.unavailable = records
            .iter()
            .map(|r| format!("{}: no cache directory (set {CACHE_DIR_ENV})", r.partition))
            .collect();
        return Ok(out);
    };
    let mut used = HashSet::new();
    for r in &records {
        let dir = root.join(format!(
            "{}-{}",
            r.partition,
            r.sha256.get(..16).unwrap_or(&r.sha256)
        ));
        used.insert(dir.clone());
        match month_days(ctx, r, &dir, file_id, since).await {
            Ok(days) => {
                out.days.extend(
                    days.into_iter()
                        .map(|(day, (downloads, bytes))| DailyDownloads {
                            day,
                            downloads,
                            bytes,
                            from_archive: true,
                        }),
                )
            }
            Err(e) => out.unavailable.push(format!("{}: {e}", r.partition)),
        }
    }
    if let Err(e) = evict(&root, &used, CACHE_MAX_BYTES) {
        tracing::warn!("archive cache {}: {e}", root.display());
    }
    Ok(out)
}

/// Where cached parts live.
pub fn cache_root() -> Option<PathBuf> {
    match std::env::var_os(CACHE_DIR_ENV) {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => directories::ProjectDirs::from("", "", "mirrorctl")
            .map(|d| d.cache_dir().join("archive")),
    }
}

/// One archived month's days for the file: the cached parts (fetched first if need be),
/// decoded on a blocking thread.
async fn month_days(
    ctx: &Ctx,
    record: &ArchiveRecord,
    dir: &Path,
    file_id: i64,
    since: DateTime<Utc>,
) -> Result<BTreeMap<String, (i64, i64)>> {
    let parts = cached_parts(ctx, record, dir).await?;
    let partition = record.partition.clone();
    tokio::task::spawn_blocking(move || {
        let mut days = BTreeMap::new();
        for p in &parts {
            daily_downloads(p, file_id, since, &mut days).map_err(|e| {
                Error::runtime(format!("{partition}: reading {}: {e}", p.display()))
            })?;
        }
        Ok(days)
    })
    .await
    .map_err(|e| Error::runtime(format!("archive reader stopped: {e}")))?
}

/// The month's part files in the cache, downloaded and checked against the manifest's sha256
/// when missing. A directory is complete once its manifest copy is written, which happens last.
async fn cached_parts(ctx: &Ctx, record: &ArchiveRecord, dir: &Path) -> Result<Vec<PathBuf>> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        Error::runtime(format!("archive cache: {what} {}: {e}", path.display()))
    };
    let manifest_copy = dir.join(CACHED_MANIFEST);
    let cached: Option<Manifest> = std::fs::read(&manifest_copy)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .filter(|m: &Manifest| {
            m.parts
                .iter()
                .all(|p| safe_name(&p.file).is_ok_and(|f| dir.join(f).is_file()))
        });
    let manifest = match cached {
        Some(m) => m,
        // Not cached, or damaged (a part removed by hand): fetched again.
        None => {
            let bucket = archive_bucket_for(ctx, record).await?;
            remove_other_versions(dir);
            std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
            let manifest = fetch_parts(bucket, record, dir).await?;
            let bytes = serde_json::to_vec(&manifest)
                .map_err(|e| Error::runtime(format!("manifest: {e}")))?;
            std::fs::write(&manifest_copy, bytes).map_err(|e| io("writing", &manifest_copy, e))?;
            manifest
        }
    };
    let stamp = dir.join(LAST_USED);
    std::fs::write(&stamp, b"").map_err(|e| io("writing", &stamp, e))?;
    manifest
        .parts
        .iter()
        .map(|p| safe_name(&p.file).map(|f| dir.join(f)))
        .collect()
}

/// Downloads every part of the month into `dir`, each checked against the manifest (itself
/// checked against the record's checksum).
async fn fetch_parts(bucket: &S3Bucket, record: &ArchiveRecord, dir: &Path) -> Result<Manifest> {
    let manifest = load_manifest(bucket, &record.object_key, &record.sha256)
        .await?
        .map_err(|problem| Error::runtime(format!("archive does not verify: {problem}")))?;
    let prefix = record
        .object_key
        .strip_suffix(MANIFEST_NAME)
        .unwrap_or(&record.object_key);
    for p in &manifest.parts {
        let file = safe_name(&p.file)?;
        let key = format!("{prefix}{file}");
        let partial = dir.join(format!("{file}.partial"));
        match download(bucket, &key, &partial).await? {
            None => return Err(Error::runtime(format!("{key} is missing"))),
            Some((sha, _)) if sha != p.sha256 => {
                let _ = std::fs::remove_file(&partial);
                return Err(Error::runtime(format!(
                    "{key} has sha256 {sha}, the manifest says {}",
                    p.sha256
                )));
            }
            Some(_) => std::fs::rename(&partial, dir.join(file)).map_err(|e| {
                Error::runtime(format!("archive cache: {}: {e}", partial.display()))
            })?,
        }
    }
    Ok(manifest)
}

/// A part's file name from a manifest, refused if it could leave the cache directory.
fn safe_name(file: &str) -> Result<&str> {
    if file.is_empty() || file.starts_with('.') || file.contains(['/', '\\']) {
        return Err(Error::runtime(format!(
            "the manifest names a part {file:?}"
        )));
    }
    Ok(file)
}

/// Removes cached copies of the same partition under another checksum (archived again since).
fn remove_other_versions(dir: &Path) {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name().and_then(|n| n.to_str()))
    else {
        return;
    };
    let Some((partition, _)) = name.rsplit_once('-') else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let other = e.file_name();
        let other = other.to_string_lossy();
        if other != name && other.rsplit_once('-').map(|(p, _)| p) == Some(partition) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Removes the least recently used months until the cache holds at most `max` bytes; the
/// months just used stay.
fn evict(root: &Path, keep: &HashSet<PathBuf>, max: u64) -> std::io::Result<()> {
    let mut months = Vec::new();
    for e in std::fs::read_dir(root)?.flatten() {
        let path = e.path();
        if !path.is_dir() {
            continue;
        }
        let mut size = 0;
        for f in std::fs::read_dir(&path)?.flatten() {
            size += f.metadata().map(|m| m.len()).unwrap_or(0);
        }
        let used = std::fs::metadata(path.join(LAST_USED))
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        months.push((used, size, path));
    }
    let mut total: u64 = months.iter().map(|m| m.1).sum();
    months.sort();
    for (_, size, path) in months {
        if total <= max {
            break;
        }
        if !keep.contains(&path) {
            std::fs::remove_dir_all(&path)?;
            total = total.saturating_sub(size);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_keeps_the_months_in_use_and_drops_the_oldest() {
        let root = tempfile::tempdir().expect("dir");
        let month = |name: &str, bytes: usize, age_s: u64| {
            let dir = root.path().join(name);
            std::fs::create_dir_all(&dir).expect("dir");
            std::fs::write(dir.join("part-00000.parquet"), vec![0u8; bytes]).expect("part");
            let stamp = std::fs::File::create(dir.join(LAST_USED)).expect("stamp");
            stamp
                .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(age_s))
                .expect("mtime");
            dir
        };
        let old = month("download_events_y2024m01-aaaa", 600, 300);
        let mid = month("download_events_y2024m02-bbbb", 600, 200);
        let now = month("download_events_y2024m03-cccc", 600, 0);
        let keep: HashSet<PathBuf> = [now.clone()].into();
        evict(root.path(), &keep, 1300).expect("evict");
        assert!(!old.exists() && mid.exists() && now.exists());
        evict(root.path(), &keep, 0).expect("evict");
        assert!(
            !mid.exists() && now.exists(),
            "the month in use is never evicted"
        );
    }

    #[test]
    fn a_new_checksum_replaces_the_cached_copy() {
        let root = tempfile::tempdir().expect("dir");
        let old = root.path().join("download_events_y2024m01-aaaa");
        let other = root.path().join("download_events_y2024m02-aaaa");
        std::fs::create_dir_all(&old).expect("dir");
        std::fs::create_dir_all(&other).expect("dir");
        remove_other_versions(&root.path().join("download_events_y2024m01-bbbb"));
        assert!(!old.exists() && other.exists());
    }

    #[test]
    fn part_names_cannot_leave_the_cache() {
        assert!(safe_name("part-00000.parquet").is_ok());
        for bad in ["../x", "a/b", "", ".last_used", "..\\x"] {
            assert!(safe_name(bad).is_err(), "{bad}");
        }
    }
}
