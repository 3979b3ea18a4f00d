//! The database checks of `doctor`: reachable, the schema against this binary's migrations,
//! and who holds the mutation lock.

use super::{bounded, secs, Check, DoctorParams};
use crate::config::Config;
use crate::engine::db::{Backend, Db};

/// Adds the database, schema and lock checks; the connection when the database answered and
/// has a schema.
pub(super) async fn check(
    config: &Config,
    p: &DoctorParams,
    checks: &mut Vec<Check>,
) -> Option<Db> {
    let url = match config.database_url() {
        Ok(url) => url,
        Err(e) => {
            checks.push(Check::fail(
                "database",
                e,
                "set [database] url in the config file, or MIRRORCTL_DATABASE_URL",
            ));
            return None;
        }
    };
    if let Some(file) = Db::sqlite_file_missing(url) {
        // Connecting would create it: doctor changes nothing.
        checks.push(Check::warn(
            "database",
            format!("the SQLite file {} does not exist yet", file.display()),
            "check database.url; `mirrorctl migrate` (or any command) creates and migrates it",
        ));
        return None;
    }
    let limit = config.database.connect_timeout.0.min(p.timeout);
    // The driver has its own timeout; this one also bounds a server that accepts and stalls.
    let connected = bounded(limit + limit / 2, Db::connect(url, 2, limit)).await;
    let db = match connected {
        Some(Ok(db)) => db,
        Some(Err(e)) => {
            checks.push(Check::fail(
                "database",
                e.to_string(),
                "check database.url (host, port, name, user, password) and that the server is up",
            ));
            return None;
        }
        None => {
            checks.push(Check::fail(
                "database",
                format!(
                    "database {}: no connection within {}",
                    crate::config::redact_url(url),
                    secs(limit)
                ),
                "check database.url and that the server is reachable from here",
            ));
            return None;
        }
    };
    let backend = match db.backend() {
        Backend::Postgres => "PostgreSQL",
        Backend::Sqlite => "SQLite",
    };
    checks.push(Check::ok(
        "database",
        format!("{} ({backend}): connected", db.target()),
    ));
    if schema(&db, p, checks).await {
        checks.push(lock(&db, p).await);
        Some(db)
    } else {
        checks.push(Check::skip("lock", "needs the schema (see above)"));
        db.close().await;
        None
    }
}

/// The schema check; whether the schema exists (the lock table with it).
async fn schema(db: &Db, p: &DoctorParams, checks: &mut Vec<Check>) -> bool {
    const NAME: &str = "schema";
    let status = match bounded(p.timeout, db.schema_status()).await {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            checks.push(Check::fail(
                NAME,
                e.to_string(),
                "check that database.url's user may read the database",
            ));
            return false;
        }
        None => {
            checks.push(Check::fail(
                NAME,
                format!("no answer within {}", secs(p.timeout)),
                "the database is overloaded or locked: try again",
            ));
            return false;
        }
    };
    let migrate_hint = match db.backend() {
        Backend::Postgres => "run `mirrorctl migrate`".to_string(),
        Backend::Sqlite => {
            "run `mirrorctl migrate` (other commands also apply them to a SQLite file as they open it)"
                .to_string()
        }
    };
    if !status.migrated || status.applied == 0 {
        checks.push(Check::warn(
            NAME,
            format!(
                "no mirrorctl schema: none of the {} migrations is applied",
                status.known
            ),
            migrate_hint,
        ));
        return false;
    }
    if !status.unknown.is_empty() {
        let versions: Vec<String> = status.unknown.iter().map(i64::to_string).collect();
        checks.push(Check::warn(
            NAME,
            format!(
                "the database has migrations this mirrorctl does not know (version {}): a newer mirrorctl migrated it",
                versions.join(", ")
            ),
            "upgrade mirrorctl on this host",
        ));
    } else if !status.pending.is_empty() {
        checks.push(Check::warn(
            NAME,
            format!(
                "{} of {} migrations pending: {}",
                status.pending.len(),
                status.known,
                status.pending.join(", ")
            ),
            migrate_hint,
        ));
    } else {
        checks.push(Check::ok(
            NAME,
            format!("up to date ({} migrations)", status.applied),
        ));
    }
    true
}

async fn lock(db: &Db, p: &DoctorParams) -> Check {
    const NAME: &str = "lock";
    let status = match bounded(p.timeout, db.lock_status()).await {
        Some(Ok(s)) => s,
        Some(Err(e)) => return Check::fail(NAME, e.to_string(), "check the database"),
        None => {
            return Check::fail(
                NAME,
                format!("no answer within {}", secs(p.timeout)),
                "the database is overloaded or locked: try again",
            )
        }
    };
    let Some(status) = status else {
        return Check::ok(NAME, "free: no mutating operation is running");
    };
    let held = match &status.row {
        Some(r) => format!(
            "{} by {} (process {}) since {}",
            r.kind,
            r.operator,
            r.holder,
            r.started_at.format("%Y-%m-%d %H:%M:%S UTC")
        ),
        None => "by a session that wrote no lock row".to_string(),
    };
    if status.held && !status.holder_process_gone {
        Check::ok(NAME, format!("held: {held}"))
    } else if status.row.is_some() {
        Check::warn(
            NAME,
            format!("left behind by a process that is gone (its lease ended): {held}"),
            "the next mutating command takes the lock over; `mirrorctl lock release` clears it now",
        )
    } else {
        Check::ok(NAME, "free: no mutating operation is running")
    }
}
