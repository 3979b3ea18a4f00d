//! What the S3 front forwards to the main bucket, one call per client request: bodies pass
//! through as streams (never buffered whole), and an error S3 answered comes back with its
//! status and code, so the front can hand the client the same answer.

use std::collections::HashMap;
use std::pin::Pin;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{Stream, TryStreamExt};
use http_body_util::{BodyDataStream, StreamBody};

use super::{object_info, to_chrono, unquote, ObjectInfo, S3Bucket};

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
/// A body passed through: the client's upload, or the bucket's answer.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send + Sync>>;

/// Why a forwarded request failed.
#[derive(Debug, Clone)]
pub enum ForwardError {
    /// The bucket answered with an S3 error (`code` as S3 names it, e.g. `NoSuchKey`).
    S3 {
        status: u16,
        code: String,
        message: String,
    },
    /// No answer: unreachable, timed out, or the client's body failed mid-way.
    Failed(String),
}

impl std::fmt::Display for ForwardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForwardError::S3 {
                status,
                code,
                message,
            } => write!(f, "{status} {code}: {message}"),
            ForwardError::Failed(m) => f.write_str(m),
        }
    }
}

pub type Forwarded<T> = Result<T, ForwardError>;

/// Headers stored with an object.
#[derive(Debug, Clone, Default)]
pub struct WriteMeta {
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    pub content_encoding: Option<String>,
    pub content_language: Option<String>,
    pub metadata: HashMap<String, String>,
}

/// What HEAD (or a GET) says of an object, headers included.
#[derive(Debug, Clone, Default)]
pub struct HeadOut {
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: Option<DateTime<Utc>>,
    pub meta: WriteMeta,
    /// Parts of a multipart object (when asked with a part number).
    pub parts_count: Option<i32>,
}

/// Conditions and range of a GET or HEAD, as the client sent them.
#[derive(Debug, Clone, Default)]
pub struct ReadRequest {
    pub range: Option<String>,
    pub part_number: Option<i32>,
    pub if_match: Option<String>,
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<DateTime<Utc>>,
    pub if_unmodified_since: Option<DateTime<Utc>>,
}

/// A streamed GET answer.
pub struct GetOut {
    pub head: HeadOut,
    pub content_length: u64,
    pub content_range: Option<String>,
    pub body: BodyStream,
}

/// A ListObjectsV2 request.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    pub prefix: Option<String>,
    pub delimiter: Option<String>,
    pub continuation_token: Option<String>,
    pub start_after: Option<String>,
    pub max_keys: Option<i32>,
}

/// A ListObjectsV2 answer.
#[derive(Debug, Clone, Default)]
pub struct ListOut {
    pub objects: Vec<ObjectInfo>,
    pub common_prefixes: Vec<String>,
    pub is_truncated: bool,
    pub next_continuation_token: Option<String>,
}

/// One key of a DeleteObjects that failed.
#[derive(Debug, Clone)]
pub struct DeleteFailure {
    pub key: String,
    pub code: String,
    pub message: String,
}

fn forward_err<E>(e: SdkError<E, HttpResponse>) -> ForwardError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if let SdkError::ServiceError(se) = &e {
        let status = se.raw().status().as_u16();
        let err = se.err();
        let code = match (err.code(), status) {
            (Some(c), _) => c.to_string(),
            (None, 304) => "NotModified".into(),
            (None, 404) => "NoSuchKey".into(),
            (None, 412) => "PreconditionFailed".into(),
            (None, 416) => "InvalidRange".into(),
            (None, _) => "InternalError".into(),
        };
        return ForwardError::S3 {
            status,
            code,
            message: err.message().unwrap_or("").replace('\n', " "),
        };
    }
    ForwardError::Failed(format!("{}", DisplayErrorContext(&e)).replace('\n', " "))
}

fn sdk_body(body: BodyStream) -> ByteStream {
    let frames = body.map_ok(hyper::body::Frame::data);
    ByteStream::from_body_1_x(StreamBody::new(frames))
}

fn into_stream(body: ByteStream) -> BodyStream {
    Box::pin(BodyDataStream::new(body.into_inner()))
}

fn quoted(etag: &str) -> String {
    if etag.starts_with('"') || etag.starts_with("W/") {
        etag.to_string()
    } else {
        format!("\"{etag}\"")
    }
}

/// The headers stored with an object, from a GetObject or HeadObject answer.
macro_rules! stored_meta {
    ($o:expr) => {
        WriteMeta {
            content_type: $o.content_type().map(str::to_string),
            cache_control: $o.cache_control().map(str::to_string),
            content_disposition: $o.content_disposition().map(str::to_string),
            content_encoding: $o.content_encoding().map(str::to_string),
            content_language: $o.content_language().map(str::to_string),
            metadata: $o.metadata().cloned().unwrap_or_default(),
        }
    };
}

/// Sets the headers stored with an object on a PutObject, CreateMultipartUpload or CopyObject.
macro_rules! with_meta {
    ($req:expr, $m:expr) => {
        $req.set_content_type($m.content_type.clone())
            .set_cache_control($m.cache_control.clone())
            .set_content_disposition($m.content_disposition.clone())
            .set_content_encoding($m.content_encoding.clone())
            .set_content_language($m.content_language.clone())
            .set_metadata((!$m.metadata.is_empty()).then(|| $m.metadata.clone()))
    };
}

impl S3Bucket {
    /// PutObject with the client's body streamed through (`len` bytes, as the client said).
    pub async fn forward_put(
        &self,
        key: &str,
        body: BodyStream,
        len: u64,
        meta: &WriteMeta,
        content_md5: Option<String>,
    ) -> Forwarded<Option<String>> {
        let req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(len as i64)
            .set_content_md5(content_md5)
            .body(sdk_body(body));
        let out = with_meta!(req, meta)
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(forward_err)?;
        Ok(unquote(out.e_tag()))
    }

    /// CreateMultipartUpload: the upload id.
    pub async fn forward_create_multipart(&self, key: &str, meta: &WriteMeta) -> Forwarded<String> {
        let req = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key);
        let out = with_meta!(req, meta).send().await.map_err(forward_err)?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| ForwardError::Failed("the bucket sent no upload id".into()))
    }

    /// UploadPart, the body streamed through: the part's ETag.
    pub async fn forward_upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: BodyStream,
        len: u64,
        content_md5: Option<String>,
    ) -> Forwarded<Option<String>> {
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number)
            .content_length(len as i64)
            .set_content_md5(content_md5)
            .body(sdk_body(body))
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(forward_err)?;
        Ok(unquote(out.e_tag()))
    }

    /// CompleteMultipartUpload with the client's part list: the object's ETag.
    pub async fn forward_complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<(i32, String)>,
    ) -> Forwarded<Option<String>> {
        let parts = parts
            .into_iter()
            .map(|(n, etag)| {
                CompletedPart::builder()
                    .part_number(n)
                    .e_tag(quoted(&etag))
                    .build()
            })
            .collect();
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
            .await
            .map_err(forward_err)?;
        Ok(unquote(out.e_tag()))
    }

    pub async fn forward_abort(&self, key: &str, upload_id: &str) -> Forwarded<()> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(forward_err)?;
        Ok(())
    }

    /// CopyObject within this bucket; `replace` sets new headers instead of copying them.
    pub async fn forward_copy(
        &self,
        src_key: &str,
        dst_key: &str,
        replace: Option<&WriteMeta>,
        if_match: Option<String>,
    ) -> Forwarded<(Option<String>, Option<DateTime<Utc>>)> {
        use aws_sdk_s3::types::MetadataDirective;
        let source = super::copy_source(self, src_key);
        let mut req = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(dst_key)
            .copy_source(source)
            .set_copy_source_if_match(if_match);
        if let Some(m) = replace {
            req = with_meta!(req.metadata_directive(MetadataDirective::Replace), m);
        }
        let out = req.send().await.map_err(forward_err)?;
        let r = out.copy_object_result();
        Ok((
            unquote(r.and_then(|r| r.e_tag())),
            to_chrono(r.and_then(|r| r.last_modified())),
        ))
    }

    pub async fn forward_delete(&self, key: &str) -> Forwarded<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(forward_err)?;
        Ok(())
    }

    /// DeleteObjects (at most 1,000 keys, as S3 allows): the keys that failed.
    pub async fn forward_delete_many(&self, keys: &[String]) -> Forwarded<Vec<DeleteFailure>> {
        let ids = keys
            .iter()
            .map(|k| ObjectIdentifier::builder().key(k).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ForwardError::Failed(format!("delete: {e}")))?;
        let delete = Delete::builder()
            .set_objects(Some(ids))
            .quiet(true)
            .build()
            .map_err(|e| ForwardError::Failed(format!("delete: {e}")))?;
        let out = self
            .client
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(forward_err)?;
        Ok(out
            .errors()
            .iter()
            .map(|e| DeleteFailure {
                key: e.key().unwrap_or_default().to_string(),
                code: e.code().unwrap_or("InternalError").to_string(),
                message: e.message().unwrap_or("").to_string(),
            })
            .collect())
    }

    /// GetObject with the client's range and conditions, the body streamed through.
    pub async fn forward_get(&self, key: &str, r: &ReadRequest) -> Forwarded<GetOut> {
        let o = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_range(r.range.clone())
            .set_part_number(r.part_number)
            .set_if_match(r.if_match.clone())
            .set_if_none_match(r.if_none_match.clone())
            .set_if_modified_since(r.if_modified_since.map(to_smithy))
            .set_if_unmodified_since(r.if_unmodified_since.map(to_smithy))
            .send()
            .await
            .map_err(forward_err)?;
        let head = HeadOut {
            size: o
                .content_range()
                .and_then(|c| c.rsplit('/').next())
                .and_then(|t| t.parse().ok())
                .unwrap_or(o.content_length().unwrap_or(0).max(0) as u64),
            etag: unquote(o.e_tag()),
            last_modified: to_chrono(o.last_modified()),
            meta: stored_meta!(o),
            parts_count: o.parts_count(),
        };
        Ok(GetOut {
            content_length: o.content_length().unwrap_or(0).max(0) as u64,
            content_range: o.content_range().map(str::to_string),
            head,
            body: into_stream(o.body),
        })
    }

    /// HeadObject with the client's conditions.
    pub async fn forward_head(&self, key: &str, r: &ReadRequest) -> Forwarded<HeadOut> {
        let o = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .set_part_number(r.part_number)
            .set_if_match(r.if_match.clone())
            .set_if_none_match(r.if_none_match.clone())
            .set_if_modified_since(r.if_modified_since.map(to_smithy))
            .set_if_unmodified_since(r.if_unmodified_since.map(to_smithy))
            .send()
            .await
            .map_err(forward_err)?;
        Ok(HeadOut {
            size: o.content_length().unwrap_or(0).max(0) as u64,
            etag: unquote(o.e_tag()),
            last_modified: to_chrono(o.last_modified()),
            meta: stored_meta!(o),
            parts_count: o.parts_count(),
        })
    }

    /// ListObjectsV2 as the client asked.
    pub async fn forward_list(&self, r: &ListRequest) -> Forwarded<ListOut> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .set_prefix(r.prefix.clone().filter(|p| !p.is_empty()))
            .set_delimiter(r.delimiter.clone().filter(|d| !d.is_empty()))
            .set_continuation_token(r.continuation_token.clone())
            .set_start_after(r.start_after.clone())
            .set_max_keys(r.max_keys)
            .send()
            .await
            .map_err(forward_err)?;
        Ok(ListOut {
            objects: out.contents().iter().filter_map(object_info).collect(),
            common_prefixes: out
                .common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(str::to_string))
                .collect(),
            is_truncated: out.is_truncated().unwrap_or(false),
            next_continuation_token: out.next_continuation_token().map(str::to_string),
        })
    }
}

fn to_smithy(t: DateTime<Utc>) -> aws_sdk_s3::primitives::DateTime {
    aws_sdk_s3::primitives::DateTime::from_secs(t.timestamp())
}
