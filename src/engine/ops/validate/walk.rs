//! Which files a validation visits and in what order: rows paged by id for a narrow scope, or
//! for `--all` the rows in key byte order merged with the mirror bucket's listing, both fetched
//! a few pages ahead and from a checkpoint's key on. A page that fails is retried with backoff;
//! one that keeps failing stops the walk (every file after it would be unknown).

use std::collections::VecDeque;
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};

use crate::engine::db::{Db, FileScope, LifecycleRow};
use crate::engine::error::{Error, Result};
use crate::engine::s3::{ObjectInfo, S3Bucket};

/// Rows read from the database per query.
const PAGE: i64 = 1000;
/// Keys per listing request when `--all` lists the mirror bucket instead of HEADing each object.
const LIST_PAGE: i32 = 1000;
/// Database pages and listing pages fetched ahead of the merge.
const PAGES_AHEAD: usize = 2;
/// Attempts at one page before the walk gives up. The S3 client already retries each request
/// a few times within a second; these cover an outage of a few seconds more.
const PAGE_ATTEMPTS: u32 = 4;
/// The wait before the second attempt at a page, doubled before each further one.
const FIRST_PAGE_RETRY: Duration = Duration::from_millis(500);

/// What the mirror bucket's listing said about a row's object.
#[derive(Debug)]
pub(super) enum Listed {
    /// The listing was not read (a narrower scope): HEAD the object.
    Unread,
    /// Listed with this size.
    Found(ObjectInfo),
    /// The listing went past the key without it: the object does not exist.
    Absent,
}

/// The rows in scope, one page at a time, by id (rows changed behind the scan do not shift pages).
pub(crate) fn paged_rows(
    db: Db,
    bucket: String,
    scope: FileScope,
) -> impl futures::Stream<Item = Result<LifecycleRow>> + Send + 'static {
    stream::try_unfold(Some(0i64), move |after| {
        let (db, bucket, scope) = (db.clone(), bucket.clone(), scope.clone());
        async move {
            let Some(after) = after else {
                return Ok::<_, Error>(None);
            };
            let page = retried(
                || format!("reading rows of bucket {bucket} after id {after}"),
                || db.lifecycle_page(&bucket, &scope, after, PAGE),
            )
            .await?;
            if page.is_empty() {
                return Ok(None);
            }
            let next = match page.last() {
                Some(last) if page.len() as i64 == PAGE => Some(last.id),
                _ => None,
            };
            Ok(Some((stream::iter(page.into_iter().map(Ok)), next)))
        }
    })
    .try_flatten()
}

/// The live files of the mirror bucket with keys after `after_key` (all of them for `None`)
/// in byte order, each with what the bucket's listing says of its object: a merge of two
/// ordered streams, each fetched a few pages ahead, so memory stays a few pages whatever the
/// bucket's size. Either side out of byte order is an error, never a file wrongly called
/// missing.
pub(super) fn rows_with_listing(
    db: Db,
    mirror: S3Bucket,
    after_key: Option<String>,
) -> impl futures::Stream<Item = Result<(LifecycleRow, Listed)>> + Send + 'static {
    let rows = ahead(rows_by_key(
        db,
        mirror.name().to_string(),
        after_key.clone(),
    ));
    let objects = ahead(listing_pages(mirror.clone(), after_key));
    struct Merge {
        rows: BoxStream<'static, Result<Vec<LifecycleRow>>>,
        objects: BoxStream<'static, Result<Vec<ObjectInfo>>>,
        listed: VecDeque<ObjectInfo>,
        listing_done: bool,
        last_row_key: Option<String>,
        last_object_key: Option<String>,
    }
    let start = Merge {
        rows,
        objects,
        listed: VecDeque::new(),
        listing_done: false,
        last_row_key: None,
        last_object_key: None,
    };
    let bucket = mirror.name().to_string();
    stream::try_unfold(start, move |mut m| {
        let bucket = bucket.clone();
        async move {
            let Some(page) = m.rows.next().await.transpose()? else {
                return Ok(None);
            };
            let mut out = Vec::with_capacity(page.len());
            for row in page {
                if m.last_row_key.as_deref() >= Some(row.key.as_str()) {
                    return Err(Error::runtime(format!(
                        "validate: the database returned key {:?} out of byte order; nothing more checked",
                        row.key
                    )));
                }
                m.last_row_key = Some(row.key.clone());
                // Drop listed objects before this key (objects without a live row).
                loop {
                    match m.listed.front() {
                        Some(o) if o.key < row.key => {
                            m.listed.pop_front();
                        }
                        Some(_) => break,
                        None if m.listing_done => break,
                        None => match m.objects.next().await.transpose()? {
                            Some(objects) => {
                                for o in objects {
                                    if m.last_object_key.as_deref() >= Some(o.key.as_str()) {
                                        return Err(Error::runtime(format!(
                                            "bucket {bucket}: listing returned key {:?} out of byte order; nothing more checked",
                                            o.key
                                        )));
                                    }
                                    m.last_object_key = Some(o.key.clone());
                                    m.listed.push_back(o);
                                }
                            }
                            None => m.listing_done = true,
                        },
                    }
                }
                let listed = match m.listed.front() {
                    Some(o) if o.key == row.key => m
                        .listed
                        .pop_front()
                        .map_or(Listed::Absent, Listed::Found),
                    _ => Listed::Absent,
                };
                out.push(Ok((row, listed)));
            }
            Ok(Some((stream::iter(out), m)))
        }
    })
    .try_flatten()
}

/// Live files of `bucket` with keys after `after_key`, a page at a time, in byte order.
fn rows_by_key(
    db: Db,
    bucket: String,
    after_key: Option<String>,
) -> impl futures::Stream<Item = Result<Vec<LifecycleRow>>> + Send + 'static {
    stream::try_unfold(Some(after_key), move |after| {
        let (db, bucket) = (db.clone(), bucket.clone());
        async move {
            let Some(after) = after else {
                return Ok::<_, Error>(None);
            };
            let page = retried(
                || format!("reading rows of bucket {bucket} after key {after:?}"),
                || db.lifecycle_page_by_key(&bucket, after.as_deref(), PAGE),
            )
            .await?;
            if page.is_empty() {
                return Ok(None);
            }
            let next = match page.last() {
                Some(last) if page.len() as i64 == PAGE => Some(Some(last.key.clone())),
                _ => None,
            };
            Ok(Some((page, next)))
        }
    })
}

/// The mirror bucket's objects with keys after `after_key`, a listing page at a time.
fn listing_pages(
    mirror: S3Bucket,
    after_key: Option<String>,
) -> impl futures::Stream<Item = Result<Vec<ObjectInfo>>> + Send + 'static {
    enum Next {
        Start(Option<String>),
        Token(String),
        Done,
    }
    stream::try_unfold(Next::Start(after_key), move |next| {
        let mirror = mirror.clone();
        async move {
            let (start_after, token) = match &next {
                Next::Done => return Ok(None),
                Next::Start(after) => (after.as_deref(), None),
                Next::Token(token) => (None, Some(token.as_str())),
            };
            let page = retried(
                || format!("listing bucket {}", mirror.name()),
                || mirror.list_page("", start_after, token, LIST_PAGE),
            )
            .await?;
            let next = page.next_token.map_or(Next::Done, Next::Token);
            Ok(Some((page.objects, next)))
        }
    })
}

/// `read` until it succeeds, at most `PAGE_ATTEMPTS` times with a doubling wait between; the
/// last error says how many attempts it took.
async fn retried<T, F, Fut>(what: impl Fn() -> String, mut read: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut wait = FIRST_PAGE_RETRY;
    let mut attempt = 1;
    loop {
        match read().await {
            Ok(page) => return Ok(page),
            Err(e) if attempt < PAGE_ATTEMPTS => {
                tracing::warn!(
                    "{}: {e}; attempt {attempt} of {PAGE_ATTEMPTS}, retrying in {wait:?}",
                    what()
                );
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            Err(e) => return Err(gave_up(e, attempt)),
        }
    }
}

/// `e` with "(gave up after N attempts)" on its message, keeping its kind (and exit code).
fn gave_up(e: Error, attempts: u32) -> Error {
    let note = format!(" (gave up after {attempts} attempts)");
    match e {
        Error::S3 {
            bucket,
            endpoint,
            message,
        } => Error::S3 {
            bucket,
            endpoint,
            message: message + &note,
        },
        Error::Database { target, message } => Error::Database {
            target,
            message: message + &note,
        },
        Error::Runtime(message) => Error::Runtime(message + &note),
        other => other,
    }
}

/// Runs `pages` on its own task, `PAGES_AHEAD` pages ahead of the consumer, so a database
/// query or a listing request overlaps the checks instead of pausing them. The task stops when
/// the consumer is dropped.
fn ahead<T: Send + 'static>(
    pages: impl futures::Stream<Item = Result<T>> + Send + 'static,
) -> BoxStream<'static, Result<T>> {
    let (tx, rx) = tokio::sync::mpsc::channel(PAGES_AHEAD);
    tokio::spawn(async move {
        futures::pin_mut!(pages);
        while let Some(page) = pages.next().await {
            let failed = page.is_err();
            if tx.send(page).await.is_err() || failed {
                break;
            }
        }
    });
    stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|p| (p, rx)) }).boxed()
}
