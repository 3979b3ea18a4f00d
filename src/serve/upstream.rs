//! The HTTP client that GETs presigned mirror URLs for hits: hyper's pooled client over
//! HTTP/1.1 (TLS with the system's roots for `https://` endpoints), with the timeouts a proxy
//! needs. A hit costs one plain GET, no request signing, no URL re-parsing and no redirect
//! handling, which the general-purpose client did on every request.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{header, Request, Response, Uri};
use bytes::Bytes;
use futures::Stream;
use http_body_util::{BodyDataStream, BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::engine::error::{chain, Error, Result};

/// How long the mirror may take to connect, and to send the next bytes of an answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

type Pooled = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Pooled clients for the mirror bucket's presigned URLs: one per connection thread (see
/// `cores`), whose connections that thread alone drives, and one for any other thread.
#[derive(Clone)]
pub struct Upstream {
    clients: Vec<Pooled>,
}

impl Upstream {
    /// Clients for `threads` connection threads, each keeping up to `idle` connections open
    /// to the bucket.
    pub fn new(threads: usize, idle: usize) -> Result<Upstream> {
        crate::engine::tls::install_provider();
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        http.enforce_http(false);
        // The system's roots are read once; every client gets a copy of the connector.
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| Error::runtime(format!("mirror HTTP client: no TLS roots: {e}")))?;
        let connector = tls.https_or_http().enable_http1().wrap_connector(http);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(idle);
        let clients = (0..=threads)
            .map(|_| builder.build(connector.clone()))
            .collect();
        Ok(Upstream { clients })
    }

    /// The calling thread's client.
    fn here(&self) -> &Pooled {
        let i = super::cores::current().map_or(0, |i| i + 1);
        &self.clients[i % self.clients.len()]
    }

    /// GETs `uri` (with an optional inclusive byte range) up to the answer's headers.
    pub async fn get(&self, uri: Uri, range: Option<(u64, u64)>) -> Result<Response<Incoming>> {
        let mut req = Request::get(uri);
        if let Some((a, b)) = range {
            req = req.header(header::RANGE, format!("bytes={a}-{b}"));
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| Error::runtime(format!("mirror GET: {e}")))?;
        match tokio::time::timeout(READ_TIMEOUT, self.here().request(req)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(Error::runtime(format!("mirror GET: {}", chain(&e)))),
            Err(_) => Err(Error::runtime(format!(
                "mirror GET: no answer within {READ_TIMEOUT:?}"
            ))),
        }
    }
}

/// Reads a whole (small) body as the chunks received.
pub async fn read_all(body: &mut Incoming) -> Result<Vec<Bytes>> {
    let read = async {
        let mut chunks = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Error::runtime(format!("mirror body: {}", chain(&e))))?;
            if let Ok(data) = frame.into_data() {
                chunks.push(data);
            }
        }
        Ok(chunks)
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| {
            Err(Error::runtime(format!(
                "mirror body: not complete within {READ_TIMEOUT:?}"
            )))
        })
}

/// A body as a stream of chunks that fails when the mirror sends nothing for `READ_TIMEOUT`.
pub fn stream(body: Incoming) -> IdleTimeout<BodyDataStream<Incoming>> {
    IdleTimeout::new(BodyDataStream::new(body), READ_TIMEOUT)
}

/// Counts only the time spent waiting on the mirror: a slow client that leaves the stream
/// unpolled does not use up the mirror's time.
pub struct IdleTimeout<S> {
    inner: S,
    limit: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    waiting: bool,
}

impl<S> IdleTimeout<S> {
    fn new(inner: S, limit: Duration) -> Self {
        IdleTimeout {
            inner,
            limit,
            sleep: Box::pin(tokio::time::sleep(limit)),
            waiting: false,
        }
    }
}

impl<S> Stream for IdleTimeout<S>
where
    S: Stream<Item = std::result::Result<Bytes, hyper::Error>> + Unpin,
{
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(item) => {
                self.waiting = false;
                Poll::Ready(item.map(|r| r.map_err(io::Error::other)))
            }
            Poll::Pending => {
                if !self.waiting {
                    self.waiting = true;
                    let deadline = tokio::time::Instant::now() + self.limit;
                    self.sleep.as_mut().reset(deadline);
                }
                match self.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("mirror sent nothing for {:?}", self.limit),
                    )))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::time::Instant;

    type Item = std::result::Result<Bytes, hyper::Error>;

    #[tokio::test]
    async fn a_silent_mirror_times_out() {
        let mut s = IdleTimeout::new(
            futures::stream::pending::<Item>(),
            Duration::from_millis(50),
        );
        let started = Instant::now();
        let e = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("the timeout fires, not the test's")
            .expect("an item")
            .expect_err("a timeout");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_slow_client_does_not_use_up_the_mirrors_time() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Item>();
        let mut s = IdleTimeout::new(rx, Duration::from_millis(100));
        tx.unbounded_send(Ok(Bytes::from_static(b"a")))
            .expect("send");
        assert_eq!(s.next().await.expect("a").expect("ok"), "a");
        // The client reads nothing for 3 limits; then the mirror takes half a limit.
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.unbounded_send(Ok(Bytes::from_static(b"b")))
                .expect("send");
        });
        let b = tokio::time::timeout(Duration::from_secs(5), s.next()).await;
        assert_eq!(b.expect("in time").expect("b").expect("ok"), "b");
    }
}
