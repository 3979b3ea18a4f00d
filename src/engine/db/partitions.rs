//! Monthly partitions of `download_events`: naming, bounds, and creating them ahead of writes.

use chrono::{DateTime, Datelike, TimeZone, Utc};

use super::{Db, Pool};
use crate::engine::error::{Error, Result};

/// A calendar month in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Month {
    pub year: i32,
    pub month: u32,
}

impl Month {
    pub fn of(t: DateTime<Utc>) -> Month {
        Month {
            year: t.year(),
            month: t.month(),
        }
    }
    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }
    pub fn prev(self) -> Month {
        if self.month == 1 {
            Month {
                year: self.year - 1,
                month: 12,
            }
        } else {
            Month {
                year: self.year,
                month: self.month - 1,
            }
        }
    }
    /// The first instant of the month.
    pub fn start(self) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(self.year, self.month, 1, 0, 0, 0)
            .single()
            .unwrap_or_default()
    }
    /// Parses a partition name `download_events_yYYYYmMM`.
    pub fn from_partition_name(name: &str) -> Option<Month> {
        let rest = name.strip_prefix("download_events_y")?;
        let (y, m) = rest.split_once('m')?;
        if y.len() != 4 || m.len() != 2 {
            return None;
        }
        let (year, month) = (y.parse().ok()?, m.parse().ok()?);
        (1..=12).contains(&month).then_some(Month { year, month })
    }
}

/// `download_events_yYYYYmMM`.
pub fn partition_name(m: Month) -> String {
    format!("download_events_y{:04}m{:02}", m.year, m.month)
}

/// `[start, end)` of a month.
pub fn month_bounds(m: Month) -> (DateTime<Utc>, DateTime<Utc>) {
    (m.start(), m.next().start())
}

impl Db {
    /// Creates the PostgreSQL partitions for every month in `[from, to]` that does not exist yet.
    /// SQLite keeps one table, so there it does nothing.
    ///
    /// Returns the months it could not provide: their table exists but is detached by an
    /// archive run that has not finished (`CREATE TABLE IF NOT EXISTS` would silently keep the
    /// detached table, and rows of that month would find no partition). Once the run drops
    /// the table, the month can be created again (late rows; the archive run reports them).
    pub async fn ensure_partitions(&self, from: Month, to: Month) -> Result<Vec<Month>> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(Vec::new());
        };
        let mut m = from;
        while m <= to {
            let (start, end) = month_bounds(m);
            // Identifiers and bounds come from integers, never from input.
            let ddl = format!(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF download_events FOR VALUES FROM ('{}') TO ('{}')",
                partition_name(m),
                start.format("%Y-%m-%d %H:%M:%S+00"),
                end.format("%Y-%m-%d %H:%M:%S+00"),
            );
            sqlx::query(&ddl)
                .execute(pool)
                .await
                .map_err(|e| self.err(e))?;
            m = m.next();
        }
        let detached = self.detached_months().await?;
        Ok(detached
            .into_iter()
            .filter(|m| (from..=to).contains(m))
            .collect())
    }
}

impl Db {
    /// The partitions of `from` and the `months` after it, created ahead of the writes that
    /// need them (`serve` and `migrate`), so an event flush finds them known and runs no DDL.
    pub async fn ensure_partitions_ahead(&self, from: Month, months: u32) -> Result<()> {
        let mut to = from;
        for _ in 0..months {
            to = to.next();
        }
        self.ensure_partitions_cached(from, to).await
    }

    /// `ensure_partitions`, skipping months this process already created or saw.
    pub(crate) async fn ensure_partitions_cached(&self, from: Month, to: Month) -> Result<()> {
        if !matches!(self.pool, Pool::Postgres(_)) {
            return Ok(());
        }
        let all_known = {
            let known = self.known_months.lock().unwrap_or_else(|p| p.into_inner());
            let mut m = from;
            let mut ok = true;
            while m <= to {
                ok &= known.contains(&m);
                m = m.next();
            }
            ok
        };
        if all_known {
            return Ok(());
        }
        if let Some(m) = self.ensure_partitions(from, to).await?.first() {
            return Err(Error::Refused(format!(
                "events of {} cannot be written now: an archive run detached its partition and \
                 has not dropped it yet (run `archive run` to finish it)",
                partition_name(*m)
            )));
        }
        let mut known = self.known_months.lock().unwrap_or_else(|p| p.into_inner());
        let mut m = from;
        while m <= to {
            known.insert(m);
            m = m.next();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let m = Month {
            year: 2026,
            month: 7,
        };
        assert_eq!(partition_name(m), "download_events_y2026m07");
        assert_eq!(
            Month::from_partition_name("download_events_y2026m07"),
            Some(m)
        );
        assert_eq!(Month::from_partition_name("download_events_y2026m13"), None);
        assert_eq!(
            Month {
                year: 2026,
                month: 12
            }
            .next(),
            Month {
                year: 2027,
                month: 1
            }
        );
        assert_eq!(
            Month {
                year: 2026,
                month: 1
            }
            .prev(),
            Month {
                year: 2025,
                month: 12
            }
        );
    }
}
