//! The S3 operations the front answers. Each is forwarded to the main bucket with the
//! bucket's own credentials, bodies streamed both ways. A write is acknowledged only once
//! main confirmed it and its inventory row and replication task are committed together.

use chrono::Utc;
use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result, S3};

use super::convert::{self, s3_error};
use super::Front;
use crate::engine::db::{FrontWrite, WrittenObject};
use crate::engine::s3::{BodyStream, ForwardError, ListRequest, ReadRequest};
use s3s::S3Error;

/// How long a write may take before its intent is reconciled anyway (when the fleet table
/// cannot tell that the process that began it is gone).
pub(super) const INTENT_GRACE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

fn body(blob: Option<StreamingBlob>) -> BodyStream {
    match blob {
        Some(b) => Box::pin(b),
        None => Box::pin(futures::stream::empty()),
    }
}

impl Front {
    fn check_bucket(&self, bucket: &str) -> S3Result<()> {
        if bucket == self.main.name() {
            Ok(())
        } else {
            Err(s3_error!(NoSuchBucket))
        }
    }

    /// Records the intent to write `paths` (`true`: a delete) before main is asked: if this
    /// process dies before the write is recorded, the path is reconciled with main later.
    /// Without the database nothing is forwarded (503, the client retries).
    async fn intend(&self, paths: &[(&str, bool)]) -> S3Result<Vec<i64>> {
        let paths = paths.iter().map(|(p, d)| (p.to_string(), *d)).collect();
        self.intents
            .write(paths)
            .await
            .map_err(convert::not_recorded)
    }

    /// Records writes main confirmed (inventory rows and their tasks, one transaction, shared
    /// with the writes recorded at the same moment) and wakes this process's replication worker.
    async fn record(&self, writes: Vec<(i64, FrontWrite)>) -> S3Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let n = writes.len() as u64;
        self.records
            .write(writes)
            .await
            .map_err(convert::not_recorded)?;
        self.metrics.writes_recorded.inc_by(n);
        self.wake.notify_one();
        Ok(())
    }

    /// Main did not take the writes of these intents: a refusal drops them, a missing answer
    /// (the write may have happened) makes them due now, to be reconciled with main.
    async fn forward_failed(&self, intents: &[i64], e: ForwardError) -> S3Error {
        let refused = matches!(&e, ForwardError::S3 { status, .. } if *status < 500);
        let settled = if refused {
            self.db.drop_intents(intents).await
        } else {
            self.db.intents_due(intents, Utc::now()).await
        };
        if let Err(db) = settled {
            tracing::warn!("s3 front: settling the intents of a failed write: {db}");
        }
        s3_error(e)
    }

    /// The object main now holds at `key` (after a multipart completion or a copy, whose
    /// answers do not carry its size).
    async fn written(&self, key: &str, etag: Option<String>) -> S3Result<WrittenObject> {
        let h = self
            .main
            .forward_head(key, &ReadRequest::default())
            .await
            .map_err(s3_error)?;
        Ok(WrittenObject {
            size: h.size as i64,
            etag: h.etag.or(etag),
            content_type: h.meta.content_type,
            last_modified: h.last_modified,
        })
    }
}

fn read_request(
    range: Option<&Range>,
    part_number: Option<i32>,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> ReadRequest {
    ReadRequest {
        range: range.map(convert::range),
        part_number,
        if_match: if_match.map(convert::condition),
        if_none_match: if_none_match.map(convert::condition),
        if_modified_since: if_modified_since.map(convert::to_chrono),
        if_unmodified_since: if_unmodified_since.map(convert::to_chrono),
    }
}

#[async_trait::async_trait]
impl S3 for Front {
    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let i = req.input;
        self.check_bucket(&i.bucket)?;
        let len = match (i.content_length, &i.body) {
            (Some(n), _) if n >= 0 => n as u64,
            (None, None) => 0,
            _ => return Err(s3_error!(MissingContentLength)),
        };
        let meta = convert::write_meta(
            i.content_type,
            i.cache_control,
            i.content_disposition,
            i.content_encoding,
            i.content_language,
            i.metadata,
        );
        let content_type = meta.content_type.clone();
        let intents = self.intend(&[(&i.key, false)]).await?;
        let etag = match self
            .main
            .forward_put(&i.key, body(i.body), len, &meta, i.content_md5)
            .await
        {
            Ok(etag) => etag,
            Err(e) => return Err(self.forward_failed(&intents, e).await),
        };
        self.metrics.bytes_in.inc_by(len);
        self.record(vec![(
            intents[0],
            FrontWrite {
                path: i.key,
                object: Some(WrittenObject {
                    size: len as i64,
                    etag: etag.clone(),
                    content_type,
                    last_modified: Some(Utc::now()),
                }),
            },
        )])
        .await?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: convert::etag(etag),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let i = req.input;
        self.check_bucket(&i.bucket)?;
        let meta = convert::write_meta(
            i.content_type,
            i.cache_control,
            i.content_disposition,
            i.content_encoding,
            i.content_language,
            i.metadata,
        );
        let upload_id = self
            .main
            .forward_create_multipart(&i.key, &meta)
            .await
            .map_err(s3_error)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            upload_id: Some(upload_id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let i = req.input;
        self.check_bucket(&i.bucket)?;
        let len = match (i.content_length, &i.body) {
            (Some(n), _) if n >= 0 => n as u64,
            (None, None) => 0,
            _ => return Err(s3_error!(MissingContentLength)),
        };
        let etag = self
            .main
            .forward_upload_part(
                &i.key,
                &i.upload_id,
                i.part_number,
                body(i.body),
                len,
                i.content_md5,
            )
            .await
            .map_err(s3_error)?;
        self.metrics.bytes_in.inc_by(len);
        Ok(S3Response::new(UploadPartOutput {
            e_tag: convert::etag(etag),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let i = req.input;
        self.check_bucket(&i.bucket)?;
        let parts = i
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                Ok((
                    p.part_number
                        .ok_or_else(|| s3_error!(InvalidPart, "a part has no number"))?,
                    p.e_tag.map(|e| e.into_value()).unwrap_or_default(),
                ))
            })
            .collect::<S3Result<Vec<_>>>()?;
        let intents = self.intend(&[(&i.key, false)]).await?;
        let etag = match self
            .main
            .forward_complete(&i.key, &i.upload_id, parts)
            .await
        {
            Ok(etag) => etag,
            Err(e) => return Err(self.forward_failed(&intents, e).await),
        };
        let object = self.written(&i.key, etag.clone()).await?;
        self.record(vec![(
            intents[0],
            FrontWrite {
                path: i.key.clone(),
                object: Some(object),
            },
        )])
        .await?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            e_tag: convert::etag(etag),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let i = req.input;
        self.check_bucket(&i.bucket)?;
        self.main
            .forward_abort(&i.key, &i.upload_id)
            .await
            .map_err(s3_error)?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let access_key = req.credentials.as_ref().map(|c| c.access_key.clone());
        let i = req.input;
        self.check_bucket(&i.bucket)?;
        let (src_bucket, src_key) = match &i.copy_source {
            CopySource::Bucket {
                bucket,
                key,
                version_id: None,
            } => (bucket.to_string(), key.to_string()),
            _ => return Err(s3_error!(NotImplemented, "only a bucket/key copy source")),
        };
        if !access_key.is_some_and(|k| self.clients.allows(&k, &src_bucket)) {
            return Err(s3_error!(
                AccessDenied,
                "this key may not read bucket {src_bucket}"
            ));
        }
        self.check_bucket(&src_bucket)?;
        let replace = i
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let meta = replace.then(|| {
            convert::write_meta(
                i.content_type.clone(),
                i.cache_control.clone(),
                i.content_disposition.clone(),
                i.content_encoding.clone(),
                i.content_language.clone(),
                i.metadata.clone(),
            )
        });
        let intents = self.intend(&[(&i.key, false)]).await?;
        let copied = self
            .main
            .forward_copy(
                &src_key,
                &i.key,
                meta.as_ref(),
                i.copy_source_if_match.as_ref().map(convert::condition),
            )
            .await;
        let (etag, last_modified) = match copied {
            Ok(c) => c,
            Err(e) => return Err(self.forward_failed(&intents, e).await),
        };
        let object = self.written(&i.key, etag.clone()).await?;
        self.record(vec![(
            intents[0],
            FrontWrite {
                path: i.key,
                object: Some(object),
            },
        )])
        .await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: convert::etag(etag),
                last_modified: last_modified.map(convert::to_timestamp),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let i = req.input;
        self.check_bucket(&i.bucket)?;
        if i.version_id.is_some() {
            return Err(s3_error!(NotImplemented, "versioned deletes"));
        }
        let intents = self.intend(&[(&i.key, true)]).await?;
        if let Err(e) = self.main.forward_delete(&i.key).await {
            return Err(self.forward_failed(&intents, e).await);
        }
        self.record(vec![(
            intents[0],
            FrontWrite {
                path: i.key,
                object: None,
            },
        )])
        .await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let i = req.input;
        self.check_bucket(&i.bucket)?;
        if i.delete.objects.len() > crate::engine::s3::DELETE_BATCH {
            return Err(s3_error!(MalformedXML, "more than 1,000 keys"));
        }
        let keys: Vec<String> = i.delete.objects.iter().map(|o| o.key.clone()).collect();
        let paths: Vec<(&str, bool)> = keys.iter().map(|k| (k.as_str(), true)).collect();
        let intents = self.intend(&paths).await?;
        let failures = match self.main.forward_delete_many(&keys).await {
            Ok(f) => f,
            Err(e) => return Err(self.forward_failed(&intents, e).await),
        };
        let failed: std::collections::HashSet<&str> =
            failures.iter().map(|f| f.key.as_str()).collect();
        let (mut writes, mut refused) = (Vec::new(), Vec::new());
        for (k, intent) in keys.iter().zip(&intents) {
            if failed.contains(k.as_str()) {
                refused.push(*intent);
            } else {
                writes.push((
                    *intent,
                    FrontWrite {
                        path: k.clone(),
                        object: None,
                    },
                ));
            }
        }
        // A key main could not delete may or may not be gone: reconcile it with main.
        if let Err(e) = self.db.intents_due(&refused, Utc::now()).await {
            tracing::warn!("s3 front: settling the intents of failed deletes: {e}");
        }
        let deleted: Vec<String> = writes.iter().map(|(_, w)| w.path.clone()).collect();
        self.record(writes).await?;
        let quiet = i.delete.quiet.unwrap_or(false);
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: (!quiet).then(|| {
                deleted
                    .into_iter()
                    .map(|k| DeletedObject {
                        key: Some(k),
                        ..Default::default()
                    })
                    .collect()
            }),
            errors: (!failures.is_empty()).then(|| {
                failures
                    .into_iter()
                    .map(|f| Error {
                        code: Some(f.code),
                        key: Some(f.key),
                        message: Some(f.message),
                        ..Default::default()
                    })
                    .collect()
            }),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let i = req.input;
        self.check_bucket(&i.bucket)?;
        let r = read_request(
            i.range.as_ref(),
            i.part_number,
            i.if_match.as_ref(),
            i.if_none_match.as_ref(),
            i.if_modified_since.as_ref(),
            i.if_unmodified_since.as_ref(),
        );
        let got = self.main.forward_get(&i.key, &r).await.map_err(s3_error)?;
        Ok(S3Response::new(
            convert::object_answer!(GetObjectOutput, got.head, {
                body: Some(convert::body(got.body, got.content_length)),
                content_length: Some(got.content_length as i64),
                content_range: got.content_range,
            }),
        ))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let i = req.input;
        self.check_bucket(&i.bucket)?;
        let r = read_request(
            None,
            i.part_number,
            i.if_match.as_ref(),
            i.if_none_match.as_ref(),
            i.if_modified_since.as_ref(),
            i.if_unmodified_since.as_ref(),
        );
        let head = self.main.forward_head(&i.key, &r).await.map_err(s3_error)?;
        let size = head.size as i64;
        Ok(S3Response::new(
            convert::object_answer!(HeadObjectOutput, head, {
                content_length: Some(size),
            }),
        ))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let i = req.input;
        self.check_bucket(&i.bucket)?;
        let out = self
            .main
            .forward_list(&ListRequest {
                prefix: i.prefix.clone(),
                delimiter: i.delimiter.clone(),
                continuation_token: i.continuation_token.clone(),
                start_after: i.start_after.clone(),
                max_keys: i.max_keys,
            })
            .await
            .map_err(s3_error)?;
        let key_count = (out.objects.len() + out.common_prefixes.len()) as i32;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(i.bucket),
            prefix: i.prefix,
            delimiter: i.delimiter,
            max_keys: Some(i.max_keys.unwrap_or(1000)),
            key_count: Some(key_count),
            continuation_token: i.continuation_token,
            start_after: i.start_after,
            is_truncated: Some(out.is_truncated),
            next_continuation_token: out.next_continuation_token,
            contents: Some(objects(out.objects)),
            common_prefixes: Some(prefixes(out.common_prefixes)),
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let i = req.input;
        self.check_bucket(&i.bucket)?;
        let out = self
            .main
            .forward_list(&ListRequest {
                prefix: i.prefix.clone(),
                delimiter: i.delimiter.clone(),
                continuation_token: None,
                start_after: i.marker.clone().filter(|m| !m.is_empty()),
                max_keys: i.max_keys,
            })
            .await
            .map_err(s3_error)?;
        // Version 1 pages by the last key or prefix returned.
        let last = [
            out.objects.last().map(|o| o.key.clone()),
            out.common_prefixes.last().cloned(),
        ]
        .into_iter()
        .flatten()
        .max();
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(i.bucket),
            prefix: i.prefix,
            delimiter: i.delimiter.clone(),
            marker: i.marker,
            max_keys: Some(i.max_keys.unwrap_or(1000)),
            is_truncated: Some(out.is_truncated),
            next_marker: if out.is_truncated { last } else { None },
            contents: Some(objects(out.objects)),
            common_prefixes: Some(prefixes(out.common_prefixes)),
            ..Default::default()
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.check_bucket(&req.input.bucket)?;
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: Some(self.region.clone()),
            ..Default::default()
        }))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.check_bucket(&req.input.bucket)?;
        Ok(S3Response::new(GetBucketLocationOutput {
            location_constraint: (self.region != "us-east-1")
                .then(|| BucketLocationConstraint::from(self.region.clone())),
        }))
    }

    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let allowed = req
            .credentials
            .as_ref()
            .is_some_and(|c| self.clients.allows(&c.access_key, self.main.name()));
        let buckets = allowed.then(|| {
            vec![Bucket {
                name: Some(self.main.name().to_string()),
                bucket_region: Some(self.region.clone()),
                ..Default::default()
            }]
        });
        Ok(S3Response::new(ListBucketsOutput {
            buckets,
            ..Default::default()
        }))
    }
}

fn objects(objects: Vec<crate::engine::s3::ObjectInfo>) -> Vec<Object> {
    objects
        .into_iter()
        .map(|o| Object {
            key: Some(o.key),
            size: Some(o.size as i64),
            e_tag: convert::etag(o.etag),
            last_modified: o.last_modified.map(convert::to_timestamp),
            storage_class: Some(ObjectStorageClass::from_static(
                ObjectStorageClass::STANDARD,
            )),
            ..Default::default()
        })
        .collect()
}

fn prefixes(prefixes: Vec<String>) -> Vec<CommonPrefix> {
    prefixes
        .into_iter()
        .map(|p| CommonPrefix { prefix: Some(p) })
        .collect()
}
