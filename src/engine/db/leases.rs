//! Leases: one holder per name at a time, until it releases the name or stops renewing it.
//! `serve` replicas use them for fills (`fill:{bucket}/{key}`: one origin fetch and one upload
//! per file across the fleet) and for the DB-wide metrics (`metrics`: one replica exports them).
//! A holder that crashes blocks nobody for longer than the lease's time to live.

use chrono::{DateTime, Utc};

use super::{on_pool, ts, Db};
use crate::engine::error::Result;

/// Who holds a lease, and where it can be reached for what it holds.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LeaseHolder {
    pub holder: String,
    pub address: Option<String>,
    pub expires_at: DateTime<Utc>,
}

/// The outcome of `try_lease`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leased {
    /// `holder` has it now (new, renewed, or taken over from an expired holder).
    Acquired,
    /// Someone else holds it.
    HeldBy(LeaseHolder),
}

impl Db {
    /// Takes or renews the lease `name` for `holder` until `now + ttl`, unless another holder
    /// has it and it has not expired.
    pub async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        address: Option<&str>,
        ttl: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<Leased> {
        let expires = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let (now, expires) = (ts(now), ts(expires));
        let r: Result<Leased, sqlx::Error> = on_pool!(self, |p| {
            let won: Option<String> = sqlx::query_scalar(
                "INSERT INTO leases (name, holder, address, acquired_at, expires_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, address = excluded.address, \
                 acquired_at = CASE WHEN leases.holder = excluded.holder THEN leases.acquired_at ELSE excluded.acquired_at END, \
                 expires_at = excluded.expires_at \
                 WHERE leases.holder = excluded.holder OR leases.expires_at <= excluded.acquired_at \
                 RETURNING holder",
            )
            .bind(name)
            .bind(holder)
            .bind(address)
            .bind(now)
            .bind(expires)
            .fetch_optional(p)
            .await?;
            if won.is_some() {
                return Ok(Leased::Acquired);
            }
            let other: Option<LeaseHolder> =
                sqlx::query_as("SELECT holder, address, expires_at FROM leases WHERE name = $1")
                    .bind(name)
                    .fetch_optional(p)
                    .await?;
            Ok(match other {
                Some(h) => Leased::HeldBy(h),
                // Released in between: whoever asks next gets it.
                None => Leased::HeldBy(LeaseHolder {
                    holder: String::new(),
                    address: None,
                    expires_at: now,
                }),
            })
        });
        r.map_err(|e| self.err(e))
    }

    /// Gives the lease up, if `holder` still holds it.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let r: Result<_, sqlx::Error> = on_pool!(self, |p| sqlx::query(
            "DELETE FROM leases WHERE name = $1 AND holder = $2"
        )
        .bind(name)
        .bind(holder)
        .execute(p)
        .await
        .map(|_| ()));
        r.map_err(|e| self.err(e))
    }

    /// The current holder of `name`, if its lease has not expired at `now`.
    pub async fn lease_holder(
        &self,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<LeaseHolder>> {
        let r: Result<Option<LeaseHolder>, sqlx::Error> = on_pool!(self, |p| {
            sqlx::query_as(
            "SELECT holder, address, expires_at FROM leases WHERE name = $1 AND expires_at > $2"
        )
        .bind(name)
        .bind(ts(now))
        .fetch_optional(p)
        .await
        });
        r.map_err(|e| self.err(e))
    }
}
