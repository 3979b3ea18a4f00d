//! Why an S3 request failed, classified into the causes an operator acts on differently
//! (unreachable, timed out, credentials, permissions, region, missing bucket, unsupported
//! request), with the one-line description every S3 error message carries.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::engine::error::Error;

/// The cause of a failed S3 request, as far as it decides what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum S3Cause {
    /// No connection: refused, reset, DNS, TLS.
    Unreachable,
    /// Connected (or tried to) and no answer in time.
    TimedOut,
    /// The access key is unknown or the secret does not match it.
    CredentialsRejected,
    /// The credentials are valid but not allowed to do this.
    AccessDenied,
    /// The request was signed for another region than the server's or the bucket's.
    WrongRegion,
    NoSuchBucket,
    /// The server does not implement the request.
    NotImplemented,
    Other,
}

/// A failed S3 request: where, what, why.
#[derive(Debug, Clone)]
pub struct S3Failure {
    pub bucket: String,
    pub endpoint: String,
    /// The request, e.g. "list" or "head bucket".
    pub op: String,
    pub cause: S3Cause,
    /// One line naming the cause, e.g. "credentials rejected (SignatureDoesNotMatch)".
    pub detail: String,
}

impl std::fmt::Display for S3Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.op, self.detail)
    }
}

impl From<S3Failure> for Error {
    fn from(f: S3Failure) -> Error {
        Error::S3 {
            message: f.to_string(),
            bucket: f.bucket,
            endpoint: f.endpoint,
        }
    }
}

/// The cause of an SDK error and its one-line description (without bucket or request).
pub(super) fn classify<E>(e: &SdkError<E, HttpResponse>) -> (S3Cause, String)
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (cause, detail) = match e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let region = se
                .raw()
                .headers()
                .get("x-amz-bucket-region")
                .map(str::to_string);
            let err = se.err();
            service_error(status, err.code(), err.message(), region.as_deref())
                .unwrap_or_else(|| (S3Cause::Other, format!("{}", DisplayErrorContext(e))))
        }
        SdkError::DispatchFailure(d) if d.is_timeout() => {
            (S3Cause::TimedOut, format!("timed out ({})", root_cause(e)))
        }
        SdkError::DispatchFailure(d) if d.is_io() => (
            S3Cause::Unreachable,
            format!("unreachable ({})", root_cause(e)),
        ),
        SdkError::TimeoutError(_) => (S3Cause::TimedOut, "timed out".to_string()),
        _ => (S3Cause::Other, format!("{}", DisplayErrorContext(e))),
    };
    (cause, detail.replace('\n', " "))
}

/// The innermost error of a chain: "Connection refused (os error 111)" rather than the
/// layers of client context around it.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(inner) = cur.source() {
        cur = inner;
    }
    cur.to_string()
}

/// Classifies an error response by status, code and message. HEAD responses carry no body, so
/// their code is missing and the status alone has to do. `None` for a response without a
/// status or code worth naming.
fn service_error(
    status: u16,
    code: Option<&str>,
    message: Option<&str>,
    bucket_region: Option<&str>,
) -> Option<(S3Cause, String)> {
    let msg = message.unwrap_or("");
    let lower = msg.to_ascii_lowercase();
    let region_hint = || {
        bucket_region
            .map(str::to_string)
            .or_else(|| expected_region(msg))
            .map(|r| format!("; the server expects region {r:?}"))
            .unwrap_or_default()
    };
    Some(match (code, status) {
        (Some("NoSuchBucket"), _) | (None, 404) => {
            (S3Cause::NoSuchBucket, "bucket does not exist".into())
        }
        (Some(c @ ("InvalidAccessKeyId" | "SignatureDoesNotMatch")), _) => (
            S3Cause::CredentialsRejected,
            format!("credentials rejected ({c})"),
        ),
        // Some servers (Garage) answer a bad key or signature with AccessDenied.
        (Some("AccessDenied"), _)
            if lower.contains("signature")
                || lower.contains("no such key")
                || lower.contains("access key") =>
        {
            (
                S3Cause::CredentialsRejected,
                format!("credentials rejected ({msg})"),
            )
        }
        (Some("AccessDenied"), _) => (S3Cause::AccessDenied, "access denied".into()),
        (None, 403) => (
            S3Cause::AccessDenied,
            "access denied or credentials rejected (HTTP 403)".into(),
        ),
        (
            Some(
                c @ ("AuthorizationHeaderMalformed"
                | "PermanentRedirect"
                | "IllegalLocationConstraintException"),
            ),
            _,
        ) => (
            S3Cause::WrongRegion,
            format!("wrong region ({c}{})", region_hint()),
        ),
        (None, 301) => (
            S3Cause::WrongRegion,
            format!("wrong region (HTTP 301{})", region_hint()),
        ),
        // A HEAD refused as a bad request is most often signed for the wrong region.
        (None, 400) => (
            S3Cause::WrongRegion,
            format!(
                "bad request (HTTP 400), most likely the wrong region{}",
                region_hint()
            ),
        ),
        (Some("NotImplemented"), _) => (
            S3Cause::NotImplemented,
            "the server does not implement this request (NotImplemented)".into(),
        ),
        (None, 501) => (
            S3Cause::NotImplemented,
            "the server does not implement this request (HTTP 501)".into(),
        ),
        (Some(c), _) if !msg.is_empty() => (S3Cause::Other, format!("{c}: {msg}")),
        (Some(c), _) => (S3Cause::Other, c.to_string()),
        (None, _) => return None,
    })
}

/// The region an "unexpected scope" or "region is wrong" message names as expected:
/// Garage's "…expected: '20261207/us-east-1/s3/aws4_request'", AWS's "…expecting 'eu-west-1'".
fn expected_region(msg: &str) -> Option<String> {
    let (_, rest) = msg
        .split_once("expecting '")
        .or_else(|| msg.split_once("expected: '"))?;
    let quoted = rest.split('\'').next()?;
    let parts: Vec<&str> = quoted.split('/').collect();
    // A scope "date/region/service/aws4_request", or the region alone.
    let region = if parts.len() > 1 { parts[1] } else { parts[0] };
    (!region.is_empty()).then(|| region.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_region_from_garage_and_aws_messages() {
        assert_eq!(
            expected_region("Authorization header malformed, unexpected scope: '20261207/eu-west-1/s3/aws4_request', expected: '20261207/us-east-1/s3/aws4_request'"),
            Some("us-east-1".into())
        );
        assert_eq!(
            expected_region("The authorization header is malformed; the region 'us-east-1' is wrong; expecting 'eu-west-1'"),
            Some("eu-west-1".into())
        );
        assert_eq!(expected_region("nothing here"), None);
    }

    #[test]
    fn causes_by_code_and_status() {
        let c = |code, status, msg| service_error(status, code, msg, None).map(|(c, _)| c);
        assert_eq!(c(None, 404, None), Some(S3Cause::NoSuchBucket));
        assert_eq!(
            c(
                Some("AccessDenied"),
                403,
                Some("Forbidden: Invalid signature")
            ),
            Some(S3Cause::CredentialsRejected)
        );
        assert_eq!(
            c(
                Some("AccessDenied"),
                403,
                Some("Forbidden: No such key: GKbad")
            ),
            Some(S3Cause::CredentialsRejected)
        );
        assert_eq!(
            c(Some("AccessDenied"), 403, Some("Access Denied")),
            Some(S3Cause::AccessDenied)
        );
        assert_eq!(
            c(Some("SignatureDoesNotMatch"), 403, None),
            Some(S3Cause::CredentialsRejected)
        );
        assert_eq!(
            c(Some("AuthorizationHeaderMalformed"), 400, None),
            Some(S3Cause::WrongRegion)
        );
        assert_eq!(c(None, 400, None), Some(S3Cause::WrongRegion));
        assert_eq!(
            c(Some("NotImplemented"), 501, None),
            Some(S3Cause::NotImplemented)
        );
        assert_eq!(c(None, 500, None), None);
    }
}
