//! Command-line definitions (clap). Parsing only: `main.rs` decides what runs.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

const PURGE_EXAMPLES: &str = "\
Examples:
  mirrorctl --headless purge --unused-days 90 --dry-run
  mirrorctl --headless purge --max-bytes 500GiB --dry-run -o json
  mirrorctl --headless purge --prefix 'mods/1234/' --dry-run
  mirrorctl --headless purge --match 'mods/*/old-*.zip' --stale --yes
  mirrorctl --headless purge --match '*.[Tt][Mm][Pp]' --max-delete 5000 --yes";

const AFTER_HELP: &str = "\
Examples:
  mirrorctl --demo                          open the terminal UI on the embedded demo
  mirrorctl --demo --headless stats         hit rate and storage of the demo, as a table
  mirrorctl --headless stats --window 7d -o json
  mirrorctl --headless files --sort size --limit 20
  mirrorctl --headless file mods/4123/90007/maps-v2.zip
  mirrorctl migrate                         create or upgrade the database schema
  mirrorctl doctor                          check the config, database, buckets and origin

Configuration: --config PATH, else $MIRRORCTL_CONFIG, else the user config dir
(config.toml). MIRRORCTL_DATABASE_URL overrides database.url.

Exit codes: 0 done and nothing wrong; 1 runtime failure (unreachable server, I/O,
busy lock); 2 usage, config or refused; 3 done and problems were found.
`check` is a monitoring plugin: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (see `check --help`).";

#[derive(Debug, Parser)]
#[command(
    name = "mirrorctl",
    version,
    about = "See and run an S3 mirror/cache: hit rate, staleness, purges, drift and archives",
    long_about = "mirrorctl connects to the mirror's database (PostgreSQL or SQLite) and its buckets \
(any S3-compatible endpoint). Without --headless it opens a live terminal UI; with --headless \
it runs one command and prints a table or JSON for scripts and cron.",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Config file (default: $MIRRORCTL_CONFIG, else the user config dir's mirrorctl/config.toml)
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Use the embedded demo: no config or servers needed
    #[arg(long, global = true)]
    pub demo: bool,

    /// Refuse every mutating action
    #[arg(long, global = true)]
    pub read_only: bool,

    /// Run one command and exit instead of opening the terminal UI
    #[arg(long, global = true)]
    pub headless: bool,

    /// Output format of headless commands
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// More log output on stderr (-v info, -vv debug)
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    /// Prometheus text format (stats only)
    Prometheus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SortArg {
    Downloads,
    Size,
    LastDownloaded,
    Name,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Hit rate, requests, bandwidth saved, storage, stale files and errors
    Stats {
        /// Time window: 24h, 7d, 30d or all
        #[arg(long, short = 'w', default_value = "24h")]
        window: String,
    },
    /// The per-file table
    Files {
        #[arg(long, short = 's', value_enum, default_value_t = SortArg::Downloads)]
        sort: SortArg,
        /// Only files marked stale
        #[arg(long)]
        stale: bool,
        /// Only keys containing this text (case-insensitive); `^text`: keys starting with it
        ///
        /// On PostgreSQL a substring search needs the trigram index that `migrate` builds when
        /// the pg_trgm extension is available; without it the text is a key prefix. Prefixes
        /// are byte for byte and always an index range.
        #[arg(long, short = 'f')]
        filter: Option<String>,
        #[arg(long, short = 'n', default_value_t = 50)]
        limit: i64,
        /// Rows to skip (walks them: prefer --after for later pages)
        #[arg(long, default_value_t = 0)]
        offset: i64,
        /// The page after this file id in the sort order: pass the last id of a page to get
        /// the next one, as fast on page 100,000 as on page 1
        #[arg(long, value_name = "ID", conflicts_with = "last")]
        after: Option<i64>,
        /// The last page of the order (read backwards from the end)
        #[arg(long)]
        last: bool,
    },
    /// One file: metadata, origin vs mirror, downloads per day
    ///
    /// Days in archived months are read from the month's Parquet archive on S3 (kept in a
    /// local cache) and marked "archive"; if the archive cannot be read, those days are
    /// missing and a note says which months.
    File {
        /// Mirrored file id or object key
        id: String,
        /// Also ask the origin and the mirror bucket what they hold now
        #[arg(long)]
        live: bool,
        /// Downloads per day over this much of the past, e.g. 30d, 180d, 12w
        #[arg(long, value_name = "D", default_value = "30d")]
        since: String,
    },
    /// The audit log of every action
    History {
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: i64,
    },
    /// A time-limited download URL for a mirrored file
    Presign {
        /// Mirrored file id or object key
        id: String,
        /// How long the URL works (e.g. 15m, 1h, 7d; at most 7d)
        #[arg(long, default_value = "1h")]
        expires: String,
    },
    /// Check mirrored files against the origin and the mirror bucket; mark stale and missing ones
    ///
    /// Each file's origin gets a HEAD (size, ETag), and so does its object in the mirror bucket,
    /// except with --all, where the bucket's listing answers for every object. A file whose
    /// origin or mirror object cannot be asked about is reported as origin_error or mirror_error
    /// with its error, nothing is marked for it, and the run goes on.
    ///
    /// --all walks the files in key byte order and writes the results 500 at a time, each batch
    /// with a checkpoint in the database (the last key written and the counts so far). When the
    /// run stops (killed, Ctrl-C, or the database or the bucket listing still failing after 4
    /// attempts at a page), --resume checks only the files after the checkpoint and reports the
    /// counts of the whole walk. A run that completes clears the checkpoint; a new --all starts
    /// over. For example: `mirrorctl --headless validate --all`, and after an interruption
    /// `mirrorctl --headless validate --resume`.
    ///
    /// Exit 0 when all are fresh; 3 when it finds newly stale or missing files or errors for
    /// some files; 1 when the run as a whole could not go on; 2 for bad flags, or --resume with
    /// nothing to resume.
    Validate {
        /// Every live file (default: files downloaded in the last policy.validate_recent_days days)
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Continue the latest `validate --all` that stopped, from its checkpoint (implies --all)
        #[arg(long, conflicts_with_all = ["ids", "recent_days"])]
        resume: bool,
        /// Only these mirrored file ids (space- or comma-separated)
        #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "ID")]
        ids: Vec<i64>,
        /// The recent window in days, instead of policy.validate_recent_days
        #[arg(long, value_name = "N", conflicts_with_all = ["all", "ids"])]
        recent_days: Option<u32>,
        /// Files checked at once
        #[arg(long, short = 'j', default_value_t = 32)]
        concurrency: usize,
    },
    /// Fetch files from the origin again and stream them into the mirror bucket
    Remirror {
        /// Mirrored file ids or object keys
        #[arg(
            value_name = "ID|KEY",
            required_unless_present = "all_stale",
            conflicts_with = "all_stale"
        )]
        targets: Vec<String>,
        /// Every file marked stale (validate marks missing objects stale too)
        #[arg(long)]
        all_stale: bool,
        /// Show what would be remirrored, touching nothing
        #[arg(long)]
        dry_run: bool,
        /// Confirm replacing the objects (required headless)
        #[arg(long, short = 'y')]
        yes: bool,
        /// Files transferred at once
        #[arg(long, short = 'j', default_value_t = crate::engine::ops::drift::DEFAULT_CONCURRENCY)]
        concurrency: usize,
    },
    /// Delete stale, unused, least-recently-used or named objects and soft-delete their rows
    ///
    /// Pick files with one of --stale, --unused-days N, --max-bytes SIZE, and narrow them (or
    /// pick them alone) by key with --prefix P and/or --match GLOB. With --max-bytes and a key
    /// scope the budget is for the files in scope: least recently used first until they fit.
    ///
    /// GLOB: `*` any run of characters, `/` included (keys are flat, as in `aws s3 --include`);
    /// `?` one character; `[a-z]`, `[!a-z]` one of / none of a set; `[*]`, `[?]`, `[[]` those
    /// characters literally. `%`, `_` and `\` are ordinary characters. Case-sensitive.
    ///
    /// Every run shows its price: the downloads of the candidates in the last --impact-days
    /// days that the mirror served (hits), which would have been misses fetched from the
    /// origin, their bytes, and the hit rate of that window now → without those hits
    /// (hit rate = hits / (hits + misses), errors and 304s excluded).
    #[command(
        group(clap::ArgGroup::new("selection").required(true).multiple(true).args(["stale", "unused_days", "max_bytes", "prefix", "pattern"])),
        group(clap::ArgGroup::new("target").args(["stale", "unused_days", "max_bytes"])),
        after_help = PURGE_EXAMPLES
    )]
    Purge {
        /// Files marked stale
        #[arg(long)]
        stale: bool,
        /// Files not downloaded for N days or more
        #[arg(long, value_name = "N")]
        unused_days: Option<u32>,
        /// Least recently used first until the live mirror (or the files in scope) fits in SIZE (e.g. 500GiB)
        #[arg(long, value_name = "SIZE")]
        max_bytes: Option<String>,
        /// Only keys starting with P (byte for byte; no wildcards)
        #[arg(long, value_name = "P")]
        prefix: Option<String>,
        /// Only keys matching GLOB (quote it for the shell)
        #[arg(long = "match", value_name = "GLOB")]
        pattern: Option<String>,
        /// Days of downloads the price is replayed over (0: skip it)
        #[arg(long, value_name = "N", default_value_t = crate::engine::ops::purge::DEFAULT_IMPACT_DAYS)]
        impact_days: u32,
        /// Show the candidates, count, bytes and price, touching nothing
        #[arg(long)]
        dry_run: bool,
        /// Allow deleting up to N objects (default policy.max_delete)
        #[arg(long, value_name = "N")]
        max_delete: Option<u64>,
        /// Confirm the deletion (required headless)
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Old months of download events to Parquet on S3, verified before they are dropped
    Archive {
        #[command(subcommand)]
        action: ArchiveAction,
    },
    /// Compare the main bucket, the backup bucket and the inventory; optionally repair
    ///
    /// Exit 3 when drift was found (after --repair: when something is still wrong), 0 when clean.
    Drift {
        /// Copy missing and different objects main → backup and fix the inventory
        #[arg(long)]
        repair: bool,
        /// With --repair: also delete objects only the backup has
        #[arg(long, requires = "repair")]
        delete_extra: bool,
        /// With --repair: show the plan, change nothing
        #[arg(long, requires = "repair")]
        dry_run: bool,
        /// Confirm the repair (required headless)
        #[arg(long, short = 'y')]
        yes: bool,
        /// Print one line per key in rclone's --combined form (= same, + only in main,
        /// - only in backup, * differ, ! error or unverifiable) instead of the report
        #[arg(long)]
        combined: bool,
        /// Hash both bodies of pairs that size, ETag and checksums cannot decide
        #[arg(long)]
        checksum: bool,
        /// Key ranges listed at once (each keeps a page of both buckets and of the inventory
        /// in memory; raise it for a distant endpoint, where round trips set the pace)
        #[arg(long, short = 'j', default_value_t = 4)]
        concurrency: usize,
        /// Only keys under this prefix
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// The catalog: what the mirror may serve (import, sync from the origin, list, show)
    ///
    /// A mirror serves the files its catalog lists: `catalog import` loads JSON Lines or CSV
    /// (remote_id and url required; source, file_name, size, etag, updated_at and key
    /// optional), `catalog sync` reads the origin's own listing or manifest. Catalog commands
    /// always run headless.
    Catalog {
        #[command(subcommand)]
        action: CatalogAction,
    },
    /// Mirror catalog entries before anyone asks for them (pre-warming)
    ///
    /// Fetches entries without a fresh copy in the mirror bucket from the origin and stores
    /// them as a miss would. Exit 1 when some failed. Headless it needs one of --unmirrored,
    /// --top or --ids; without --headless it opens the Catalog view with the prefetch ready to
    /// confirm (every unmirrored entry unless --top or --ids say otherwise).
    #[command(group(clap::ArgGroup::new("selection").args(["unmirrored", "top", "ids"])))]
    Prefetch {
        /// Every catalog entry without a fresh copy
        #[arg(long)]
        unmirrored: bool,
        /// The N most downloaded files of the --window that lack a fresh copy
        #[arg(long, value_name = "N")]
        top: Option<i64>,
        /// With --top: the window, e.g. 24h, 7d, 30d
        #[arg(long, short = 'w', default_value = "7d", requires = "top")]
        window: String,
        /// These catalog ids (space- or comma-separated; see `catalog list`)
        #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "ID")]
        ids: Vec<i64>,
        /// Files transferred at once
        #[arg(long, short = 'j', default_value_t = crate::engine::ops::drift::DEFAULT_CONCURRENCY)]
        concurrency: usize,
        /// Fetch at most this much (by the catalog's sizes), e.g. 20GiB
        #[arg(long, value_name = "SIZE")]
        max_bytes: Option<String>,
        /// Show what would be fetched, touching nothing
        #[arg(long)]
        dry_run: bool,
        /// Confirm fetching and writing the mirror (required headless)
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// The `serve` replicas on this database: status, version, heartbeat, load
    ///
    /// Each replica writes a heartbeat every 2 s: it is up while its last one is at most 6 s
    /// old, gone when older without a clean shutdown (crashed, killed, cut off from the
    /// database), stopped after a clean one. Exit 3 when a replica is gone.
    Fleet,
    /// Replication of the S3 front's writes to the backup bucket: status, retry, resync
    ///
    /// Without an action: the backlog (pending tasks and bytes), the lag (age of the oldest
    /// task not yet done), the drain rate over the last minute, an ETA, and failed tasks with
    /// their last error. Figures come from the task table itself. Exit 3 when a task failed.
    Replication {
        #[command(subcommand)]
        action: Option<ReplicationAction>,
    },
    /// Compare the mirror's figures with the [alerts] thresholds, as a monitoring plugin
    ///
    /// Checks the hit rate and error rate of the window, the storage cost per month (from
    /// [costs]), the age of the last successful `validate` and the replication lag against the
    /// thresholds the config's [alerts] sets: each key is the critical threshold and its
    /// `warn_` twin the warning one. Unset keys are not checked; with none set it prints "OK -
    /// no thresholds configured" and exits 0. Always headless.
    ///
    /// Output (Nagios/Icinga plugin format): a first line `OK - …`, `WARNING - …` or
    /// `CRITICAL - …` naming what is past its threshold, with performance data after `|`; then
    /// one line per check and the [costs] estimates. `-o json` prints the same as one document.
    ///
    /// Exit codes (the plugin convention, not the other commands'): 0 OK, 1 WARNING,
    /// 2 CRITICAL, 3 UNKNOWN — check could not run (bad flag, bad config, unreachable
    /// database); it then prints `UNKNOWN - <reason>` (JSON: {"status": "unknown", "error": …}).
    /// A usage or config error never exits 2 here, so 2 always means critical.
    ///
    /// Examples:
    ///   mirrorctl --headless check
    ///   mirrorctl --headless check --window 7d -o json
    ///   command_line  /usr/bin/mirrorctl --config /etc/mirrorctl.toml check   (Nagios)
    #[command(verbatim_doc_comment)]
    Check {
        /// Time window of the rates and savings: 24h, 7d, 30d or all
        #[arg(long, short = 'w', default_value = "24h")]
        window: String,
    },
    /// The mutation lock: who holds it, and releasing one whose holder is gone
    ///
    /// Mutating operations (purge, remirror, archive, drift --repair, …) take one lock per
    /// database. Its holder renews a lease every database.lock_lease / 6 (10 s by default); a
    /// holder that stops renewing (crashed, killed) is gone once the lease ends (60 s), and the
    /// next mutating operation takes the lock over. Always headless (no TUI view).
    ///
    /// Examples:
    ///   mirrorctl lock status                 who holds it, since when, last heartbeat
    ///   mirrorctl lock status -o json         the same for scripts (`.held`, `.holder`)
    ///   mirrorctl lock release                remove a lock whose holder is gone
    ///   mirrorctl lock release --force        take it from a live holder (PostgreSQL:
    ///                                         terminates its session)
    #[command(verbatim_doc_comment)]
    Lock {
        #[command(subcommand)]
        action: LockAction,
    },
    /// Check the config, the database, every bucket and the origin; say what to fix
    ///
    /// One line per check: ✓ passed, ! needs attention, ✗ failed (with what to do next), -
    /// skipped. Checks: the config file (which one, parse, validation; when it does not load
    /// nothing else runs), the database (reachable, schema version, pending migrations, who
    /// holds the mutation lock), each configured bucket (HeadBucket and a one-key listing,
    /// incomplete multipart uploads older than 7 days; with --write a PUT/GET/DELETE of a small
    /// object under .mirrorctl-doctor/), and the origin (HEAD of one catalog entry). Each
    /// check gives up after a few seconds. Doctor runs whatever state the database is in and
    /// changes nothing without --write. Always headless.
    ///
    /// Exit codes: 0 every check passed; 3 something needs attention (pending migrations,
    /// orphaned uploads, a lock left by a process that is gone); 1 a check failed (unreachable,
    /// credentials or region rejected, missing bucket); 2 the config file did not load.
    ///
    /// Examples:
    ///   mirrorctl doctor                       read-only checks
    ///   mirrorctl doctor --write -o json       also prove each bucket is writable, as JSON
    #[command(verbatim_doc_comment)]
    Doctor {
        /// Also PUT, read back and DELETE a small object in every bucket
        #[arg(long)]
        write: bool,
    },
    /// Incomplete multipart uploads in the configured buckets: list them, abort old ones
    ///
    /// An upload that was started and never completed or aborted keeps its parts (and their
    /// cost) until a lifecycle rule or an abort removes them. Covers the mirror, main, backup
    /// and archive buckets (each distinct bucket once). Always headless. Needs an S3 server
    /// that implements ListMultipartUploads.
    ///
    /// Examples:
    ///   mirrorctl uploads list --older-than 7d
    ///   mirrorctl uploads abort --older-than 7d --dry-run
    ///   mirrorctl uploads abort --older-than 7d --bucket backup --yes
    #[command(verbatim_doc_comment)]
    Uploads {
        #[command(subcommand)]
        action: UploadsAction,
    },
    /// Apply the database schema migrations
    ///
    /// Each step is timed. On PostgreSQL, index builds run CONCURRENTLY (writers keep writing;
    /// an interrupted build is cleaned up and redone by the next run) and, where the pg_trgm
    /// extension is available, a trigram index makes substring `--filter` an index search.
    Migrate {
        /// Print the pending steps without applying anything
        #[arg(long)]
        dry_run: bool,
    },
    /// Run the data plane: the download proxy that fills the mirror and records every download
    ///
    /// GET /download/{file_id} and GET /files/{key} serve a fresh mirror copy (a hit) or stream
    /// the origin to the client while uploading to the mirror (a miss; concurrent misses of one
    /// file share one origin fetch). A catalog entry not mirrored yet is a miss that stores its
    /// first copy; with origin.base_url set (serve.pull_through), a key the catalog does not
    /// know is fetched from base_url + key and registered, and an origin 404 is remembered for
    /// serve.negative_ttl. Also GET /metrics (Prometheus), /healthz and /readyz.
    /// serve.admin_listen adds the admin API (PUT /catalog/{source}/{remote_id}, POST /catalog,
    /// bearer serve.admin_token) on its own address. serve.s3_listen adds the S3 front: apps
    /// write the main bucket through it with keys from [[s3_front.clients]], every write is
    /// recorded in the inventory, and replication workers copy it to [buckets.backup].
    /// Scheduled validate/purge/archive/catalog-sync workers run when [serve] sets their
    /// intervals. Stops on Ctrl-C or SIGTERM after in-flight downloads and uploads finish.
    Serve {
        /// Address to listen on (default: serve.listen, 127.0.0.1:8080)
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Threads that serve download connections, each connection wholly on one of them,
        /// and threads for the rest (S3 front, replication, uploads). Default: one per core
        /// for the rest and one per core but one (at least one) for connections. Each hit is
        /// mostly socket work; on a host shared with a busy S3 server, fewer threads spend
        /// less CPU per request (see BENCHMARKS.md)
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
        threads: Option<u16>,
    },
    /// The embedded demo environment
    Demo {
        #[command(subcommand)]
        action: DemoAction,
    },
    /// Print a shell completion script
    ///
    /// bash:  mirrorctl completions bash > ~/.local/share/bash-completion/completions/mirrorctl
    /// zsh:   mirrorctl completions zsh > "${fpath[1]}/_mirrorctl"
    /// fish:  mirrorctl completions fish > ~/.config/fish/completions/mirrorctl.fish
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or write one page per command into a directory
    ///
    /// mirrorctl man > mirrorctl.1 && man ./mirrorctl.1
    /// mirrorctl man --dir /usr/local/share/man/man1   (mirrorctl.1, mirrorctl-stats.1, ...)
    Man {
        /// Write mirrorctl.1 and a mirrorctl-COMMAND.1 page per command here
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ArchiveAction {
    /// Every month with events or an archive: rows, bytes, state and where the archive is
    ///
    /// On PostgreSQL the rows of months in the database are the catalog's estimate (marked ~,
    /// `rows_estimated` in JSON), which costs nothing at any size; --exact counts them.
    /// Archived months show the count recorded when they were archived.
    List {
        /// Count the rows of every month in the database (scans every partition)
        #[arg(long)]
        exact: bool,
    },
    /// Export eligible months to Parquet, upload, read back and verify, then drop them
    ///
    /// A month is eligible when it ended more than N months ago (policy.archive_after_months);
    /// the current month never is.
    Run {
        /// Archive months that ended more than N months ago (default policy.archive_after_months)
        #[arg(long, value_name = "N")]
        older_than_months: Option<u32>,
        /// Only this partition, e.g. download_events_y2026m07
        #[arg(long, value_name = "P")]
        partition: Option<String>,
        /// Show what would be archived, touching nothing
        #[arg(long)]
        dry_run: bool,
        /// Confirm dropping the archived months from the database (required headless)
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Re-read an archive and check checksums and row counts (exit 3 on a mismatch)
    Verify {
        /// Partition name, e.g. download_events_y2026m07
        partition: String,
    },
    /// Load an archived month back into the database
    Restore {
        /// Partition name, e.g. download_events_y2026m07
        partition: String,
    },
    /// Time the read-back of an archived month: download, Parquet footers, row count
    ///
    /// Reads the newest archived month (or --partition P) from S3 as a retrieval would, and
    /// checks its checksums and that its row count matches the recorded one.
    ///
    /// Exit codes: 0 healthy; 3 slower than the threshold, or the archive does not match its
    /// record; 1 the archive bucket could not be reached; 2 no month is archived yet (or P has
    /// no archive), or a bad flag.
    Health {
        /// Read back this partition, e.g. download_events_y2026m07 (default: the newest archived)
        #[arg(long, value_name = "P")]
        partition: Option<String>,
        /// Fail above this duration (default policy.archive_health_threshold, 30s)
        #[arg(long, value_name = "D")]
        threshold: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CatalogFormat {
    Jsonl,
    Csv,
}

#[derive(Debug, Subcommand)]
pub enum CatalogAction {
    /// Upsert entries from a JSON Lines or CSV file (`-`: standard input)
    ///
    /// Entries are matched by (source, remote_id). A changed size or ETag marks the mirrored
    /// copy stale (origin_changed). Malformed lines are skipped and named (exit 3), or with
    /// --strict reject the whole import. A bad file (not UTF-8, a line over 1 MiB, empty, a
    /// CSV without its header) changes nothing (exit 2).
    ///
    /// Example line: {"remote_id": "1234", "url": "pkgs/f1.bin", "size": 1048576, "etag": "abc"}
    Import {
        /// The file, or - for standard input
        #[arg(value_name = "FILE|-")]
        file: String,
        /// The format (default: from the extension; standard input is JSON Lines)
        #[arg(long, value_enum)]
        format: Option<CatalogFormat>,
        /// Soft-delete entries of the imported sources that the file does not list
        #[arg(long)]
        prune: bool,
        /// Reject the whole import at the first malformed line
        #[arg(long)]
        strict: bool,
        /// Report what would change, changing nothing
        #[arg(long)]
        dry_run: bool,
        /// With --prune: allow soft-deleting up to N entries (default policy.max_delete)
        #[arg(long, value_name = "N")]
        max_delete: Option<u64>,
        /// With --prune: confirm (required)
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Read the catalog from the origin: an S3 origin's listing, or origin.catalog_url
    Sync {
        /// Soft-delete entries the origin no longer lists
        #[arg(long)]
        prune: bool,
        /// Report what would change, changing nothing
        #[arg(long)]
        dry_run: bool,
        /// With --prune: allow soft-deleting up to N entries (default policy.max_delete)
        #[arg(long, value_name = "N")]
        max_delete: Option<u64>,
        /// With --prune: confirm (required)
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Catalog entries with the state of their mirrored copy
    List {
        /// Only entries without a fresh mirrored copy
        #[arg(long)]
        unmirrored: bool,
        /// Only keys containing this text (case-insensitive)
        #[arg(long, short = 'f')]
        filter: Option<String>,
        #[arg(long, short = 'n', default_value_t = 50)]
        limit: i64,
        /// Entries with ids above this one (paging)
        #[arg(long, default_value_t = 0, value_name = "ID")]
        after: i64,
    },
    /// One catalog entry by id or SOURCE/REMOTE_ID
    Show {
        #[arg(value_name = "ID|SOURCE/REMOTE_ID")]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReplicationAction {
    /// The backlog, lag, drain rate, ETA and failed tasks (the default)
    Status,
    /// Put failed tasks (or the given ones) back in the queue, due now, attempts reset
    #[command(group(clap::ArgGroup::new("which").args(["failed", "ids"]).required(true)))]
    Retry {
        /// Every task that used up its attempts
        #[arg(long)]
        failed: bool,
        /// These task ids (space- or comma-separated; see `replication status -o json`)
        #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "ID")]
        ids: Vec<i64>,
        /// Show which tasks would be requeued, change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Run a drift check and queue a copy of every key missing in (or different from) the backup
    Resync {
        /// Show what would be queued, change nothing
        #[arg(long)]
        dry_run: bool,
        /// Confirm queueing the copies (required unless --dry-run)
        #[arg(long, short = 'y')]
        yes: bool,
        /// Key ranges the drift check lists at once
        #[arg(long, short = 'j', default_value_t = crate::engine::ops::drift::DEFAULT_CONCURRENCY)]
        concurrency: usize,
    },
}

/// A configured bucket by its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BucketArg {
    Mirror,
    Main,
    Backup,
    Archive,
}

#[derive(Debug, Subcommand)]
pub enum UploadsAction {
    /// Bucket, key, upload id, start time and age of each incomplete upload, oldest first
    List {
        /// Only uploads started at least this long ago (e.g. 7d, 36h)
        #[arg(long, value_name = "D")]
        older_than: Option<String>,
        /// Only this bucket
        #[arg(long, value_enum)]
        bucket: Option<BucketArg>,
    },
    /// Abort the incomplete uploads started at least D ago (never a younger one)
    ///
    /// Each upload's start time is read again right before it is aborted. Audited and under
    /// the mutation lock; refused with --read-only. Exit 1 when some aborts failed.
    Abort {
        /// Only uploads started at least this long ago (e.g. 7d)
        #[arg(long, value_name = "D", required = true)]
        older_than: String,
        /// Only this bucket
        #[arg(long, value_enum)]
        bucket: Option<BucketArg>,
        /// Show the count and the uploads, abort nothing
        #[arg(long)]
        dry_run: bool,
        /// Confirm aborting (required headless)
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum LockAction {
    /// Who holds the lock: operation, operator, process, start, last heartbeat, lease end,
    /// whether the holder looks alive (and on PostgreSQL the session holding it)
    Status,
    /// Release a lock whose holder is gone; a live holder's only with --force
    ///
    /// Needs no --yes: releasing a lock whose holder is gone loses nothing, and --force is the
    /// confirmation for taking it from a live one. Refused in read-only mode. Written to the
    /// audit log (`lock_release`).
    Release {
        /// Release it even though the holder looks alive. SQLite: the holder notices at its
        /// next heartbeat and stops after the work under way. PostgreSQL: its session is
        /// terminated (pg_terminate_backend)
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DemoAction {
    /// Serve the demo's S3 endpoint and origin in the foreground (prints export lines first)
    Up {
        /// Port of the S3 endpoint (0: any free port)
        #[arg(long, default_value_t = 0)]
        s3_port: u16,
        /// Port of the HTTP origin (0: any free port)
        #[arg(long, default_value_t = 0)]
        origin_port: u16,
    },
    /// Delete the demo data and generate it again
    Reset,
    /// Print where the demo lives and its credentials
    Env,
}

impl Command {
    /// The name shown in messages and used to pick a TUI view.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Stats { .. } => "stats",
            Command::Files { .. } => "files",
            Command::File { .. } => "file",
            Command::History { .. } => "history",
            Command::Presign { .. } => "presign",
            Command::Validate { .. } => "validate",
            Command::Remirror { .. } => "remirror",
            Command::Purge { .. } => "purge",
            Command::Archive { .. } => "archive",
            Command::Drift { .. } => "drift",
            Command::Fleet => "fleet",
            Command::Replication { .. } => "replication",
            Command::Check { .. } => "check",
            Command::Lock { .. } => "lock",
            Command::Doctor { .. } => "doctor",
            Command::Uploads { .. } => "uploads",
            Command::Migrate { .. } => "migrate",
            Command::Catalog { .. } => "catalog",
            Command::Prefetch { .. } => "prefetch",
            Command::Serve { .. } => "serve",
            Command::Demo { .. } => "demo",
            Command::Completions { .. } => "completions",
            Command::Man { .. } => "man",
        }
    }
}
