//! Classification for `drift`: what one key's main object, backup object and inventory row
//! say of each other. Size and ETags decide when they can; then HEAD (ETags, full-object
//! checksums); then, with `--checksum`, hashes of both bodies. Never "same" without evidence.

use std::sync::atomic::Ordering;

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::listing::{with_retry, InventoryEntry};
use super::merge::Scan;
use super::{DriftItem, InventoryStatus, ObjectSide, PairStatus};
use crate::engine::error::{Error, Result};
use crate::engine::s3::{ObjectInfo, S3Bucket};

/// Decides one key and records it: counts it, prints its line, keeps it (`keep_items`) and
/// hands it to the repair when it disagrees. A key with open replication is `pending`
/// whatever the buckets say: it is neither compared nor repaired.
pub(super) async fn classify(
    scan: &Scan,
    key: String,
    mo: Option<ObjectInfo>,
    bo: Option<ObjectInfo>,
    io: Option<InventoryEntry>,
    pending: bool,
    repair: Option<&mpsc::Sender<DriftItem>>,
) {
    let c = &scan.counters;
    if pending {
        if mo.is_none() && bo.is_none() && io.is_none() {
            return;
        }
        c.pending.fetch_add(1, Ordering::Relaxed);
        let in_bucket = mo.is_some() || bo.is_some();
        if in_bucket {
            if let Some(sink) = &scan.params.on_line {
                sink(PairStatus::Pending.mark(), &key);
            }
        }
        if scan.params.keep_items {
            let item = DriftItem {
                key,
                status: in_bucket.then_some(PairStatus::Pending),
                inventory_status: None,
                detail: Some("replication pending".into()),
                main: mo.as_ref().map(ObjectSide::from),
                backup: bo.as_ref().map(ObjectSide::from),
                inventory: io.and_then(InventoryEntry::into_row),
            };
            if let Ok(mut items) = scan.items.lock() {
                items.push(item);
            }
        }
        return;
    }
    let (status, mut detail) = match (&mo, &bo) {
        (Some(m), Some(b)) => compare_pair(scan, &key, m, b).await,
        (Some(_), None) => (Some(PairStatus::MissingInBackup), None),
        (None, Some(_)) => (Some(PairStatus::ExtraInBackup), None),
        (None, None) => (None, None),
    };
    if let Some(s) = status {
        let counter = match s {
            PairStatus::Same => &c.same,
            PairStatus::MissingInBackup => &c.missing_in_backup,
            PairStatus::ExtraInBackup => &c.extra_in_backup,
            PairStatus::Differ => &c.differ,
            PairStatus::Unverifiable => &c.unverifiable,
            PairStatus::Error => &c.errors,
            PairStatus::Pending => &c.pending,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(sink) = &scan.params.on_line {
            sink(s.mark(), &key);
        }
    }
    // The inventory describes the primary copy; the backup stands in when main lacks it.
    let object = mo.as_ref().or(bo.as_ref());
    let inventory_status = match (object, &io) {
        (Some(_), None) => Some(InventoryStatus::InventoryMissing),
        (None, Some(_)) => Some(InventoryStatus::InventoryOrphaned),
        (Some(o), Some(row)) => {
            let why = inventory_disagreement(o, row, bo.is_some());
            if let Some(w) = why {
                detail = Some(match detail {
                    Some(d) => format!("{d}; inventory {w}"),
                    None => format!("inventory {w}"),
                });
                Some(InventoryStatus::InventoryDiffer)
            } else {
                None
            }
        }
        (None, None) => None,
    };
    if let Some(s) = inventory_status {
        match s {
            InventoryStatus::InventoryMissing => &c.inventory_missing,
            InventoryStatus::InventoryOrphaned => &c.inventory_orphaned,
            InventoryStatus::InventoryDiffer => &c.inventory_differ,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
    let disagrees = status.is_some_and(|s| s != PairStatus::Same) || inventory_status.is_some();
    if !disagrees || !(scan.params.keep_items || repair.is_some()) {
        return;
    }
    let item = DriftItem {
        key,
        status,
        inventory_status,
        detail,
        main: mo.as_ref().map(ObjectSide::from),
        backup: bo.as_ref().map(ObjectSide::from),
        inventory: io.and_then(InventoryEntry::into_row),
    };
    if scan.params.keep_items {
        if let Ok(mut items) = scan.items.lock() {
            items.push(item.clone());
        }
    }
    if let Some(queue) = repair {
        // Waits while the repair is behind: the merge goes at the repair's pace, and memory
        // stays bounded. A closed queue means the repair stopped (cancelled): nothing to do.
        let _ = queue.send(item).await;
    }
}

/// Why an inventory row disagrees with the object it describes, if it does.
fn inventory_disagreement(o: &ObjectInfo, row: &InventoryEntry, in_backup: bool) -> Option<String> {
    let mut why = Vec::new();
    let size = row.size();
    if size < 0 || size as u64 != o.size {
        why.push(format!("size {size} vs object {}", o.size));
    }
    if let (Some(re), Some(oe)) = (row.etag(), o.etag.as_deref()) {
        if re.trim_matches('"') != oe {
            why.push(format!("etag {re} vs object {oe}"));
        }
    }
    if row.is_backed_up() != in_backup {
        why.push(format!(
            "is_backed_up {} but the backup {}",
            row.is_backed_up(),
            if in_backup { "has it" } else { "does not" }
        ));
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// How an ETag was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EtagKind {
    /// A single-part upload: the MD5 of the body.
    Md5,
    /// A multipart upload of this many parts: the MD5 of the part MD5s, then "-N".
    Multipart(u32),
}

fn etag_kind(etag: &str) -> Option<EtagKind> {
    match etag.rsplit_once('-') {
        Some((hash, n)) if hash.len() == 32 => n.parse().ok().map(EtagKind::Multipart),
        Some(_) => None,
        None if etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(EtagKind::Md5)
        }
        None => None,
    }
}

/// What size and ETag alone say of a pair present on both sides; `None` when they cannot tell.
fn compare_listed(
    m: &ObjectInfo,
    b: &ObjectInfo,
) -> std::result::Result<(PairStatus, Option<String>), String> {
    if m.size != b.size {
        return Ok((
            PairStatus::Differ,
            Some(format!("size {} vs {}", m.size, b.size)),
        ));
    }
    let (Some(me), Some(be)) = (m.etag.as_deref(), b.etag.as_deref()) else {
        return Err("no ETag on one side".into());
    };
    match (etag_kind(me), etag_kind(be)) {
        (Some(EtagKind::Md5), Some(EtagKind::Md5)) => Ok(etag_verdict(me, be)),
        (Some(EtagKind::Multipart(x)), Some(EtagKind::Multipart(y))) if x == y => {
            Ok(etag_verdict(me, be))
        }
        (Some(EtagKind::Multipart(x)), Some(EtagKind::Multipart(y))) => {
            Err(format!("multipart ETags with {x} and {y} parts"))
        }
        (Some(EtagKind::Multipart(x)), Some(EtagKind::Md5)) => {
            Err(format!("multipart ETag ({x} parts) vs single-part"))
        }
        (Some(EtagKind::Md5), Some(EtagKind::Multipart(y))) => {
            Err(format!("single-part ETag vs multipart ({y} parts)"))
        }
        // Opaque ETags (e.g. SSE-KMS) are not content hashes: equal or not, they prove nothing.
        _ => Err("ETags are not MD5s".into()),
    }
}

fn etag_verdict(me: &str, be: &str) -> (PairStatus, Option<String>) {
    if me == be {
        (PairStatus::Same, None)
    } else {
        (PairStatus::Differ, Some(format!("etag {me} vs {be}")))
    }
}

/// Compares a pair: size and listed ETags; then what HEAD says (ETags, for servers that leave
/// them out of listings, and full-object checksums); then, with `--checksum`, the bodies.
/// Never calls a pair the same without evidence.
async fn compare_pair(
    scan: &Scan,
    key: &str,
    m: &ObjectInfo,
    b: &ObjectInfo,
) -> (Option<PairStatus>, Option<String>) {
    let why = match compare_listed(m, b) {
        Ok((s, d)) => return (Some(s), d),
        Err(why) => why,
    };
    let main_key = format!("{}{key}", scan.main.prefix());
    let backup_key = format!("{}{key}", scan.backup.prefix());
    let heads = tokio::try_join!(
        with_retry("a HEAD", || scan.main.head_with_checksum(&main_key)),
        with_retry("a HEAD", || scan.backup.head_with_checksum(&backup_key))
    );
    let why = match heads {
        Ok((Some(mh), Some(bh))) => {
            if let (Some(ms), Some(bs)) = (&mh.checksum, &bh.checksum) {
                if ms.split(':').next() == bs.split(':').next() {
                    return if ms == bs {
                        (Some(PairStatus::Same), None)
                    } else {
                        (
                            Some(PairStatus::Differ),
                            Some(format!("checksum {ms} vs {bs}")),
                        )
                    };
                }
            }
            let as_listed = |o: &ObjectInfo, etag: Option<String>| ObjectInfo {
                key: o.key.clone(),
                size: o.size,
                etag: etag.or_else(|| o.etag.clone()),
                last_modified: o.last_modified,
            };
            match compare_listed(&as_listed(m, mh.etag), &as_listed(b, bh.etag)) {
                Ok((s, d)) => return (Some(s), d),
                Err(why) => why,
            }
        }
        // Deleted or replaced between the listing and now: report what the listing saw.
        Ok(_) => why,
        Err(e) => return (Some(PairStatus::Error), Some(e.to_string())),
    };
    if !scan.params.checksum {
        return (
            Some(PairStatus::Unverifiable),
            Some(format!("{why}; --checksum hashes both bodies")),
        );
    }
    match tokio::try_join!(
        hash_body(&scan.main, &main_key),
        hash_body(&scan.backup, &backup_key)
    ) {
        Ok((mh, bh)) if mh == bh => (Some(PairStatus::Same), None),
        Ok((mh, bh)) => (
            Some(PairStatus::Differ),
            Some(format!("sha256 {mh} vs {bh}")),
        ),
        Err(e) => (Some(PairStatus::Error), Some(e.to_string())),
    }
}

/// SHA-256 of an object's body, streamed in 256 KiB reads.
async fn hash_body(bucket: &S3Bucket, key: &str) -> Result<String> {
    let Some(mut obj) = bucket.get(key, None).await? else {
        return Err(Error::S3 {
            bucket: bucket.name().to_string(),
            endpoint: bucket.endpoint().to_string(),
            message: format!("get {key:?}: disappeared while comparing"),
        });
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = obj.body.read(&mut buf).await.map_err(|e| Error::S3 {
            bucket: bucket.name().to_string(),
            endpoint: bucket.endpoint().to_string(),
            message: format!("get {key:?}: {e}"),
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, size: u64, etag: &str) -> ObjectInfo {
        ObjectInfo {
            key: key.into(),
            size,
            etag: Some(etag.into()),
            last_modified: None,
        }
    }

    const A: &str = "0cc175b9c0f1b6a831c399e269772661";
    const B: &str = "92eb5ffee6ae2fec3ad71c777531578f";

    #[test]
    fn etags_decide_only_like_for_like() {
        assert_eq!(
            compare_listed(&obj("k", 1, A), &obj("k", 1, A)).map(|r| r.0),
            Ok(PairStatus::Same)
        );
        assert_eq!(
            compare_listed(&obj("k", 1, A), &obj("k", 1, B)).map(|r| r.0),
            Ok(PairStatus::Differ)
        );
        assert_eq!(
            compare_listed(&obj("k", 1, A), &obj("k", 2, A)).map(|r| r.0),
            Ok(PairStatus::Differ)
        );
        let a3 = format!("{A}-3");
        let b3 = format!("{B}-3");
        let a2 = format!("{A}-2");
        assert_eq!(
            compare_listed(&obj("k", 9, &a3), &obj("k", 9, &b3)).map(|r| r.0),
            Ok(PairStatus::Differ)
        );
        assert!(compare_listed(&obj("k", 9, &a3), &obj("k", 9, &a2)).is_err());
        assert!(compare_listed(&obj("k", 9, &a3), &obj("k", 9, A)).is_err());
        assert!(compare_listed(&obj("k", 9, "opaque"), &obj("k", 9, "opaque")).is_err());
    }
}
