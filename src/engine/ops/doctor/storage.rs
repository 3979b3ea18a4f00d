//! The bucket checks of `doctor`: for each configured bucket, HeadBucket and a one-key
//! listing, with `--write` a PUT/GET/DELETE round trip under a reserved key, and the count of
//! incomplete multipart uploads older than the lifecycle rule's 7 days. Buckets are checked
//! at once; the checks of one bucket run in order.

use bytes::Bytes;

use super::{bounded, secs, Check, DoctorParams};
use crate::config::Config;
use crate::engine::ops::uploads::{self, configured_buckets, BucketRole, ConfiguredBucket};
use crate::engine::s3::{S3Bucket, S3Cause, S3Failure};

/// Where write probes go, under the bucket's prefix.
pub const PROBE_PREFIX: &str = ".mirrorctl-doctor/";

pub(super) async fn check(config: &Config, p: &DoctorParams) -> Vec<Check> {
    let buckets = configured_buckets(config);
    if buckets.is_empty() {
        return vec![Check::fail(
            "buckets",
            "no mirror bucket configured",
            "set [buckets.mirror] bucket = \"...\" (and endpoint, region, keys) in the config file",
        )];
    }
    let runs = buckets.iter().map(|b| one_bucket(config, b, p));
    futures::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The config section a bucket comes from (`buckets.mirror` for the main and archive
/// buckets that default to it).
fn section(config: &Config, b: &ConfiguredBucket) -> String {
    let set = |r: &BucketRole| match r {
        BucketRole::Mirror => config.buckets.mirror.is_some(),
        BucketRole::Main => config.buckets.main.is_some(),
        BucketRole::Backup => config.buckets.backup.is_some(),
        BucketRole::Archive => config.buckets.archive.is_some(),
    };
    let role = b.roles.iter().find(|r| set(r)).unwrap_or(&b.roles[0]);
    format!("buckets.{}", role.name())
}

/// What to do about a failure, naming the config keys.
fn hint(f: &S3Failure, key: &str) -> String {
    match f.cause {
        S3Cause::Unreachable => format!("check {key}.endpoint and that the S3 server is up"),
        S3Cause::TimedOut => format!(
            "check {key}.endpoint (a firewall or the wrong port?) and that the S3 server is up"
        ),
        S3Cause::CredentialsRejected => format!(
            "check {key}.access_key_id and {key}.secret_access_key (or {key}.profile)"
        ),
        S3Cause::AccessDenied => format!(
            "grant this key access to the bucket (s3:ListBucket, s3:GetObject, s3:PutObject, s3:DeleteObject, s3:ListBucketMultipartUploads, s3:AbortMultipartUpload), or check {key}.access_key_id"
        ),
        S3Cause::WrongRegion => format!("set {key}.region to the bucket's region"),
        S3Cause::NoSuchBucket => format!("check {key}.bucket, or create the bucket"),
        S3Cause::NotImplemented => "this S3 server does not support the request".into(),
        S3Cause::Other => format!("check {key} and the S3 server's logs"),
    }
}

async fn one_bucket(config: &Config, b: &ConfiguredBucket, p: &DoctorParams) -> Vec<Check> {
    let key = section(config, b);
    let name = format!("bucket {}", b.label());
    let place = format!("{} at {}", b.config.bucket, b.config.endpoint_label());
    let s3 = match S3Bucket::connect_probe(&b.config, p.timeout).await {
        Ok(s3) => s3,
        Err(e) => return vec![Check::fail(name, e.to_string(), format!("check [{key}]"))],
    };
    let timed_out = |what: &str| {
        Check::fail(
            name.clone(),
            format!("{place}: {what}: no answer within {}", secs(p.timeout)),
            format!(
                "check {key}.endpoint (a firewall or the wrong port?) and that the S3 server is up"
            ),
        )
    };
    // HeadBucket, then a one-key listing. A HEAD failure has no body to say why, so the
    // listing's error (which has a code) names the cause when it fails too.
    let head = match bounded(p.timeout, s3.probe_head_bucket()).await {
        Some(head) => head,
        None => return vec![timed_out("head bucket")],
    };
    let list = match &head {
        // Nothing answers: a listing would only say so again.
        Err(f) if matches!(f.cause, S3Cause::Unreachable | S3Cause::TimedOut) => Err(f.clone()),
        _ => match bounded(p.timeout, s3.probe_list()).await {
            Some(list) => list,
            None => return vec![timed_out("list")],
        },
    };
    let listed = match (head, list) {
        (Ok(()), Ok(first)) => first,
        (Err(head), Ok(_)) => {
            // Listing works but HeadBucket does not: a policy without s3:ListBucket on HEAD,
            // or a server that does not support it. Worth saying, not fatal.
            return vec![Check::warn(
                name,
                format!("{place}: {head}; listing works"),
                hint(&head, &key),
            )];
        }
        (head, Err(list)) => {
            // The listing's cause is the more precise, unless it is vaguer than HEAD's.
            let f = match head {
                Err(h) if list.cause == S3Cause::Other && h.cause != S3Cause::Other => h,
                _ => list,
            };
            return vec![Check::fail(name, format!("{place}: {f}"), hint(&f, &key))];
        }
    };
    let mut checks = vec![Check::ok(
        name.clone(),
        format!(
            "{place}: reachable, listing works ({})",
            if listed.is_some() {
                "not empty"
            } else {
                "empty"
            }
        ),
    )];
    if p.write {
        checks.push(write_probe(&s3, &name, &place, &key, p).await);
    }
    checks.push(orphaned_uploads(&s3, &name, &place, &key, p).await);
    checks
}

/// A reserved key nothing else writes: the prefix, the host's process id and the time.
fn probe_key(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}{PROBE_PREFIX}{}-{nanos:x}", std::process::id())
}

async fn write_probe(s3: &S3Bucket, name: &str, place: &str, key: &str, p: &DoctorParams) -> Check {
    let name = format!("{name} write");
    let object = probe_key(s3.prefix());
    let body = Bytes::from(format!("mirrorctl doctor write probe {object}\n"));
    match bounded(p.timeout * 3, s3.probe_write(&object, body)).await {
        Some(Ok(())) => Check::ok(
            name,
            format!("{place}: put, read back and deleted {object:?}"),
        ),
        Some(Err(f)) => Check::fail(name, format!("{place}: {f}"), hint(&f, key)),
        None => Check::fail(
            name,
            format!(
                "{place}: the put/get/delete of {object:?} did not finish within {}",
                secs(p.timeout * 3)
            ),
            format!("check {key}.endpoint and the S3 server; delete {object:?} if it is left"),
        ),
    }
}

async fn orphaned_uploads(
    s3: &S3Bucket,
    name: &str,
    place: &str,
    key: &str,
    p: &DoctorParams,
) -> Check {
    let name = format!("{name} uploads");
    let age = secs(uploads::LIFECYCLE_AGE);
    // A bucket with many uploads lists several pages: more time than one request.
    match bounded(p.timeout * 3, uploads::count_older(s3, uploads::LIFECYCLE_AGE)).await {
        Some(Ok(0)) => Check::ok(name, format!("no incomplete multipart upload older than {age}")),
        Some(Ok(n)) => Check::warn(
            name,
            format!("{n} incomplete multipart upload(s) older than {age} (their parts take space)"),
            format!(
                "`mirrorctl --headless uploads list --older-than {age}` shows them, `uploads abort --older-than {age} --yes` removes them; a lifecycle rule (AbortIncompleteMultipartUpload) keeps them away"
            ),
        ),
        Some(Err(f)) if f.cause == S3Cause::NotImplemented => Check::skip(
            name,
            "this S3 server does not implement ListMultipartUploads",
        ),
        Some(Err(f)) => Check::fail(name, format!("{place}: {f}"), hint(&f, key)),
        None => Check::fail(
            name,
            format!("listing incomplete uploads took more than {}", secs(p.timeout * 3)),
            "try `mirrorctl --headless uploads list` to see how many there are",
        ),
    }
}
