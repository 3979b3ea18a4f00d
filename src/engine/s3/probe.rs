//! Probes for `doctor`: each is one request (or one small round trip) whose failure comes back
//! classified, so a diagnosis can say "wrong region" rather than "service error".

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::{S3Bucket, S3Cause, S3Failure};

impl S3Bucket {
    fn probe_failure(&self, op: &str, cause: S3Cause, detail: impl Into<String>) -> S3Failure {
        S3Failure {
            bucket: self.bucket.clone(),
            endpoint: self.endpoint.clone(),
            op: op.to_string(),
            cause,
            detail: detail.into(),
        }
    }

    /// HeadBucket: the bucket exists and these credentials may use it. A HEAD answer has no
    /// body, so its failures are classified by status alone.
    pub async fn probe_head_bucket(&self) -> Result<(), S3Failure> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.failure("head bucket", &e))
    }

    /// Lists at most one key; the key seen, if any. Its error responses carry a code, which
    /// names the cause more precisely than HeadBucket's status.
    pub async fn probe_list(&self) -> Result<Option<String>, S3Failure> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .max_keys(1)
            .send()
            .await
            .map_err(|e| self.failure("list", &e))?;
        Ok(out
            .contents()
            .first()
            .and_then(|o| o.key())
            .map(str::to_string))
    }

    /// Writes `body` to `key`, reads it back and compares, then deletes it (also when the read
    /// failed). Fails on the first step that does not work.
    pub async fn probe_write(&self, key: &str, body: Bytes) -> Result<(), S3Failure> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(body.len() as i64)
            .body(ByteStream::from(body.clone()))
            .send()
            .await
            .map_err(|e| self.failure(&format!("put {key:?}"), &e))?;
        let read = self.probe_read(key, &body).await;
        let deleted = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.failure(&format!("delete {key:?}"), &e));
        read?;
        deleted?;
        // A server that acknowledges a delete it did not do would leave probes behind.
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Err(aws_sdk_s3::error::SdkError::ServiceError(se))
                if se.raw().status().as_u16() == 404 =>
            {
                Ok(())
            }
            Ok(_) => Err(self.probe_failure(
                &format!("delete {key:?}"),
                S3Cause::Other,
                "the object is still there after the delete",
            )),
            Err(e) => Err(self.failure(&format!("head {key:?}"), &e)),
        }
    }

    async fn probe_read(&self, key: &str, want: &Bytes) -> Result<(), S3Failure> {
        let op = format!("get {key:?}");
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.failure(&op, &e))?;
        let got = out
            .body
            .collect()
            .await
            .map_err(|e| self.probe_failure(&op, S3Cause::Other, format!("reading the body: {e}")))?
            .into_bytes();
        if got != *want {
            return Err(self.probe_failure(
                &op,
                S3Cause::Other,
                format!(
                    "read back {} bytes that differ from the {} written",
                    got.len(),
                    want.len()
                ),
            ));
        }
        Ok(())
    }
}
