//! `--filter` on keys: a prefix (an index range) or a substring (the trigram index on
//! PostgreSQL, a scan of a single host's file on SQLite), and which words of a substring drive
//! the trigram index.
//!
//! A trigram index answers `LIKE '%text%'` by intersecting the posting lists of every trigram
//! of the text. Keys of one mirror share most of their words (`mods/`, `file-`, `.zip`), and
//! the lists of those trigrams hold nearly every row: reading them costs more than the rare
//! words save (`file-7654321` read 12,619 index pages at 10M keys, `7654321` alone 303). So the
//! words of the text are weighed against a sample of the keys (the column's histogram, which
//! `ANALYZE` keeps anyway); when some are rare and others common, only the rare ones go
//! through the index and each row it finds is checked against the whole text.

use sqlx::QueryBuilder;

use super::{Backend, Db, Pool};
use crate::engine::error::Result;

/// A word found in at most this share of the sampled keys drives the index.
const RARE_SHARE: f64 = 0.05;
/// Fewer sampled keys than this tell nothing: the whole text goes through the index.
const MIN_SAMPLE: usize = 20;
/// Shorter words give the index no trigram of their own.
const MIN_WORD: usize = 3;

/// What the database offers a key filter, looked up once per process.
#[derive(Debug, Clone, Default)]
pub(super) struct KeyIndex {
    /// Whether a substring filter has an index: always on SQLite (files of a single host), on
    /// PostgreSQL when `migrate` could build the trigram index.
    pub substring: bool,
    /// Lower-cased keys sampled by `ANALYZE` (PostgreSQL), to weigh a substring's words.
    pub sample: Vec<String>,
}

/// How `--filter` matches keys on this database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum KeyMatch {
    /// Keys containing `text`, case-insensitive (SQLite; PostgreSQL with the trigram index).
    /// When `drivers` is not empty only they go through the index, and `text` is checked on
    /// the rows they find.
    Contains { text: String, drivers: Vec<String> },
    /// Keys starting with the text, byte for byte: an index range.
    Prefix(String),
}

/// `^text` is a prefix everywhere; other text is a substring where an index (or a small
/// SQLite file) serves it, else a prefix.
pub(super) fn key_match(filter: &str, index: &KeyIndex) -> KeyMatch {
    match filter.strip_prefix('^') {
        Some(p) => KeyMatch::Prefix(p.to_string()),
        None if index.substring => KeyMatch::Contains {
            text: filter.to_string(),
            drivers: drivers(&filter.to_lowercase(), &index.sample),
        },
        None => KeyMatch::Prefix(filter.to_string()),
    }
}

/// The words of `text` (as the trigram index splits it: runs of letters and digits) that are
/// rare in `sample`, when the text also has common ones; else none (the whole text is used).
fn drivers(text: &str, sample: &[String]) -> Vec<String> {
    if sample.len() < MIN_SAMPLE {
        return Vec::new();
    }
    let mut rare = Vec::new();
    let mut common = false;
    for w in text.split(|c: char| !c.is_alphanumeric()) {
        if w.chars().count() < MIN_WORD || rare.iter().any(|r| r == w) {
            continue;
        }
        let seen = sample.iter().filter(|k| k.contains(w)).count();
        if seen as f64 <= RARE_SHARE * sample.len() as f64 {
            rare.push(w.to_string());
        } else {
            common = true;
        }
    }
    if common {
        rare
    } else {
        Vec::new()
    }
}

/// The first string after every string that starts with `p` (in byte order).
pub(super) fn prefix_end(p: &str) -> String {
    format!("{p}{}", char::MAX)
}

/// The key column as the name index has it: byte order on PostgreSQL (`COLLATE "C"`), which
/// is SQLite's own.
pub(super) fn key_column(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "(key COLLATE \"C\")",
        Backend::Sqlite => "key",
    }
}

/// Adds the filter's conditions.
pub(super) fn push_filter<'a, DB: sqlx::Database>(
    qb: &mut QueryBuilder<'a, DB>,
    m: &KeyMatch,
    backend: Backend,
) where
    String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    match m {
        KeyMatch::Contains { text, drivers } if drivers.is_empty() => {
            qb.push(" AND lower(key) LIKE ")
                .push_bind(contains_pattern(text))
                .push(" ESCAPE '\\'");
        }
        KeyMatch::Contains { text, drivers } => {
            for d in drivers {
                qb.push(" AND lower(key) LIKE ")
                    .push_bind(contains_pattern(d))
                    .push(" ESCAPE '\\'");
            }
            // Not an indexed expression: checked on the rows the drivers find.
            let find = match backend {
                Backend::Postgres => " AND strpos(lower(key), ",
                Backend::Sqlite => " AND instr(lower(key), ",
            };
            qb.push(find).push_bind(text.to_lowercase()).push(") > 0");
        }
        KeyMatch::Prefix(p) if !p.is_empty() => {
            let name = key_column(backend);
            qb.push(" AND ")
                .push(name)
                .push(" >= ")
                .push_bind(p.clone());
            qb.push(" AND ")
                .push(name)
                .push(" < ")
                .push_bind(prefix_end(p));
        }
        KeyMatch::Prefix(_) => {}
    }
}

/// A LIKE pattern matching `s` anywhere, with LIKE's wildcards in `s` taken literally.
pub(super) fn contains_pattern(s: &str) -> String {
    let mut p = String::with_capacity(s.len() + 2);
    p.push('%');
    for c in s.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

impl Db {
    /// What this database offers a key filter (looked up on first use).
    pub(super) async fn key_index(&self) -> Result<&KeyIndex> {
        if let Some(k) = self.key_index.get() {
            return Ok(k);
        }
        let k = match &self.pool {
            Pool::Sqlite(_) => KeyIndex {
                substring: true,
                sample: Vec::new(),
            },
            Pool::Postgres(p) => {
                let substring = super::migrate::index_valid(p, super::migrate::TRIGRAM_INDEX)
                    .await
                    .map_err(|e| self.err(e))?
                    == Some(true);
                let sample = if substring {
                    sqlx::query_scalar::<_, String>(
                        "SELECT lower(k) FROM pg_stats s, \
                         unnest(CAST(CAST(s.histogram_bounds AS text) AS text[])) AS k \
                         WHERE s.schemaname = current_schema() \
                         AND s.tablename = 'mirrored_files' AND s.attname = 'key'",
                    )
                    .fetch_all(p)
                    .await
                    .map_err(|e| self.err(e))?
                } else {
                    Vec::new()
                };
                KeyIndex { substring, sample }
            }
        };
        Ok(self.key_index.get_or_init(|| k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(sample: &[&str]) -> KeyIndex {
        KeyIndex {
            substring: true,
            sample: sample.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn like_wildcards_are_literal() {
        assert_eq!(contains_pattern("a_b%C"), "%a\\_b\\%c%");
    }

    #[test]
    fn a_caret_asks_for_a_prefix_and_no_index_means_a_prefix() {
        let contains = |t: &str| KeyMatch::Contains {
            text: t.into(),
            drivers: vec![],
        };
        assert_eq!(
            key_match("^mods/1", &index(&[])),
            KeyMatch::Prefix("mods/1".into())
        );
        assert_eq!(key_match("mods", &index(&[])), contains("mods"));
        let none = KeyIndex::default();
        assert_eq!(key_match("mods", &none), KeyMatch::Prefix("mods".into()));
        assert!(prefix_end("ab").as_str() > "ab\u{10fffe}");
        assert!(prefix_end("ab").as_str() < "ac");
    }

    #[test]
    fn rare_words_drive_the_index_when_common_ones_would_read_every_row() {
        let keys: Vec<String> = (0..100)
            .map(|i| format!("mods/{i}/{}/file-{}.zip", i * 7, i * 7))
            .collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let idx = index(&keys);
        let m = key_match("File-7654321", &idx);
        assert_eq!(
            m,
            KeyMatch::Contains {
                text: "File-7654321".into(),
                drivers: vec!["7654321".into()],
            }
        );
        // Only rare words, or only common ones: the whole text goes through the index.
        assert_eq!(drivers("7654321-999999", &idx.sample), Vec::<String>::new());
        assert_eq!(drivers("file.zip", &idx.sample), Vec::<String>::new());
        // Too small a sample tells nothing.
        assert_eq!(
            drivers("file-7654321", &idx.sample[..10]),
            Vec::<String>::new()
        );
        // Short words have no trigram of their own; repeated words count once.
        assert_eq!(
            drivers("file-77-1234567-1234567", &idx.sample),
            vec!["1234567".to_string()]
        );
    }
}
