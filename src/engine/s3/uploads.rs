//! Multipart uploads that were started and never completed or aborted: a paged listing
//! (ListMultipartUploads with key and upload-id markers) and aborting one by its id.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use chrono::{DateTime, Utc};
use futures::stream::Stream;

use super::{to_chrono, S3Bucket, S3Cause, S3Failure};

/// Uploads asked for per ListMultipartUploads request (the S3 maximum).
const UPLOADS_PAGE: i32 = 1000;

/// A multipart upload in progress (or abandoned): its parts take space until it is completed
/// or aborted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UploadInfo {
    pub key: String,
    pub upload_id: String,
    /// When the server says the upload was started.
    pub initiated: Option<DateTime<Utc>>,
}

/// One page of uploads and the markers where the next one starts.
#[derive(Debug, Clone)]
pub struct UploadsPage {
    pub uploads: Vec<UploadInfo>,
    /// `(key marker, upload-id marker)` of the next page, `None` on the last.
    pub next: Option<(String, String)>,
}

/// What aborting an upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortOutcome {
    Aborted,
    /// It was completed or aborted by someone else in the meantime.
    AlreadyGone,
}

impl S3Bucket {
    /// One page of the uploads under `prefix`, in key order, after `after` (a key and an
    /// upload-id marker).
    pub async fn list_uploads_page(
        &self,
        prefix: &str,
        after: Option<(&str, &str)>,
        max_uploads: i32,
    ) -> Result<UploadsPage, S3Failure> {
        let mut req = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .max_uploads(max_uploads);
        if !prefix.is_empty() {
            req = req.prefix(prefix);
        }
        if let Some((key, id)) = after {
            req = req.key_marker(key);
            if !id.is_empty() {
                req = req.upload_id_marker(id);
            }
        }
        let out = req
            .send()
            .await
            .map_err(|e| self.failure("list multipart uploads", &e))?;
        let uploads: Vec<UploadInfo> = out
            .uploads()
            .iter()
            .filter_map(|u| {
                Some(UploadInfo {
                    key: u.key()?.to_string(),
                    upload_id: u.upload_id()?.to_string(),
                    initiated: to_chrono(u.initiated()),
                })
            })
            .collect();
        let next = if out.is_truncated().unwrap_or(false) {
            // Servers that leave out the next markers mean "after the last upload listed".
            let last = uploads.last();
            let key = out
                .next_key_marker()
                .map(str::to_string)
                .or_else(|| last.map(|u| u.key.clone()));
            let id = out
                .next_upload_id_marker()
                .map(str::to_string)
                .or_else(|| last.map(|u| u.upload_id.clone()))
                .unwrap_or_default();
            match key {
                Some(key) if after != Some((key.as_str(), id.as_str())) => Some((key, id)),
                // The same markers again would loop forever.
                _ => {
                    return Err(S3Failure {
                        bucket: self.bucket.clone(),
                        endpoint: self.endpoint.clone(),
                        op: "list multipart uploads".into(),
                        cause: S3Cause::Other,
                        detail: "the server says the listing is truncated but gives no new marker"
                            .into(),
                    })
                }
            }
        } else {
            None
        };
        Ok(UploadsPage { uploads, next })
    }

    /// Every upload under `prefix`, as a stream of pages (never all in memory).
    pub fn list_uploads(
        &self,
        prefix: String,
    ) -> impl Stream<Item = Result<Vec<UploadInfo>, S3Failure>> + Send + 'static {
        enum State {
            Start,
            Next(String, String),
            Done,
        }
        let this = self.clone();
        futures::stream::try_unfold(State::Start, move |state| {
            let this = this.clone();
            let prefix = prefix.clone();
            async move {
                let page = match &state {
                    State::Done => return Ok(None),
                    State::Start => this.list_uploads_page(&prefix, None, UPLOADS_PAGE).await?,
                    State::Next(key, id) => {
                        this.list_uploads_page(&prefix, Some((key, id)), UPLOADS_PAGE)
                            .await?
                    }
                };
                let next = match page.next {
                    Some((key, id)) => State::Next(key, id),
                    None => State::Done,
                };
                Ok(Some((page.uploads, next)))
            }
        })
    }

    /// Multipart uploads that were started and never completed or aborted (keys).
    pub async fn pending_uploads(&self) -> crate::engine::error::Result<Vec<String>> {
        use futures::TryStreamExt;
        let mut keys = Vec::new();
        let mut pages = std::pin::pin!(self.list_uploads(String::new()));
        while let Some(page) = pages.try_next().await? {
            keys.extend(page.into_iter().map(|u| u.key));
        }
        Ok(keys)
    }

    /// Aborts one upload: its parts are deleted and the id stops working.
    pub async fn abort_upload(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<AbortOutcome, S3Failure> {
        let r = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
        match r {
            Ok(_) => Ok(AbortOutcome::Aborted),
            Err(SdkError::ServiceError(se))
                if se.raw().status().as_u16() == 404 && se.err().code() != Some("NoSuchBucket") =>
            {
                Ok(AbortOutcome::AlreadyGone)
            }
            Err(e) => Err(self.failure(&format!("abort upload of {key:?}"), &e)),
        }
    }
}
