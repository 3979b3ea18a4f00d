//! One file's check: HEAD the origin (and the mirror object, unless the listing answered) and
//! compare both with the row. A failure of either is that file's error, never the run's.

use super::walk::Listed;
use super::ValidateStatus;
use crate::engine::db::LifecycleRow;
use crate::engine::error::Result;
use crate::engine::origin::{Origin, OriginMeta};
use crate::engine::s3::{ObjectInfo, ObjectMeta, S3Bucket};

/// A checked file: its row, the verdict and why (or what failed).
pub(super) type Checked = (LifecycleRow, ValidateStatus, Option<String>);

pub(super) async fn check_one(
    origin: &Origin,
    mirror: &S3Bucket,
    row: LifecycleRow,
    listed: Listed,
) -> Result<Checked> {
    let object = |o: ObjectInfo| ObjectMeta {
        size: o.size,
        etag: o.etag,
        last_modified: o.last_modified,
        content_type: None,
        checksum: None,
    };
    let (o, m) = match listed {
        Listed::Unread => {
            let (o, m) = tokio::join!(origin.head(&row.origin_url), mirror.head(&row.key));
            match m {
                Ok(m) => (o, m),
                // The client already retried the request: the object's state is unknown.
                Err(e) => return Ok((row, ValidateStatus::MirrorError, Some(e.to_string()))),
            }
        }
        Listed::Found(info) => (origin.head(&row.origin_url).await, Some(object(info))),
        // A missing object is `missing` whatever the origin says: no origin request.
        Listed::Absent => (Ok(None), None),
    };
    let (status, reason) = classify(&row, o, m);
    Ok((row, status, reason))
}

/// The verdict for one file from what the origin and the mirror said.
pub fn classify(
    row: &LifecycleRow,
    origin: Result<Option<OriginMeta>>,
    mirror: Option<ObjectMeta>,
) -> (ValidateStatus, Option<String>) {
    let Some(object) = mirror else {
        return (ValidateStatus::Missing, Some("missing".into()));
    };
    let now = match origin {
        Ok(Some(m)) => m,
        Ok(None) => {
            return (
                ValidateStatus::OriginError,
                Some("gone at the origin (404)".into()),
            )
        }
        Err(e) => return (ValidateStatus::OriginError, Some(e.to_string())),
    };
    if let (Some(now_size), Some(was)) = (now.size, row.origin_size) {
        if i64::try_from(now_size).ok() != Some(was) {
            return (
                ValidateStatus::Stale,
                Some(format!("origin size changed: {was} -> {now_size} bytes")),
            );
        }
    }
    if let (Some(now_etag), Some(was)) = (now.etag.as_deref(), row.origin_etag.as_deref()) {
        if now_etag != was {
            return (
                ValidateStatus::Stale,
                Some(format!("origin ETag changed: {was} -> {now_etag}")),
            );
        }
    }
    if i64::try_from(object.size).ok() != Some(row.size) {
        return (
            ValidateStatus::Stale,
            Some(format!(
                "mirror object is {} bytes, the row says {}",
                object.size, row.size
            )),
        );
    }
    (ValidateStatus::Fresh, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::error::Error;

    fn row() -> LifecycleRow {
        LifecycleRow {
            id: 1,
            key: "k".into(),
            size: 10,
            is_stale: false,
            stale_reason: None,
            origin_file_id: 1,
            origin_url: "k".into(),
            origin_size: Some(10),
            origin_etag: Some("e1".into()),
        }
    }

    fn object(size: u64) -> Option<ObjectMeta> {
        Some(ObjectMeta {
            size,
            etag: None,
            last_modified: None,
            content_type: None,
            checksum: None,
        })
    }

    fn origin(size: u64, etag: &str) -> Result<Option<OriginMeta>> {
        Ok(Some(OriginMeta {
            size: Some(size),
            etag: Some(etag.into()),
            last_modified: None,
            content_type: None,
        }))
    }

    #[test]
    fn verdicts() {
        assert_eq!(
            classify(&row(), origin(10, "e1"), object(10)).0,
            ValidateStatus::Fresh
        );
        assert_eq!(
            classify(&row(), origin(11, "e1"), object(10)).0,
            ValidateStatus::Stale
        );
        assert_eq!(
            classify(&row(), origin(10, "e2"), object(10)).0,
            ValidateStatus::Stale
        );
        assert_eq!(
            classify(&row(), origin(10, "e1"), object(9)).0,
            ValidateStatus::Stale
        );
        assert_eq!(
            classify(&row(), origin(10, "e1"), None).0,
            ValidateStatus::Missing
        );
        assert_eq!(
            classify(&row(), Ok(None), object(10)).0,
            ValidateStatus::OriginError
        );
        assert_eq!(
            classify(&row(), Err(Error::runtime("down")), object(10)).0,
            ValidateStatus::OriginError
        );
    }
}
