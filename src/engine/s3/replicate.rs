//! Copying one object from another bucket, as the replication workers do: only if the source
//! still is the version wanted (its ETag), server-side when both buckets share an endpoint.

use aws_sdk_s3::error::SdkError;

use super::{S3Bucket, COPY_SOURCE};
use crate::engine::error::Result;

/// What a conditional copy found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyOutcome {
    Copied,
    /// The source is no longer the version asked for.
    SourceChanged,
    /// The source does not exist.
    SourceMissing,
}

impl S3Bucket {
    /// Copies `key` from `src` to this bucket if `src`'s object has ETag `if_match` (any
    /// version when `None`): a server-side copy on one endpoint, else a streamed GET and
    /// upload (multipart above this bucket's threshold).
    pub async fn replicate_from(
        &self,
        src: &S3Bucket,
        key: &str,
        if_match: Option<&str>,
    ) -> Result<CopyOutcome> {
        let if_match = if_match.map(|e| format!("\"{}\"", e.trim_matches('"')));
        if self.same_endpoint(src) {
            let source = format!(
                "{}/{}",
                src.bucket,
                percent_encoding::utf8_percent_encode(key, COPY_SOURCE)
            );
            let r = self
                .client
                .copy_object()
                .bucket(&self.bucket)
                .key(key)
                .copy_source(source)
                .set_copy_source_if_match(if_match)
                .send()
                .await;
            return match r {
                Ok(_) => Ok(CopyOutcome::Copied),
                Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 412 => {
                    Ok(CopyOutcome::SourceChanged)
                }
                Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 404 => {
                    Ok(CopyOutcome::SourceMissing)
                }
                Err(e) => Err(self.sdk_err(&format!("copy {key:?} from {}", src.bucket), e)),
            };
        }
        let got = src
            .client
            .get_object()
            .bucket(&src.bucket)
            .key(key)
            .set_if_match(if_match)
            .send()
            .await;
        let o = match got {
            Ok(o) => o,
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 412 => {
                return Ok(CopyOutcome::SourceChanged)
            }
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 404 => {
                return Ok(CopyOutcome::SourceMissing)
            }
            Err(e) => return Err(src.sdk_err(&format!("get {key:?}"), e)),
        };
        let size = o.content_length().map(|n| n.max(0) as u64);
        let content_type = o.content_type().map(str::to_string);
        let body = o.body.into_async_read();
        self.put_stream_sized(key, body, content_type.as_deref(), size)
            .await?;
        Ok(CopyOutcome::Copied)
    }
}
