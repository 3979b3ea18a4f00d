//! Between s3s's request and answer types and the engine's: errors (an S3 error from the main
//! bucket reaches the client with its code and status), times, ETags, conditions, headers.

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use s3s::dto::{ETag, ETagCondition, Range, Timestamp};
use s3s::{S3Error, S3ErrorCode};

use crate::engine::s3::{ForwardError, WriteMeta};

/// The main bucket's answer, passed on; a bucket that did not answer is a 503 the client may
/// retry. The message never names the main bucket's endpoint or credentials.
pub fn s3_error(e: ForwardError) -> S3Error {
    match e {
        ForwardError::S3 {
            status,
            code,
            message,
        } => {
            let code =
                S3ErrorCode::from_bytes(code.as_bytes()).unwrap_or(S3ErrorCode::InternalError);
            let mut err = if message.is_empty() {
                S3Error::new(code)
            } else {
                S3Error::with_message(code, message)
            };
            if let Ok(s) = axum::http::StatusCode::from_u16(status) {
                err.set_status_code(s);
            }
            err
        }
        ForwardError::Failed(m) => {
            tracing::warn!("s3 front: main bucket: {m}");
            let mut err = S3Error::with_message(
                S3ErrorCode::ServiceUnavailable,
                "the main bucket did not answer; retry",
            );
            err.set_status_code(axum::http::StatusCode::SERVICE_UNAVAILABLE);
            err
        }
    }
}

/// The write reached the main bucket but its inventory row and replication task could not be
/// recorded: the client is not told "done", and retrying the write records it.
pub fn not_recorded(e: crate::engine::error::Error) -> S3Error {
    tracing::warn!("s3 front: a write reached the main bucket but was not recorded: {e}");
    let mut err = S3Error::with_message(
        S3ErrorCode::ServiceUnavailable,
        "the write could not be recorded in the inventory; retry it",
    );
    err.set_status_code(axum::http::StatusCode::SERVICE_UNAVAILABLE);
    err
}

pub fn to_chrono(t: &Timestamp) -> DateTime<Utc> {
    let odt: time::OffsetDateTime = t.clone().into();
    DateTime::<Utc>::from(SystemTime::from(odt))
}

pub fn to_timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp::from(SystemTime::from(t))
}

pub fn etag(e: Option<String>) -> Option<ETag> {
    e.map(ETag::Strong)
}

/// A condition header value as S3 wants it (`"etag"`, `W/"etag"` or `*`).
pub fn condition(c: &ETagCondition) -> String {
    match c {
        ETagCondition::Any => "*".into(),
        ETagCondition::ETag(ETag::Strong(v)) => format!("\"{v}\""),
        ETagCondition::ETag(ETag::Weak(v)) => format!("W/\"{v}\""),
    }
}

pub fn range(r: &Range) -> String {
    match r {
        Range::Int {
            first,
            last: Some(last),
        } => format!("bytes={first}-{last}"),
        Range::Int { first, last: None } => format!("bytes={first}-"),
        Range::Suffix { length } => format!("bytes=-{length}"),
    }
}

pub fn write_meta(
    content_type: Option<String>,
    cache_control: Option<String>,
    content_disposition: Option<String>,
    content_encoding: Option<String>,
    content_language: Option<String>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> WriteMeta {
    WriteMeta {
        content_type,
        cache_control,
        content_disposition,
        content_encoding,
        content_language,
        metadata: metadata.unwrap_or_default(),
    }
}

/// A GetObject or HeadObject answer (`$ty`) carrying the object's headers from `$head` (a
/// `HeadOut`), plus the given fields.
macro_rules! object_answer {
    ($ty:ident, $head:expr, { $($field:ident: $value:expr),* $(,)? }) => {{
        let h: crate::engine::s3::HeadOut = $head;
        let m = h.meta;
        $ty {
            accept_ranges: Some("bytes".into()),
            content_type: m.content_type,
            cache_control: m.cache_control,
            content_disposition: m.content_disposition,
            content_encoding: m.content_encoding,
            content_language: m.content_language,
            metadata: (!m.metadata.is_empty()).then_some(m.metadata),
            e_tag: convert::etag(h.etag),
            last_modified: h.last_modified.map(convert::to_timestamp),
            parts_count: h.parts_count,
            $($field: $value,)*
            ..Default::default()
        }
    }};
}
pub(super) use object_answer;

/// The main bucket's answer body as s3s streams it to the client, with its length known (so
/// the client gets a Content-Length, not a chunked body).
pub struct Body {
    stream: crate::engine::s3::BodyStream,
    remaining: usize,
}

/// `len` bytes of `stream`, as an answer body.
pub fn body(stream: crate::engine::s3::BodyStream, len: u64) -> s3s::dto::StreamingBlob {
    s3s::dto::StreamingBlob::new(Body {
        stream,
        remaining: len as usize,
    })
}

impl futures::Stream for Body {
    type Item = Result<bytes::Bytes, s3s::StdError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = self.stream.as_mut().poll_next(cx);
        if let std::task::Poll::Ready(Some(Ok(b))) = &polled {
            self.remaining = self.remaining.saturating_sub(b.len());
        }
        polled
    }
}

impl s3s::stream::ByteStream for Body {
    fn remaining_length(&self) -> s3s::stream::RemainingLength {
        s3s::stream::RemainingLength::new_exact(self.remaining)
    }
}
