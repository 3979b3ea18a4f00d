//! The origin: where files come from. An HTTP origin (HEAD/GET with ETag, Last-Modified,
//! Content-Length, timeouts, retries, a maximum size) or a main S3 bucket.

use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use tokio::io::AsyncRead;

use crate::config::OriginConfig;
use crate::engine::error::{chain, Error, Result};
use crate::engine::s3::S3Bucket;

/// What the origin says of a file right now.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct OriginMeta {
    pub size: Option<u64>,
    /// Without quotes.
    pub etag: Option<String>,
    pub last_modified: Option<DateTime<Utc>>,
    pub content_type: Option<String>,
}

/// A streamed origin body.
pub struct OriginBody {
    pub meta: OriginMeta,
    /// Where an HTTP body finally came from (after redirects).
    pub final_url: Option<url::Url>,
    pub body: Pin<Box<dyn AsyncRead + Send>>,
}

/// An HTTP origin or an S3 bucket acting as one.
#[derive(Clone)]
pub enum Origin {
    Http(HttpOrigin),
    S3(S3Bucket),
}

impl Origin {
    /// HEAD the file at `location` (a URL, or a key for an S3 origin); `None` when it is gone.
    pub async fn head(&self, location: &str) -> Result<Option<OriginMeta>> {
        match self {
            Origin::Http(h) => h.head(location).await,
            Origin::S3(b) => Ok(b.head(s3_key(b, location)).await?.map(|m| OriginMeta {
                size: Some(m.size),
                etag: m.etag,
                last_modified: m.last_modified,
                content_type: m.content_type,
            })),
        }
    }

    /// Streams the file at `location`; `None` when it is gone.
    pub async fn get(&self, location: &str) -> Result<Option<OriginBody>> {
        match self {
            Origin::Http(h) => h.get(location).await,
            Origin::S3(b) => Ok(b.get(s3_key(b, location), None).await?.map(|o| OriginBody {
                meta: OriginMeta {
                    size: Some(o.meta.size),
                    etag: o.meta.etag,
                    last_modified: o.meta.last_modified,
                    content_type: o.meta.content_type,
                },
                final_url: None,
                body: o.body,
            })),
        }
    }
}

/// For an S3 origin `location` is a key, optionally written `s3://bucket/key`.
fn s3_key<'a>(b: &S3Bucket, location: &'a str) -> &'a str {
    location
        .strip_prefix("s3://")
        .and_then(|rest| rest.strip_prefix(b.name()))
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(location)
}

/// An origin spoken to over HTTP(S).
#[derive(Clone)]
pub struct HttpOrigin {
    client: reqwest::Client,
    base: Option<url::Url>,
    retries: u32,
    max_size: u64,
}

impl HttpOrigin {
    pub fn new(cfg: &OriginConfig) -> Result<HttpOrigin> {
        crate::engine::tls::install_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.timeout.0.min(Duration::from_secs(10)))
            .read_timeout(cfg.timeout.0)
            .user_agent(concat!("mirrorctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::runtime(format!("origin HTTP client: {}", chain(&e))))?;
        let base = match &cfg.base_url {
            Some(b) => Some(
                crate::engine::keys::base_url(b)
                    .map_err(|e| Error::Usage(format!("origin.base_url: {e}")))?,
            ),
            None => None,
        };
        Ok(HttpOrigin {
            client,
            base,
            retries: cfg.retries,
            max_size: cfg.max_file_size.0,
        })
    }

    fn fail(url: &str, message: impl Into<String>) -> Error {
        Error::Origin {
            url: redact_query(url),
            message: message.into(),
        }
    }

    /// An absolute URL, resolving a relative one against `origin.base_url`.
    pub fn resolve(&self, location: &str) -> Result<url::Url> {
        match (url::Url::parse(location), &self.base) {
            (Ok(u), _) => Ok(u),
            (Err(_), Some(base)) => base
                .join(location)
                .map_err(|e| Self::fail(location, format!("bad URL: {e}"))),
            (Err(e), None) => Err(Self::fail(
                location,
                format!("bad URL ({e}); relative URLs need origin.base_url"),
            )),
        }
    }

    /// Sends with retries on connection errors, 429 and 5xx, backing off between attempts.
    async fn send(&self, method: reqwest::Method, location: &str) -> Result<reqwest::Response> {
        let url = self.resolve(location)?;
        let url = url.as_str();
        let mut attempt = 0;
        loop {
            let res = self.client.request(method.clone(), url).send().await;
            let retryable = match &res {
                Ok(r) => {
                    r.status().is_server_error()
                        || r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS
                }
                Err(e) => e.is_connect() || e.is_timeout() || e.is_request(),
            };
            if !retryable || attempt >= self.retries {
                return match res {
                    Ok(r) => Ok(r),
                    Err(e) => Err(Self::fail(url, describe(&e))),
                };
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(100 * (1 << attempt.min(6)))).await;
        }
    }

    fn meta(&self, url: &str, r: &reqwest::Response) -> Result<OriginMeta> {
        let h = r.headers();
        let text = |name: reqwest::header::HeaderName| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let size = text(reqwest::header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
        if let Some(size) = size {
            if size > self.max_size {
                return Err(Self::fail(
                    url,
                    format!(
                        "file is {size} bytes, over origin.max_file_size ({} bytes)",
                        self.max_size
                    ),
                ));
            }
        }
        Ok(OriginMeta {
            size,
            etag: text(reqwest::header::ETAG)
                .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string()),
            last_modified: text(reqwest::header::LAST_MODIFIED)
                .and_then(|v| DateTime::parse_from_rfc2822(&v).ok())
                .map(|t| t.with_timezone(&Utc)),
            content_type: text(reqwest::header::CONTENT_TYPE),
        })
    }

    pub async fn head(&self, url: &str) -> Result<Option<OriginMeta>> {
        let r = self.send(reqwest::Method::HEAD, url).await?;
        match r.status() {
            s if s.is_success() => Ok(Some(self.meta(url, &r)?)),
            reqwest::StatusCode::NOT_FOUND | reqwest::StatusCode::GONE => Ok(None),
            s => Err(Self::fail(url, format!("HTTP {s}"))),
        }
    }

    pub async fn get(&self, url: &str) -> Result<Option<OriginBody>> {
        let r = self.send(reqwest::Method::GET, url).await?;
        match r.status() {
            s if s.is_success() => {
                let meta = self.meta(url, &r)?;
                let final_url = Some(r.url().clone());
                let max = self.max_size;
                let shown = redact_query(url);
                let mut seen = 0u64;
                let stream =
                    r.bytes_stream()
                        .map_err(std::io::Error::other)
                        .and_then(move |chunk| {
                            seen += chunk.len() as u64;
                            let res = if seen > max {
                                Err(std::io::Error::other(format!(
                            "origin {shown}: body exceeds origin.max_file_size ({max} bytes)"
                        )))
                            } else {
                                Ok(chunk)
                            };
                            futures::future::ready(res)
                        });
                Ok(Some(OriginBody {
                    meta,
                    final_url,
                    body: Box::pin(tokio_util::io::StreamReader::new(stream)),
                }))
            }
            reqwest::StatusCode::NOT_FOUND | reqwest::StatusCode::GONE => Ok(None),
            s => Err(Self::fail(url, format!("HTTP {s}"))),
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "unreachable (connection failed)".into()
    } else {
        chain(e)
    }
}

/// URLs may carry tokens in their query string or credentials before the host: never print
/// either (`https://u:p@h/x?token=t` → `https://redacted@h/x?…`).
pub fn redact_query(url: &str) -> String {
    let url = match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_password(None);
            let _ = u.set_username("redacted");
            u.to_string()
        }
        _ => url.to_string(),
    };
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?…"),
        None => url,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_in_urls_are_redacted() {
        assert_eq!(
            super::redact_query("https://bob:hunter2@cdn.example/a.zip?token=s3cr3t"),
            "https://redacted@cdn.example/a.zip?…"
        );
        assert_eq!(super::redact_query("pkgs/a.bin"), "pkgs/a.bin");
    }
}
