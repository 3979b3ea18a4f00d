//! Who may use the S3 front: clients sign with the keys `[[s3_front.clients]]` issues (checked
//! by s3s's SigV4/SigV2 verification), and each may touch only the buckets it lists. The
//! proxy signs upstream with the main bucket's own credentials, so apps never hold them.

use std::collections::HashMap;

use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::path::S3Path;
use s3s::{s3_error, S3Result};

use crate::config::FrontClient;

/// The clients' keys and their buckets.
pub struct Clients {
    by_key: HashMap<String, Client>,
}

struct Client {
    name: String,
    secret: SecretKey,
    buckets: Vec<String>,
}

impl Clients {
    pub fn new(clients: &[FrontClient]) -> Clients {
        Clients {
            by_key: clients
                .iter()
                .map(|c| {
                    (
                        c.access_key_id.clone(),
                        Client {
                            name: c.name.clone(),
                            secret: SecretKey::from(c.secret_access_key.expose()),
                            buckets: c.buckets.clone(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// Whether `access_key` may use `bucket`.
    pub fn allows(&self, access_key: &str, bucket: &str) -> bool {
        self.by_key
            .get(access_key)
            .is_some_and(|c| c.buckets.iter().any(|b| b == bucket))
    }
}

/// The keys s3s verifies signatures with.
pub struct Keys(pub std::sync::Arc<Clients>);

#[async_trait::async_trait]
impl S3Auth for Keys {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.0.by_key.get(access_key) {
            Some(c) => Ok(c.secret.clone()),
            None => Err(s3_error!(InvalidAccessKeyId)),
        }
    }
}

/// Every request must be signed by a client, and name only a bucket it may use.
pub struct Access(pub std::sync::Arc<Clients>);

#[async_trait::async_trait]
impl S3Access for Access {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let Some(creds) = cx.credentials() else {
            return Err(s3_error!(AccessDenied, "the request is not signed"));
        };
        match cx.s3_path() {
            S3Path::Root => Ok(()),
            S3Path::Bucket { bucket } | S3Path::Object { bucket, .. } => {
                match self.0.by_key.get(&creds.access_key) {
                    Some(c) if c.buckets.iter().any(|b| **b == **bucket) => Ok(()),
                    Some(c) => {
                        tracing::info!(client = %c.name, %bucket, "s3 front: bucket not allowed for this client");
                        Err(s3_error!(
                            AccessDenied,
                            "this key may not use bucket {bucket}"
                        ))
                    }
                    None => Err(s3_error!(InvalidAccessKeyId)),
                }
            }
        }
    }
}
