//! The S3 layer: the only module that imports `aws_sdk_s3`. Everything it returns is a domain
//! type; every error names the bucket, the endpoint and the cause. Listings are paged streams,
//! bodies are streamed, uploads above a threshold are multipart and aborted on failure.

use std::pin::Pin;
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::stream::Stream;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::BucketConfig;
use crate::engine::error::{Error, Result};

mod failure;
mod forward;
mod probe;
mod uploads;
pub use failure::{S3Cause, S3Failure};
pub use forward::{
    BodyStream, BoxError, DeleteFailure, ForwardError, Forwarded, GetOut, HeadOut, ListOut,
    ListRequest, ReadRequest, WriteMeta,
};
pub use uploads::{AbortOutcome, UploadInfo, UploadsPage};

/// S3 deletes at most this many keys per DeleteObjects request.
pub const DELETE_BATCH: usize = 1000;
/// Parts of one multipart upload in flight at once by default (memory = part size × this).
const PART_CONCURRENCY: usize = 3;

/// One object in a listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// Without quotes.
    pub etag: Option<String>,
    pub last_modified: Option<DateTime<Utc>>,
}

/// What HEAD says of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: Option<DateTime<Utc>>,
    pub content_type: Option<String>,
    /// Full-object checksums when the server reports them, as "ALGO:base64".
    pub checksum: Option<String>,
}

/// A page of a listing and where the next one starts.
#[derive(Debug, Clone)]
pub struct ListPage {
    pub objects: Vec<ObjectInfo>,
    pub next_token: Option<String>,
}

/// A streamed object body.
pub struct GetObject {
    pub meta: ObjectMeta,
    /// Bytes in this response (the range length for ranged reads).
    pub content_length: u64,
    pub content_range: Option<String>,
    pub body: Pin<Box<dyn AsyncRead + Send>>,
}

/// The result of an upload.
#[derive(Debug, Clone)]
pub struct PutResult {
    pub etag: Option<String>,
    pub bytes: u64,
    pub parts: usize,
}

/// What a batch delete did.
#[derive(Debug, Clone, Default)]
pub struct DeleteReport {
    pub deleted: Vec<String>,
    pub failed: Vec<(String, String)>,
}

/// One bucket on one endpoint.
#[derive(Clone)]
pub struct S3Bucket {
    client: Client,
    bucket: String,
    endpoint: String,
    prefix: String,
    multipart_threshold: u64,
    part_size: usize,
    /// Parts of one multipart upload in flight at once.
    part_concurrency: usize,
    /// Whether upload parts carry a SigV4 hash of their bytes. Over TLS, which already
    /// protects them in transit, they go unsigned (as the AWS CLI sends them), saving a
    /// SHA-256 pass over every byte; over plain HTTP the hash is the only integrity check.
    sign_parts: bool,
    /// Whether two buckets can server-side copy between them.
    endpoint_id: String,
    /// Whether the endpoint honours `x-amz-copy-source-if-match` (learnt by the first
    /// conditional copy; see `copy_server_side`).
    honours_copy_if_match: std::sync::Arc<std::sync::OnceLock<bool>>,
}

impl std::fmt::Debug for S3Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Bucket({} at {})", self.bucket, self.endpoint)
    }
}

/// Characters escaped in a CopySource key: everything but unreserved characters and '/'.
const COPY_SOURCE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// The CopySource of `key` in `src`: bucket and escaped key.
pub(crate) fn copy_source(src: &S3Bucket, key: &str) -> String {
    format!("{}/{}", src.bucket, utf8_percent_encode(key, COPY_SOURCE))
}

fn unquote(etag: Option<&str>) -> Option<String> {
    etag.map(|e| e.trim_matches('"').to_string())
}

/// One entry of a listing (`None` without a key).
fn object_info(o: &aws_sdk_s3::types::Object) -> Option<ObjectInfo> {
    Some(ObjectInfo {
        key: o.key()?.to_string(),
        size: o.size().unwrap_or(0).max(0) as u64,
        etag: unquote(o.e_tag()),
        last_modified: to_chrono(o.last_modified()),
    })
}

fn to_chrono(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos()))
}

impl S3Bucket {
    /// Builds a client for the bucket from its config (static keys, a profile, or the AWS chain).
    pub async fn connect(cfg: &BucketConfig) -> Result<S3Bucket> {
        let timeout = cfg.timeout.0;
        let retry = RetryConfig::standard()
            .with_max_attempts(4)
            .with_initial_backoff(Duration::from_millis(100));
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .build();
        Self::connect_with(cfg, retry, timeouts).await
    }

    /// A client for diagnosis: one attempt per request, and every request (connecting and
    /// reading included) over within `limit`, so a check reports a dead endpoint instead of
    /// retrying it for a minute.
    pub async fn connect_probe(cfg: &BucketConfig, limit: Duration) -> Result<S3Bucket> {
        let per_read = cfg.timeout.0.min(limit);
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(per_read)
            .read_timeout(per_read)
            .operation_timeout(limit)
            .build();
        Self::connect_with(cfg, RetryConfig::disabled(), timeouts).await
    }

    async fn connect_with(
        cfg: &BucketConfig,
        retry: RetryConfig,
        timeouts: TimeoutConfig,
    ) -> Result<S3Bucket> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(crate::engine::tls::sdk_https_client())
            .region(Region::new(cfg.region.clone()))
            .retry_config(retry)
            .timeout_config(timeouts);
        if let (Some(k), Some(s)) = (&cfg.access_key_id, &cfg.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(
                k.expose(),
                s.expose(),
                None,
                None,
                "mirrorctl-config",
            ));
        } else if let Some(profile) = &cfg.profile {
            loader = loader.profile_name(profile);
        }
        let sdk = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(cfg.path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(ep) = &cfg.endpoint {
            b = b.endpoint_url(ep);
        }
        Ok(S3Bucket {
            client: Client::from_conf(b.build()),
            bucket: cfg.bucket.clone(),
            endpoint: cfg.endpoint_label(),
            prefix: cfg.prefix.clone(),
            multipart_threshold: cfg.multipart_threshold.0,
            part_size: cfg.part_size.0 as usize,
            part_concurrency: PART_CONCURRENCY,
            sign_parts: cfg
                .endpoint
                .as_deref()
                .is_some_and(|ep| !ep.trim_start().to_ascii_lowercase().starts_with("https://")),
            endpoint_id: format!(
                "{}|{}",
                cfg.endpoint_label(),
                cfg.access_key_id.as_ref().map(|k| k.expose()).unwrap_or("")
            ),
            honours_copy_if_match: Default::default(),
        })
    }

    /// The same bucket with at most `n` parts of a multipart upload in flight: less memory
    /// per upload (part size × n) for callers that run many uploads at once.
    pub fn with_part_concurrency(mut self, n: usize) -> S3Bucket {
        self.part_concurrency = n.max(1);
        self
    }

    pub fn name(&self) -> &str {
        &self.bucket
    }
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
    /// The configured key prefix (archives live under it).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// True when `other` is on the same endpoint with the same credentials (server-side copy works).
    pub fn same_endpoint(&self, other: &S3Bucket) -> bool {
        self.endpoint_id == other.endpoint_id
    }

    fn fail(&self, message: impl Into<String>) -> Error {
        Error::S3 {
            bucket: self.bucket.clone(),
            endpoint: self.endpoint.clone(),
            message: message.into(),
        }
    }

    /// Turns an SDK error into one line naming the bucket, the endpoint and the cause.
    fn sdk_err<E>(&self, op: &str, e: SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.failure(op, &e).into()
    }

    /// An SDK error classified by its cause (see `S3Cause`), naming the bucket and endpoint.
    fn failure<E>(&self, op: &str, e: &SdkError<E, HttpResponse>) -> S3Failure
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (cause, detail) = failure::classify(e);
        S3Failure {
            bucket: self.bucket.clone(),
            endpoint: self.endpoint.clone(),
            op: op.to_string(),
            cause,
            detail,
        }
    }

    /// Checks that the bucket exists and is reachable.
    pub async fn check(&self) -> Result<()> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 404 => {
                Err(self.fail("bucket does not exist"))
            }
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 403 => {
                Err(self.fail("access denied"))
            }
            Err(e) => Err(self.sdk_err("head bucket", e)),
        }
    }

    /// Creates the bucket when it does not exist (demo and tests).
    pub async fn ensure_bucket(&self) -> Result<()> {
        if self.check().await.is_ok() {
            return Ok(());
        }
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let code = e
                    .as_service_error()
                    .and_then(|s| s.code().map(str::to_string));
                if matches!(
                    code.as_deref(),
                    Some("BucketAlreadyOwnedByYou") | Some("BucketAlreadyExists")
                ) {
                    Ok(())
                } else {
                    Err(self.sdk_err("create bucket", e))
                }
            }
        }
    }

    /// One page of keys under `prefix`, in UTF-8 byte order, after `start_after` or from `token`.
    pub async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        token: Option<&str>,
        max_keys: i32,
    ) -> Result<ListPage> {
        let mut req = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .max_keys(max_keys);
        if !prefix.is_empty() {
            req = req.prefix(prefix);
        }
        if let Some(t) = token {
            req = req.continuation_token(t);
        } else if let Some(s) = start_after {
            req = req.start_after(s);
        }
        let out = req.send().await.map_err(|e| self.sdk_err("list", e))?;
        let objects = out.contents().iter().filter_map(object_info).collect();
        let next_token = if out.is_truncated().unwrap_or(false) {
            out.next_continuation_token().map(str::to_string)
        } else {
            None
        };
        Ok(ListPage {
            objects,
            next_token,
        })
    }

    /// Every object under `prefix` after `start_after`, as a stream of pages (never all in memory).
    pub fn list_pages(
        &self,
        prefix: String,
        start_after: Option<String>,
        page_size: i32,
    ) -> impl Stream<Item = Result<Vec<ObjectInfo>>> + Send + 'static {
        enum State {
            Start(Option<String>),
            Next(String),
            Done,
        }
        let this = self.clone();
        futures::stream::try_unfold(State::Start(start_after), move |state| {
            let this = this.clone();
            let prefix = prefix.clone();
            async move {
                let page = match state {
                    State::Done => return Ok(None),
                    State::Start(after) => {
                        this.list_page(&prefix, after.as_deref(), None, page_size)
                            .await?
                    }
                    State::Next(token) => {
                        this.list_page(&prefix, None, Some(&token), page_size)
                            .await?
                    }
                };
                let next = match page.next_token {
                    Some(t) => State::Next(t),
                    None => State::Done,
                };
                Ok(Some((page.objects, next)))
            }
        })
    }

    /// HEAD an object; `None` when it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.head_object(key, false).await
    }

    /// HEAD with checksums requested: `checksum` holds the full-object checksum as
    /// "ALGO:base64" when the server keeps one. `None` when the object is absent.
    pub async fn head_with_checksum(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.head_object(key, true).await
    }

    async fn head_object(&self, key: &str, checksums: bool) -> Result<Option<ObjectMeta>> {
        use aws_sdk_s3::types::{ChecksumMode, ChecksumType};
        let mut req = self.client.head_object().bucket(&self.bucket).key(key);
        if checksums {
            req = req.checksum_mode(ChecksumMode::Enabled);
        }
        let o = match req.send().await {
            Ok(o) => o,
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 404 => {
                return Ok(None)
            }
            Err(e) => return Err(self.sdk_err(&format!("head {key:?}"), e)),
        };
        // Composite (per-part) checksums depend on the part layout, like multipart ETags:
        // only full-object checksums are reported.
        let checksum = if matches!(o.checksum_type(), Some(ChecksumType::Composite)) {
            None
        } else {
            o.checksum_crc64_nvme()
                .map(|c| format!("CRC64NVME:{c}"))
                .or_else(|| o.checksum_sha256().map(|c| format!("SHA256:{c}")))
                .or_else(|| o.checksum_crc32_c().map(|c| format!("CRC32C:{c}")))
                // A "-N" suffix marks a composite checksum on servers that do not send the type.
                .filter(|s| !s.contains('-'))
        };
        Ok(Some(ObjectMeta {
            size: o.content_length().unwrap_or(0).max(0) as u64,
            etag: unquote(o.e_tag()),
            last_modified: to_chrono(o.last_modified()),
            content_type: o.content_type().map(str::to_string),
            checksum,
        }))
    }

    /// Streams an object (or the byte range `start..=end`); `None` when it does not exist.
    pub async fn get(
        &self,
        key: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<Option<GetObject>> {
        let mut req = self.client.get_object().bucket(&self.bucket).key(key);
        if let Some((start, end)) = range {
            req = req.range(match end {
                Some(end) => format!("bytes={start}-{end}"),
                None => format!("bytes={start}-"),
            });
        }
        match req.send().await {
            Ok(o) => {
                let content_length = o.content_length().unwrap_or(0).max(0) as u64;
                let content_range = o.content_range().map(str::to_string);
                let total = content_range
                    .as_deref()
                    .and_then(|r| r.rsplit('/').next())
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(content_length);
                let meta = ObjectMeta {
                    size: total,
                    etag: unquote(o.e_tag()),
                    last_modified: to_chrono(o.last_modified()),
                    content_type: o.content_type().map(str::to_string),
                    checksum: None,
                };
                Ok(Some(GetObject {
                    meta,
                    content_length,
                    content_range,
                    body: Box::pin(o.body.into_async_read()),
                }))
            }
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 404 => Ok(None),
            Err(e) => Err(self.sdk_err(&format!("get {key:?}"), e)),
        }
    }

    /// Uploads a small body in one request.
    pub async fn put_bytes(
        &self,
        key: &str,
        body: Bytes,
        content_type: Option<&str>,
    ) -> Result<PutResult> {
        let len = body.len() as u64;
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .set_content_type(content_type.map(str::to_string))
            .content_length(len as i64)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.sdk_err(&format!("put {key:?}"), e))?;
        Ok(PutResult {
            etag: unquote(out.e_tag()),
            bytes: len,
            parts: 1,
        })
    }

    /// Streams `reader` to `key`: one PUT below the multipart threshold, else a multipart upload
    /// with a few parts in flight. The object appears only when the upload completes; a failed
    /// upload is aborted so no parts are left behind.
    pub async fn put_stream<R>(
        &self,
        key: &str,
        reader: R,
        content_type: Option<&str>,
    ) -> Result<PutResult>
    where
        R: AsyncRead + Unpin + Send,
    {
        self.put_stream_sized(key, reader, content_type, None).await
    }

    /// `put_stream` for a source whose length is known (e.g. from Content-Length): a large
    /// body goes straight to multipart without first buffering `multipart_threshold` bytes.
    pub async fn put_stream_sized<R>(
        &self,
        key: &str,
        mut reader: R,
        content_type: Option<&str>,
        size: Option<u64>,
    ) -> Result<PutResult>
    where
        R: AsyncRead + Unpin + Send,
    {
        let first = if size.is_some_and(|n| n > self.multipart_threshold) {
            Bytes::new()
        } else {
            let first = read_chunk(&mut reader, self.multipart_threshold as usize + 1)
                .await
                .map_err(|e| self.fail(format!("put {key:?}: reading the source: {e}")))?;
            if (first.len() as u64) <= self.multipart_threshold {
                return self.put_bytes(key, first.freeze(), content_type).await;
            }
            first.freeze()
        };
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .set_content_type(content_type.map(str::to_string))
            .send()
            .await
            .map_err(|e| self.sdk_err(&format!("start multipart {key:?}"), e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| self.fail(format!("start multipart {key:?}: no upload id")))?
            .to_string();
        let res = self.upload_parts(key, &upload_id, first, &mut reader).await;
        match res {
            Ok((parts, bytes)) => {
                let n = parts.len();
                let etag = self.complete_or_abort(key, &upload_id, parts).await?;
                Ok(PutResult {
                    etag,
                    bytes,
                    parts: n,
                })
            }
            Err(e) => {
                self.abort(key, &upload_id).await;
                Err(e)
            }
        }
    }

    /// Completes a multipart upload with its parts (in order); when that fails the upload is
    /// aborted, so no parts are left behind. The object's ETag.
    async fn complete_or_abort(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<Option<String>> {
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        match out {
            Ok(out) => Ok(unquote(out.e_tag())),
            Err(e) => {
                self.abort(key, upload_id).await;
                Err(self.sdk_err(&format!("complete multipart {key:?}"), e))
            }
        }
    }

    async fn abort(&self, key: &str, upload_id: &str) {
        if let Err(e) = self.abort_upload(key, upload_id).await {
            tracing::warn!(bucket = %self.bucket, key, "abort multipart failed: {e}");
        }
    }

    async fn upload_parts<R>(
        &self,
        key: &str,
        upload_id: &str,
        first: Bytes,
        reader: &mut R,
    ) -> Result<(Vec<CompletedPart>, u64)>
    where
        R: AsyncRead + Unpin + Send,
    {
        let mut pending = (!first.is_empty()).then_some(first);
        // Each part uploads on a task of its own, so parts keep moving while the next one is
        // read from the source. Dropping the set (an error, or the caller giving up) aborts
        // the parts still in flight before the caller aborts the upload.
        let mut in_flight = tokio::task::JoinSet::new();
        let mut done = Vec::new();
        let mut total = 0u64;
        let mut number = 0i32;
        let mut eof = false;
        loop {
            // Fill the window: split what was read into part-size pieces and read more.
            while in_flight.len() < self.part_concurrency && !eof {
                let chunk = match pending.take() {
                    Some(mut buf) if buf.len() >= self.part_size => {
                        let part = buf.split_to(self.part_size);
                        pending = (!buf.is_empty()).then_some(buf);
                        part
                    }
                    // A short leftover is topped up from the source to a full part.
                    Some(buf) => {
                        let mut part = BytesMut::from(&buf[..]);
                        let more = read_chunk(reader, self.part_size - part.len())
                            .await
                            .map_err(|e| {
                                self.fail(format!("put {key:?}: reading the source: {e}"))
                            })?;
                        part.extend_from_slice(&more);
                        part.freeze()
                    }
                    None => read_chunk(reader, self.part_size)
                        .await
                        .map_err(|e| self.fail(format!("put {key:?}: reading the source: {e}")))?
                        .freeze(),
                };
                if chunk.is_empty() {
                    eof = true;
                    break;
                }
                if chunk.len() < self.part_size {
                    eof = true;
                }
                number += 1;
                total += chunk.len() as u64;
                let n = number;
                let req = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(n)
                    .content_length(chunk.len() as i64)
                    .body(ByteStream::from(chunk))
                    .customize();
                let req = if self.sign_parts {
                    req
                } else {
                    req.disable_payload_signing()
                };
                in_flight.spawn(async move { (n, req.send().await) });
            }
            match in_flight.join_next().await {
                Some(Ok((n, Ok(out)))) => done.push(
                    CompletedPart::builder()
                        .part_number(n)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .build(),
                ),
                Some(Ok((n, Err(e)))) => {
                    return Err(self.sdk_err(&format!("upload part {n} of {key:?}"), e))
                }
                Some(Err(e)) => return Err(self.fail(format!("upload a part of {key:?}: {e}"))),
                None => break,
            }
        }
        // Parts finish in any order; S3 wants them listed in order.
        done.sort_by_key(|p| p.part_number());
        Ok((done, total))
    }

    /// Server-side copy from another bucket on the same endpoint.
    pub async fn copy_from(&self, src: &S3Bucket, src_key: &str, dst_key: &str) -> Result<()> {
        self.copy_if(src, src_key, dst_key, None)
            .await
            .map_err(|e| self.sdk_err(&format!("copy {src_key:?} from {}", src.bucket), e))?;
        Ok(())
    }

    /// Deletes keys, 1,000 per request; reports which were deleted and which failed.
    pub async fn delete_batch(&self, keys: &[String]) -> Result<DeleteReport> {
        let mut report = DeleteReport::default();
        for chunk in keys.chunks(DELETE_BATCH) {
            let ids = chunk
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.fail(format!("delete: {e}")))?;
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| self.fail(format!("delete: {e}")))?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| self.sdk_err("delete", e))?;
            let failed: std::collections::HashMap<&str, String> = out
                .errors()
                .iter()
                .filter_map(|e| {
                    Some((
                        e.key()?,
                        format!(
                            "{}: {}",
                            e.code().unwrap_or("error"),
                            e.message().unwrap_or("")
                        ),
                    ))
                })
                .collect();
            for k in chunk {
                match failed.get(k.as_str()) {
                    Some(m) => report.failed.push((k.clone(), m.clone())),
                    None => report.deleted.push(k.clone()),
                }
            }
        }
        Ok(report)
    }

    /// Deletes one key.
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.sdk_err(&format!("delete {key:?}"), e))?;
        Ok(())
    }

    /// A time-limited GET URL for `key`.
    pub async fn presign_get(&self, key: &str, expires: Duration) -> Result<String> {
        let cfg = PresigningConfig::expires_in(expires)
            .map_err(|e| Error::Usage(format!("bad expiry: {e}")))?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(cfg)
            .await
            .map_err(|e| self.sdk_err("presign", e))?;
        Ok(req.uri().to_string())
    }

    // --- Copies that keep the source's identity (drift repair, replication) ------------------

    /// Copies `src_key` of `src` to `dst_key` here so that the copy has the source's ETag: a
    /// server-side copy when both buckets are on one endpoint (which keeps a multipart `-N`
    /// ETag on servers like Garage), else a stream through this process that keeps the part
    /// layout (each part read with `partNumber` and uploaded as the same part) or, for a
    /// single-part object, one streamed PUT checked by its Content-MD5. Memory is bounded by
    /// the source's part size. With `if_match`, copies only while the source still has that
    /// ETag; otherwise nothing is written and the outcome says so.
    pub async fn copy_object_from(
        &self,
        src: &S3Bucket,
        src_key: &str,
        dst_key: &str,
        if_match: Option<&str>,
    ) -> Result<CopyOutcome> {
        if self.same_endpoint(src) {
            self.copy_server_side(src, src_key, dst_key, if_match).await
        } else {
            self.copy_streamed(src, src_key, dst_key, if_match).await
        }
    }

    /// What the first conditional server-side copy learnt: whether the endpoint honours
    /// `x-amz-copy-source-if-match` (then copies skip the HEAD before them); `None` before.
    pub fn honours_copy_conditions(&self) -> Option<bool> {
        self.honours_copy_if_match.get().copied()
    }

    /// CopyObject of `src_key` in `src` onto `dst_key` (while the source has ETag `if_match`).
    async fn copy_if(
        &self,
        src: &S3Bucket,
        src_key: &str,
        dst_key: &str,
        if_match: Option<&str>,
    ) -> Result<
        aws_sdk_s3::operation::copy_object::CopyObjectOutput,
        SdkError<aws_sdk_s3::operation::copy_object::CopyObjectError, HttpResponse>,
    > {
        self.client
            .copy_object()
            .bucket(&self.bucket)
            .key(dst_key)
            .copy_source(copy_source(src, src_key))
            .set_copy_source_if_match(if_match.map(|e| format!("\"{}\"", e.trim_matches('"'))))
            .send()
            .await
    }

    async fn copy_server_side(
        &self,
        src: &S3Bucket,
        src_key: &str,
        dst_key: &str,
        if_match: Option<&str>,
    ) -> Result<CopyOutcome> {
        // A server may ignore x-amz-copy-source-if-match: a HEAD first keeps the promise there
        // too, up to the moment between the two requests. Where the condition is honoured (AWS
        // documents it; Garage 2.5 and s3s-fs 0.14 do, tested) that HEAD is a request per copy for
        // nothing, so the first conditional copy finds out (`honours_copy_if_match`).
        let honoured = self.honours_copy_if_match.get().copied();
        if let Some(want) = if_match {
            if honoured != Some(true) {
                match src.head(src_key).await? {
                    None => return Ok(CopyOutcome::SourceMissing),
                    Some(m) if m.etag.as_deref() != Some(want.trim_matches('"')) => {
                        return Ok(CopyOutcome::SourceChanged)
                    }
                    Some(_) => {}
                }
            }
            if honoured.is_none() {
                // The source has the wanted ETag (the HEAD said so just now): the copy is
                // wanted, and is made on a condition no ETag meets. Refused (412), the server
                // honours the condition and the real copy follows; made, it ignores it.
                let probe = self
                    .copy_if(
                        src,
                        src_key,
                        dst_key,
                        Some("mirrorctl-probe-matches-no-etag"),
                    )
                    .await;
                match probe {
                    Ok(out) => {
                        let _ = self.honours_copy_if_match.set(false);
                        return Ok(CopyOutcome::Copied {
                            etag: unquote(out.copy_object_result().and_then(|r| r.e_tag())),
                            server_side: true,
                        });
                    }
                    Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 412 => {
                        let _ = self.honours_copy_if_match.set(true);
                    }
                    // Anything else is left to the real copy to say.
                    Err(_) => {}
                }
            }
        }
        let out = self.copy_if(src, src_key, dst_key, if_match).await;
        match out {
            Ok(out) => Ok(CopyOutcome::Copied {
                etag: unquote(out.copy_object_result().and_then(|r| r.e_tag())),
                server_side: true,
            }),
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 412 => {
                Ok(CopyOutcome::SourceChanged)
            }
            Err(SdkError::ServiceError(se))
                if se.raw().status().as_u16() == 404 && se.err().code() != Some("NoSuchBucket") =>
            {
                Ok(CopyOutcome::SourceMissing)
            }
            Err(e) => Err(self.sdk_err(&format!("copy {src_key:?} from {}", src.bucket), e)),
        }
    }

    /// GET of one part (or of the whole object when the server ignores `partNumber`, or the
    /// object is not multipart), pinned to `if_match`.
    async fn get_part(
        &self,
        key: &str,
        part: i32,
        if_match: Option<&str>,
    ) -> Result<std::result::Result<aws_sdk_s3::operation::get_object::GetObjectOutput, CopyOutcome>>
    {
        let get = |part: Option<i32>| {
            self.client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .set_part_number(part)
                .set_if_match(if_match.map(|e| format!("\"{}\"", e.trim_matches('"'))))
                .send()
        };
        let mut out = get(Some(part)).await;
        if part == 1 {
            if let Err(SdkError::ServiceError(se)) = &out {
                // Some servers refuse part 1 of an empty object: it has no parts.
                if se.raw().status().as_u16() == 416 {
                    out = get(None).await;
                }
            }
        }
        match out {
            Ok(o) => Ok(Ok(o)),
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 412 => {
                Ok(Err(CopyOutcome::SourceChanged))
            }
            Err(SdkError::ServiceError(se))
                if se.raw().status().as_u16() == 404 && se.err().code() != Some("NoSuchBucket") =>
            {
                Ok(Err(CopyOutcome::SourceMissing))
            }
            Err(e) => Err(self.sdk_err(&format!("get {key:?} part {part}"), e)),
        }
    }

    async fn copy_streamed(
        &self,
        src: &S3Bucket,
        src_key: &str,
        dst_key: &str,
        if_match: Option<&str>,
    ) -> Result<CopyOutcome> {
        let first = match src.get_part(src_key, 1, if_match).await? {
            Ok(o) => o,
            Err(outcome) => return Ok(outcome),
        };
        let parts = first.parts_count().unwrap_or(1).max(1);
        let etag = unquote(first.e_tag());
        let content_type = first.content_type().map(str::to_string);
        if parts == 1 {
            let size = first.content_length().unwrap_or(0).max(0) as u64;
            // A single-part ETag is the body's MD5: the server checks the streamed body
            // against it, so the payload needs no signature of its own (and no buffering).
            let md5 = etag
                .as_deref()
                .filter(|e| e.len() == 32)
                .and_then(|e| hex::decode(e).ok())
                .map(aws_smithy_types::base64::encode);
            let Some(md5) = md5 else {
                // An opaque ETag (e.g. SSE-KMS) cannot be kept whatever the layout.
                let body = Box::pin(first.body.into_async_read());
                let put = self
                    .put_stream_sized(dst_key, body, content_type.as_deref(), Some(size))
                    .await?;
                return Ok(CopyOutcome::Copied {
                    etag: put.etag,
                    server_side: false,
                });
            };
            let out = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(dst_key)
                .set_content_type(content_type)
                .content_length(size as i64)
                .content_md5(md5)
                .body(first.body)
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| self.sdk_err(&format!("put {dst_key:?}"), e))?;
            return Ok(CopyOutcome::Copied {
                etag: unquote(out.e_tag()),
                server_side: false,
            });
        }
        // Multipart: every part is read on its own (`partNumber`, pinned to the first part's
        // ETag so that all parts come from one version) and uploaded as the same part number.
        let pin = etag.clone().or_else(|| if_match.map(str::to_string));
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(dst_key)
            .set_content_type(content_type)
            .send()
            .await
            .map_err(|e| self.sdk_err(&format!("start multipart {dst_key:?}"), e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| self.fail(format!("start multipart {dst_key:?}: no upload id")))?
            .to_string();
        let mut first = Some(first);
        let mut done = Vec::with_capacity(parts as usize);
        let mut result = Ok(None);
        for n in 1..=parts {
            let part = match first.take() {
                Some(o) => o,
                None => match src.get_part(src_key, n, pin.as_deref()).await {
                    Ok(Ok(o)) => o,
                    Ok(Err(outcome)) => {
                        result = Ok(Some(outcome));
                        break;
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                },
            };
            let len = part.content_length().unwrap_or(0).max(0) as usize;
            let mut body = part.body.into_async_read();
            let bytes = match read_chunk(&mut body, len).await {
                Ok(b) if b.len() == len => b.freeze(),
                Ok(b) => {
                    result = Err(src.fail(format!(
                        "get {src_key:?} part {n}: {} of {len} bytes",
                        b.len()
                    )));
                    break;
                }
                Err(e) => {
                    result = Err(src.fail(format!("get {src_key:?} part {n}: {e}")));
                    break;
                }
            };
            let req = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(dst_key)
                .upload_id(&upload_id)
                .part_number(n)
                .content_length(len as i64)
                .body(ByteStream::from(bytes))
                .customize();
            let req = if self.sign_parts {
                req
            } else {
                req.disable_payload_signing()
            };
            match req.send().await {
                Ok(out) => done.push(
                    CompletedPart::builder()
                        .part_number(n)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .build(),
                ),
                Err(e) => {
                    result = Err(self.sdk_err(&format!("upload part {n} of {dst_key:?}"), e));
                    break;
                }
            }
        }
        match result {
            Ok(None) => {}
            Ok(Some(outcome)) => {
                self.abort(dst_key, &upload_id).await;
                return Ok(outcome);
            }
            Err(e) => {
                self.abort(dst_key, &upload_id).await;
                return Err(e);
            }
        }
        let etag = self.complete_or_abort(dst_key, &upload_id, done).await?;
        Ok(CopyOutcome::Copied {
            etag,
            server_side: false,
        })
    }
}

/// What `S3Bucket::copy_object_from` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyOutcome {
    /// The copy exists, with this ETag.
    Copied {
        etag: Option<String>,
        /// Copied by the server (one endpoint), not streamed through this process.
        server_side: bool,
    },
    /// The source no longer has the ETag `if_match` named: nothing was written.
    SourceChanged,
    /// The source does not exist (any more): nothing was written.
    SourceMissing,
}

/// Reads up to `n` bytes (fewer only at end of input).
async fn read_chunk<R: AsyncRead + Unpin>(r: &mut R, n: usize) -> std::io::Result<BytesMut> {
    let mut buf = BytesMut::with_capacity(n.min(64 * 1024 * 1024));
    while buf.len() < n {
        let want = (n - buf.len()).min(256 * 1024);
        let got = (&mut *r).take(want as u64).read_buf(&mut buf).await?;
        if got == 0 {
            break;
        }
    }
    Ok(buf)
}
