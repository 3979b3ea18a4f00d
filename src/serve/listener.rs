//! The download listener: accepts connections while fewer than `serve.max_connections` are
//! open, serves each over HTTP/1.1 (hyper) with the client's address as `ConnectInfo`, closes
//! a connection that is slow to send a request's headers (`serve.header_timeout`) or sits
//! idle between requests (`serve.idle_timeout`), and shuts down gracefully.
//!
//! hyper's own header read timeout cannot be the header timeout: it runs from the moment a
//! connection starts waiting for a request, so it also cuts idle kept-alive connections, after
//! `header_timeout`. Each connection keeps its own clock instead (`Clock`): headers are due
//! `header_timeout` after the connection opened or after the next request's first byte; an
//! idle connection is due its next request's first byte `idle_timeout` after the last response
//! ended; no clock runs while a request is being answered. hyper's timeout stays, at the sum of
//! the two, as a backstop that the clock always beats.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::cores::Cores;
use super::metrics::Metrics;
use crate::config::ServeConfig;

/// How long clients may take, and how many may be connected at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    pub fn from_config(cfg: &ServeConfig) -> Limits {
        Limits {
            header_timeout: cfg.header_timeout.0,
            idle_timeout: cfg.idle_timeout.0,
            max_connections: cfg.max_connections,
        }
    }
}

/// Serves `app` on `listener` until `cancel`: then stops accepting, closes the connections that
/// are not being answered and returns once the others have sent their answers.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Metrics,
    cores: &Cores,
    cancel: CancellationToken,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout + limits.idle_timeout);
    loop {
        // Past the cap, new connections wait in the listen backlog.
        let slot = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e, &cancel).await;
                    continue;
                }
            },
        };
        // Answers are written whole by hyper: waiting for an ACK before sending the next
        // segment only delays small answers.
        let _ = stream.set_nodelay(true);
        // The connection is registered afresh on its own thread's runtime (socket, timers),
        // so that only that thread is woken for it.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("connection from {peer}: {e}");
                continue;
            }
        };
        let (http, app, watcher) = (http.clone(), app.clone(), graceful.watcher());
        let (metrics, cancel) = (metrics.clone(), cancel.clone());
        cores.spawn(async move {
            let _slot = slot;
            let stream = match TcpStream::from_std(stream) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!("connection from {peer}: {e}");
                    return;
                }
            };
            let clock = Arc::new(Clock::new(limits));
            let conn = http.serve_connection(
                TokioIo::new(Timed {
                    io: stream,
                    clock: clock.clone(),
                }),
                // Each request carries the peer address and holds the connection's clock
                // stopped until its answer's body is done.
                hyper::service::service_fn({
                    let clock = clock.clone();
                    move |mut req: Request<Incoming>| {
                        let busy = Busy::start(clock.clone());
                        req.extensions_mut().insert(ConnectInfo(peer));
                        let answer = app.clone().oneshot(req);
                        async move {
                            let res = answer.await?;
                            Ok::<_, Infallible>(res.map(|body| Answer { body, _busy: busy }))
                        }
                    }
                }),
            );
            let conn = watcher.watch(conn);
            metrics.connections_open.inc();
            // Dropping the connection closes it.
            let timed_out = tokio::select! {
                served = conn => match served {
                    Ok(()) => false,
                    Err(e) if e.is_timeout() => true,
                    Err(e) => {
                        tracing::debug!("connection from {peer}: {e}");
                        false
                    }
                },
                _ = clock.expired() => true,
                // hyper lets a connection in the middle of a request's headers finish them;
                // at shutdown only answers are worth waiting for.
                _ = async {
                    cancel.cancelled().await;
                    clock.not_answering().await;
                } => false,
            };
            if timed_out {
                tracing::debug!("connection from {peer}: closed, too slow to send a request");
                metrics.connections_timed_out.inc();
            }
            metrics.connections_open.dec();
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// An accept that failed: a connection that died before it was accepted is nobody's problem;
/// anything else (out of file descriptors) is logged and retried after a pause, as the
/// condition usually lasts a while.
async fn accept_failed(e: io::Error, cancel: &CancellationToken) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::error!("accepting a connection: {e}");
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}

/// What a connection is waiting for, and until when.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Waiting {
    /// The rest of a request's headers.
    Headers(Instant),
    /// The first byte of the next request.
    Request(Instant),
    /// Nothing: this many requests are being answered.
    Answering(usize),
}

/// One connection's deadline, moved by its reads (`Timed`) and requests (`Busy`).
struct Clock {
    limits: Limits,
    waiting: watch::Sender<Waiting>,
}

impl Clock {
    fn new(limits: Limits) -> Clock {
        Clock {
            waiting: watch::Sender::new(Waiting::Headers(Instant::now() + limits.header_timeout)),
            limits,
        }
    }

    /// Bytes arrived: an idle connection now owes a request's headers.
    fn read(&self) {
        let header_timeout = self.limits.header_timeout;
        self.waiting.send_if_modified(|w| match w {
            Waiting::Request(_) => {
                *w = Waiting::Headers(Instant::now() + header_timeout);
                true
            }
            _ => false,
        });
    }

    fn request_started(&self) {
        self.waiting.send_modify(|w| {
            *w = match *w {
                Waiting::Answering(n) => Waiting::Answering(n + 1),
                _ => Waiting::Answering(1),
            }
        });
    }

    fn request_done(&self) {
        let idle_timeout = self.limits.idle_timeout;
        self.waiting.send_modify(|w| {
            *w = match *w {
                Waiting::Answering(n) if n > 1 => Waiting::Answering(n - 1),
                _ => Waiting::Request(Instant::now() + idle_timeout),
            }
        });
    }

    /// Resolves when no request is being answered.
    async fn not_answering(&self) {
        let mut waiting = self.waiting.subscribe();
        let _ = waiting
            .wait_for(|w| !matches!(w, Waiting::Answering(_)))
            .await;
    }

    /// Resolves when the connection has been waiting past its deadline.
    async fn expired(&self) {
        let mut waiting = self.waiting.subscribe();
        loop {
            let now = *waiting.borrow_and_update();
            let deadline = match now {
                Waiting::Headers(d) | Waiting::Request(d) => d,
                Waiting::Answering(_) => {
                    // The sender lives as long as `self`: this never fails.
                    let _ = waiting.changed().await;
                    continue;
                }
            };
            tokio::select! {
                biased;
                _ = waiting.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    if !waiting.has_changed().unwrap_or(false) {
                        return;
                    }
                }
            }
        }
    }
}

/// Holds a connection's clock stopped while one request is answered.
struct Busy(Arc<Clock>);

impl Busy {
    fn start(clock: Arc<Clock>) -> Busy {
        clock.request_started();
        Busy(clock)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// An answer's body; the request counts as answered when hyper is done with it.
pub struct Answer {
    body: axum::body::Body,
    _busy: Busy,
}

impl hyper::body::Body for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The connection's socket, telling its clock when bytes arrive.
struct Timed {
    io: TcpStream,
    clock: Arc<Clock>,
}

impl AsyncRead for Timed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.read();
        }
        polled
    }
}

impl AsyncWrite for Timed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADERS: Duration = Duration::from_millis(200);
    const IDLE: Duration = Duration::from_millis(500);

    fn limits() -> Limits {
        Limits {
            header_timeout: HEADERS,
            idle_timeout: IDLE,
            max_connections: 1,
        }
    }

    /// `took` is `expected`, give or take the scheduler.
    fn about(took: Duration, expected: Duration) {
        assert!(
            took >= expected && took < expected + Duration::from_millis(150),
            "took {took:?}, expected {expected:?}"
        );
    }

    #[tokio::test]
    async fn headers_are_due_from_the_start() {
        let clock = Clock::new(limits());
        let t0 = Instant::now();
        clock.expired().await;
        about(t0.elapsed(), HEADERS);
    }

    #[tokio::test]
    async fn no_clock_runs_while_answering_then_idle_time_counts() {
        let clock = Arc::new(Clock::new(limits()));
        let busy = Busy::start(clock.clone());
        let waiting = tokio::spawn({
            let clock = clock.clone();
            async move { clock.expired().await }
        });
        tokio::time::sleep(2 * IDLE).await;
        assert!(
            !waiting.is_finished(),
            "expired while a request was answered"
        );
        let t0 = Instant::now();
        drop(busy);
        waiting.await.expect("clock");
        about(t0.elapsed(), IDLE);
    }

    #[tokio::test]
    async fn an_idle_connection_that_starts_a_request_owes_its_headers() {
        let clock = Arc::new(Clock::new(limits()));
        drop(Busy::start(clock.clone()));
        tokio::time::sleep(IDLE / 2).await;
        let t0 = Instant::now();
        clock.read();
        clock.expired().await;
        about(t0.elapsed(), HEADERS);
    }
}
