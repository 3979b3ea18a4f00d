//! Reading catalog files: JSON Lines or CSV, streamed in batches. A malformed line is named
//! (line number and field) and skipped; a file that cannot be read as a whole (not UTF-8, a
//! line over `MAX_LINE`, empty, a CSV without its header) is a fatal error.

use std::collections::HashMap;
use std::io::{self, BufRead, Read};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::engine::db::CatalogEntry;
use crate::engine::keys;

/// The longest line (or CSV record) accepted.
pub const MAX_LINE: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Jsonl,
    Csv,
}

impl Format {
    /// From a file name: `.csv` is CSV, `.jsonl`, `.ndjson` and `.json` are JSON Lines.
    pub fn from_path(path: &str) -> Option<Format> {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".csv") {
            Some(Format::Csv)
        } else if [".jsonl", ".ndjson", ".json"]
            .iter()
            .any(|ext| lower.ends_with(ext))
        {
            Some(Format::Jsonl)
        } else {
            None
        }
    }
}

/// A line that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LineError {
    pub line: u64,
    /// The field at fault, when one is.
    pub field: Option<String>,
    pub message: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "line {}: field `{field}`: {}", self.line, self.message),
            None => write!(f, "line {}: {}", self.line, self.message),
        }
    }
}

/// The next part of a file: entries deduplicated within the batch (the last line wins).
#[derive(Debug, Default)]
pub struct Batch {
    pub entries: Vec<(u64, CatalogEntry)>,
    pub bad: Vec<LineError>,
    /// Lines replaced by a later line of the same batch.
    pub duplicates: u64,
    /// Lines read (entries, bad and blank).
    pub lines: u64,
    pub end: bool,
}

/// What every entry of a file falls back to: `origin.base_url`, for the keys of URLs under it.
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    pub base_url: Option<url::Url>,
}

/// A streaming reader of catalog entries.
pub struct CatalogReader {
    inner: Inner,
    defaults: Defaults,
    seen_entry: bool,
}

enum Inner {
    Jsonl {
        input: io::BufReader<LineGuard<Box<dyn Read + Send>>>,
        line: u64,
        buf: Vec<u8>,
    },
    Csv {
        reader: csv::Reader<LineGuard<Box<dyn Read + Send>>>,
        header: Vec<String>,
        record: csv::ByteRecord,
    },
}

impl CatalogReader {
    /// Opens `input`; for CSV reads and checks the header. Errors are fatal (the whole file).
    pub fn new(
        input: Box<dyn Read + Send>,
        format: Format,
        defaults: Defaults,
    ) -> Result<CatalogReader, String> {
        let input = LineGuard::new(input);
        let inner = match format {
            Format::Jsonl => Inner::Jsonl {
                input: io::BufReader::with_capacity(64 * 1024, input),
                line: 0,
                buf: Vec::new(),
            },
            Format::Csv => {
                let mut reader = csv::ReaderBuilder::new()
                    .has_headers(false)
                    .flexible(true)
                    .from_reader(input);
                let mut first = csv::ByteRecord::new();
                let got = reader.read_byte_record(&mut first).map_err(csv_fatal)?;
                if !got {
                    return Err("the file is empty".into());
                }
                let header: Vec<String> = first
                    .iter()
                    .map(|f| {
                        std::str::from_utf8(f)
                            .map(|s| s.trim().trim_start_matches('\u{feff}').to_string())
                            .map_err(|_| "line 1: not UTF-8".to_string())
                    })
                    .collect::<Result<_, _>>()?;
                for required in ["remote_id", "url"] {
                    if !header.iter().any(|h| h == required) {
                        // Line 1 is not echoed: without a header it is an entry, whose URL
                        // may carry credentials.
                        return Err(format!(
                            "the CSV has no header row naming the columns remote_id and url \
                             (line 1 has {} fields, none named {required})",
                            header.len()
                        ));
                    }
                }
                Inner::Csv {
                    reader,
                    header,
                    record: csv::ByteRecord::new(),
                }
            }
        };
        Ok(CatalogReader {
            inner,
            defaults,
            seen_entry: false,
        })
    }

    /// Reads up to `max` lines. A fatal error (not UTF-8, a line over `MAX_LINE`, an I/O
    /// failure, an empty file) ends the import.
    pub fn next_batch(&mut self, max: usize) -> Result<Batch, String> {
        let mut batch = Batch::default();
        let mut index: HashMap<(String, String), usize> = HashMap::new();
        while batch.lines < max as u64 {
            let Some((line, fields)) = self.next_record()? else {
                batch.end = true;
                break;
            };
            batch.lines += 1;
            let Some(fields) = fields else { continue };
            self.seen_entry = true;
            match fields
                .and_then(|f| entry(&f, &self.defaults).map_err(|(field, m)| (Some(field), m)))
            {
                Ok(e) => {
                    let id = (e.source.clone(), e.remote_id.clone());
                    match index.get(&id) {
                        Some(&i) => {
                            batch.entries[i] = (line, e);
                            batch.duplicates += 1;
                        }
                        None => {
                            index.insert(id, batch.entries.len());
                            batch.entries.push((line, e));
                        }
                    }
                }
                Err((field, message)) => batch.bad.push(LineError {
                    line,
                    field,
                    message,
                }),
            }
        }
        if batch.end && !self.seen_entry {
            return Err(match self.inner {
                Inner::Csv { .. } => "the file has a header but no entries".into(),
                Inner::Jsonl { .. } => "the file is empty".into(),
            });
        }
        Ok(batch)
    }

    /// The next record: `None` at the end; `Some((line, None))` for a blank line; the fields,
    /// or why the line is not a record.
    #[allow(clippy::type_complexity)]
    fn next_record(
        &mut self,
    ) -> Result<
        Option<(
            u64,
            Option<Result<Map<String, Value>, (Option<String>, String)>>,
        )>,
        String,
    > {
        match &mut self.inner {
            Inner::Jsonl { input, line, buf } => {
                buf.clear();
                let n = input
                    .read_until(b'\n', buf)
                    .map_err(|e| read_fatal(*line + 1, e))?;
                if n == 0 {
                    return Ok(None);
                }
                *line += 1;
                let text = std::str::from_utf8(buf).map_err(|e| {
                    format!(
                        "line {line}: not UTF-8 (byte {} of the line)",
                        e.valid_up_to() + 1
                    )
                })?;
                let text = text.trim().trim_start_matches('\u{feff}');
                if text.is_empty() {
                    return Ok(Some((*line, None)));
                }
                let fields = match serde_json::from_str::<Value>(text) {
                    Ok(Value::Object(m)) => Ok(m),
                    Ok(_) => Err((None, "not a JSON object".to_string())),
                    Err(e) => Err((None, format!("not JSON: {e}"))),
                };
                Ok(Some((*line, Some(fields))))
            }
            Inner::Csv {
                reader,
                header,
                record,
            } => {
                let got = reader.read_byte_record(record).map_err(csv_fatal)?;
                if !got {
                    return Ok(None);
                }
                let line = record.position().map_or(0, |p| p.line());
                if record.iter().all(|f| f.iter().all(u8::is_ascii_whitespace)) {
                    return Ok(Some((line, None)));
                }
                if record.len() != header.len() {
                    let why = format!("{} fields, the header has {}", record.len(), header.len());
                    return Ok(Some((line, Some(Err((None, why))))));
                }
                let mut m = Map::new();
                for (name, raw) in header.iter().zip(record.iter()) {
                    let v = std::str::from_utf8(raw)
                        .map_err(|_| format!("line {line}: field `{name}`: not UTF-8"))?
                        .trim();
                    if !v.is_empty() {
                        m.insert(name.clone(), Value::String(v.to_string()));
                    }
                }
                Ok(Some((line, Some(Ok(m)))))
            }
        }
    }
}

fn csv_fatal(e: csv::Error) -> String {
    let line = e.position().map(|p| p.line());
    let msg = match e.into_kind() {
        csv::ErrorKind::Io(io) => io.to_string(),
        other => format!("{other:?}"),
    };
    match line {
        Some(l) => format!("line {l}: {msg}"),
        None => msg,
    }
}

fn read_fatal(line: u64, e: io::Error) -> String {
    if e.kind() == io::ErrorKind::InvalidData {
        format!("line {line}: {e}")
    } else {
        format!("reading line {line}: {e}")
    }
}

type FieldError = (String, String);

/// Validates one record into an entry; the error names the field.
pub fn entry(m: &Map<String, Value>, d: &Defaults) -> Result<CatalogEntry, FieldError> {
    let bad = |field: &str, msg: String| (field.to_string(), msg);
    let text = |field: &str| -> Result<Option<String>, FieldError> {
        match m.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
            Some(Value::Number(n)) if field == "remote_id" => Ok(Some(n.to_string())),
            Some(other) => Err(bad(field, format!("expected a string, got {other}"))),
        }
    };
    let remote_id = text("remote_id")?.ok_or_else(|| bad("remote_id", "missing".into()))?;
    if remote_id.len() > 512 || remote_id.chars().any(char::is_control) {
        return Err(bad(
            "remote_id",
            "must be at most 512 bytes without control characters".into(),
        ));
    }
    let url = text("url")?.ok_or_else(|| bad("url", "missing".into()))?;
    check_url(&url).map_err(|m| bad("url", m))?;
    let source = match text("source")? {
        Some(s) => s,
        None => "http".into(),
    };
    if source.len() > 64
        || !source
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(bad(
            "source",
            format!("{source:?}: letters, digits, '.', '_' and '-' only (at most 64)"),
        ));
    }
    let size = match m.get("size") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_i64()
                .filter(|n| *n >= 0)
                .ok_or_else(|| bad("size", format!("expected a byte count, got {n}")))?,
        ),
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(
            s.trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| bad("size", format!("expected a byte count, got {s:?}")))?,
        ),
        Some(other) => return Err(bad("size", format!("expected a byte count, got {other}"))),
    };
    let etag = text("etag")?.map(|e| e.trim_start_matches("W/").trim_matches('"').to_string());
    let updated_at = match text("updated_at")? {
        None => None,
        Some(s) => Some(
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    bad(
                        "updated_at",
                        format!("{s:?} is not an RFC 3339 time ({e}), e.g. 2026-11-30T12:00:00Z"),
                    )
                })?,
        ),
    };
    let file_name = text("file_name")?;
    let key = match text("key")? {
        Some(k) => {
            keys::check_key(&k).map_err(|m| bad("key", m))?;
            k
        }
        None => {
            let k = keys::derive_key(
                &source,
                &remote_id,
                &url,
                file_name.as_deref(),
                d.base_url.as_ref(),
            );
            keys::check_key(&k).map_err(|m| bad("url", format!("gives the key {k:?}: {m}")))?;
            k
        }
    };
    let file_name = file_name.unwrap_or_else(|| keys::last_segment(&key));
    Ok(CatalogEntry {
        source,
        remote_id,
        url,
        file_name,
        size,
        etag,
        updated_at,
        key,
    })
}

/// A URL an origin can be asked for: absolute http(s)/s3, or a path relative to
/// `origin.base_url`.
fn check_url(url: &str) -> Result<(), String> {
    if url.len() > 4096 {
        return Err("longer than 4096 bytes".into());
    }
    if url.chars().any(|c| c.is_control() || c == ' ') {
        return Err("contains spaces or control characters".into());
    }
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https" | "s3") => Ok(()),
        Ok(u) => Err(format!(
            "unsupported scheme {:?} (http, https or s3, or a path relative to origin.base_url)",
            u.scheme()
        )),
        Err(url::ParseError::RelativeUrlWithoutBase) => Ok(()),
        Err(e) => Err(format!("not a URL: {e}")),
    }
}

/// Fails a read once a line (bytes between newlines) grows past `MAX_LINE`, so one huge line
/// cannot take memory, whichever parser reads.
pub struct LineGuard<R> {
    inner: R,
    since_newline: usize,
    line: u64,
}

impl<R> LineGuard<R> {
    pub fn new(inner: R) -> Self {
        LineGuard {
            inner,
            since_newline: 0,
            line: 1,
        }
    }
}

impl<R: Read> Read for LineGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            if b == b'\n' {
                self.since_newline = 0;
                self.line += 1;
            } else {
                self.since_newline += 1;
                if self.since_newline > MAX_LINE {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "line {} is longer than {} MiB",
                            self.line,
                            MAX_LINE / (1024 * 1024)
                        ),
                    ));
                }
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(text: &str, format: Format) -> Result<Vec<Batch>, String> {
        let mut r = CatalogReader::new(
            Box::new(io::Cursor::new(text.as_bytes().to_vec())),
            format,
            Defaults::default(),
        )?;
        let mut out = Vec::new();
        loop {
            let b = r.next_batch(2)?;
            let end = b.end;
            out.push(b);
            if end {
                return Ok(out);
            }
        }
    }

    #[test]
    fn jsonl_entries_errors_and_duplicates() {
        let text = "{\"remote_id\":\"1\",\"url\":\"pkgs/a.bin\",\"size\":3}\n\
                    {\"remote_id\":2,\"url\":\"pkgs/b.bin\",\"size\":\"x\"}\n\
                    \n\
                    {\"remote_id\":\"1\",\"url\":\"pkgs/a2.bin\"}\n";
        let batches = read_all(text, Format::Jsonl).expect("reads");
        let entries: Vec<_> = batches.iter().flat_map(|b| b.entries.clone()).collect();
        let bad: Vec<_> = batches.iter().flat_map(|b| b.bad.clone()).collect();
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].line, 2);
        assert_eq!(bad[0].field.as_deref(), Some("size"));
        // Lines 1 and 4 land in different batches: both stay, the stage keeps the last.
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].1.key, "pkgs/a.bin");
        assert_eq!(entries[1].1.key, "pkgs/a2.bin");
        assert_eq!(entries[1].0, 4);
    }

    #[test]
    fn csv_needs_its_header() {
        assert!(read_all("1,pkgs/a.bin\n", Format::Csv)
            .unwrap_err()
            .contains("no header row"));
        let b = read_all(
            "remote_id,url,size\n1,pkgs/a.bin,3\n1,pkgs/b.bin,4\n",
            Format::Csv,
        )
        .expect("reads");
        assert_eq!(b[0].duplicates, 1);
        assert_eq!(b[0].entries[0].1.key, "pkgs/b.bin");
        assert_eq!(b[0].entries[0].0, 3);
    }

    #[test]
    fn fatal_files() {
        assert!(read_all("", Format::Jsonl).unwrap_err().contains("empty"));
        assert!(read_all("\n\n", Format::Jsonl)
            .unwrap_err()
            .contains("empty"));
        assert!(read_all("", Format::Csv).unwrap_err().contains("empty"));
        let bytes = b"{\"remote_id\":\"1\",\"url\":\"a\"}\n{\"x\":\"\xff\"}\n".to_vec();
        let mut r = CatalogReader::new(
            Box::new(io::Cursor::new(bytes)),
            Format::Jsonl,
            Defaults::default(),
        )
        .expect("opens");
        assert!(r.next_batch(10).unwrap_err().contains("line 2: not UTF-8"));
        let long = format!(
            "{{\"remote_id\":\"1\",\"url\":\"{}\"}}\n",
            "a".repeat(MAX_LINE)
        );
        assert!(read_all(&long, Format::Jsonl)
            .unwrap_err()
            .contains("longer than 1 MiB"));
    }
}
