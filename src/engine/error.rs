//! The engine's error type: what went wrong, with the context an operator needs, and which exit code it maps to.

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    /// Bad input from the user: a flag, an id, a value (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The thing named does not exist (exit 2).
    #[error("not found: {0}")]
    NotFound(String),
    /// The operation was refused: read-only mode, missing --yes, over a limit (exit 2).
    #[error("refused: {0}")]
    Refused(String),
    /// Another mutating operation holds the lock (exit 1).
    #[error("busy: {0}")]
    Busy(String),
    /// The database failed or could not be reached (exit 1).
    #[error("database {target}: {message}")]
    Database { target: String, message: String },
    /// An S3 request failed (exit 1).
    #[error("bucket {bucket} at {endpoint}: {message}")]
    S3 {
        bucket: String,
        endpoint: String,
        message: String,
    },
    /// The origin failed (exit 1).
    #[error("origin {url}: {message}")]
    Origin { url: String, message: String },
    /// The operation was cancelled before it finished (exit 1).
    #[error("cancelled")]
    Cancelled,
    /// Anything else at runtime: I/O, a server that did not start (exit 1).
    #[error("{0}")]
    Runtime(String),
}

impl Error {
    /// The process exit code documented for this kind of failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::NotFound(_) | Error::Refused(_) => 2,
            _ => 1,
        }
    }

    pub fn runtime(msg: impl std::fmt::Display) -> Self {
        Error::Runtime(msg.to_string())
    }
}

/// An error with its sources on one line, `a: b: c` (an HTTP client's own message is often
/// just "error sending request").
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s.replace('\n', " ")
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Runtime(format!("I/O: {e}"))
    }
}
