//! Key selection by prefix (`purge --prefix`) or glob (`purge --match`) as SQL conditions.
//! The operator's text only ever reaches the database as a bound parameter: a prefix becomes
//! a byte-order range, a glob becomes a SQLite `GLOB` pattern or an anchored PostgreSQL
//! regular expression built from the parsed glob (every literal escaped for that dialect), so
//! `%`, `_` and `\` in a key are ordinary characters.
//!
//! Glob syntax: `*` matches any run of characters, `/` included (S3 keys are flat, as in
//! `aws s3 rm --recursive --include`); `?` one character; `[abc]`, `[a-z]` one of a set,
//! `[!abc]` (or `[^abc]`) one not in it; `[*]`, `[?]`, `[[]` match those characters
//! literally. Matching is case-sensitive on both databases.

use sqlx::QueryBuilder;

use super::Backend;

/// The longest prefix or pattern accepted: the longest key S3 allows.
pub const MAX_PATTERN_BYTES: usize = 1024;
/// At most this many `*` in a pattern: each one multiplies the work of a match.
const MAX_STARS: usize = 16;

/// Which keys a purge may touch: all of them, or those under a prefix and/or matching a glob.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyScope {
    prefix: Option<String>,
    glob: Option<KeyGlob>,
}

impl KeyScope {
    /// Checks and parses the operator's prefix and pattern; the error names what is wrong.
    pub fn new(prefix: Option<&str>, pattern: Option<&str>) -> Result<KeyScope, String> {
        if let Some(p) = prefix {
            check_text("--prefix", p)?;
        }
        let glob = pattern
            .map(|g| {
                check_text("--match", g)?;
                KeyGlob::parse(g)
            })
            .transpose()?;
        Ok(KeyScope {
            prefix: prefix.map(str::to_string),
            glob,
        })
    }

    /// Whether every key is in scope.
    pub fn is_all(&self) -> bool {
        self.prefix.is_none() && self.glob.is_none()
    }

    /// The scope in words, e.g. `under "mods/" matching "*.zip"`.
    pub fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(p) = &self.prefix {
            parts.push(format!("under {p:?}"));
        }
        if let Some(g) = &self.glob {
            parts.push(format!("matching {:?}", g.source));
        }
        (!parts.is_empty()).then(|| parts.join(" "))
    }
}

fn check_text(flag: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{flag} must not be empty"));
    }
    if s.len() > MAX_PATTERN_BYTES {
        return Err(format!(
            "{flag} is {} bytes long, over the {MAX_PATTERN_BYTES} bytes an S3 key can have",
            s.len()
        ));
    }
    if s.contains('\0') {
        return Err(format!("{flag} contains a NUL character"));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Lit(char),
    /// `*`
    Any,
    /// `?`
    One,
    /// `[...]`: inclusive ranges (a single character is a range of one).
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// A parsed `--match` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGlob {
    source: String,
    tokens: Vec<Token>,
}

impl KeyGlob {
    pub fn parse(s: &str) -> Result<KeyGlob, String> {
        let chars: Vec<char> = s.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            i += 1;
            match c {
                // `**` is `*`: a run of stars matches what one does.
                '*' if tokens.last() == Some(&Token::Any) => {}
                '*' => tokens.push(Token::Any),
                '?' => tokens.push(Token::One),
                '[' => {
                    let start = i - 1;
                    let mut negated = false;
                    if i < chars.len() && (chars[i] == '!' || chars[i] == '^') {
                        negated = true;
                        i += 1;
                    }
                    let mut ranges = Vec::new();
                    let mut first = true;
                    loop {
                        let Some(&lo) = chars.get(i) else {
                            return Err(format!(
                                "--match: the '[' at character {} is not closed (write [[] for a literal '[')",
                                start + 1
                            ));
                        };
                        if lo == ']' && !first {
                            i += 1;
                            break;
                        }
                        first = false;
                        i += 1;
                        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|&c| c != ']')
                        {
                            let hi = chars[i + 1];
                            i += 2;
                            if [lo, hi].iter().any(|c| matches!(c, ']' | '-' | '^')) {
                                return Err(format!(
                                    "--match: the range {lo}-{hi} may not start or end with ']', '-' or '^'"
                                ));
                            }
                            if lo > hi {
                                return Err(format!("--match: the range {lo}-{hi} is reversed"));
                            }
                            ranges.push((lo, hi));
                        } else {
                            ranges.push((lo, lo));
                        }
                    }
                    match (negated, ranges.as_slice()) {
                        // `[*]`, `[?]`, `[[]`: one literal character.
                        (false, [(a, b)]) if a == b => tokens.push(Token::Lit(*a)),
                        _ => tokens.push(Token::Class { negated, ranges }),
                    }
                }
                c => tokens.push(Token::Lit(c)),
            }
        }
        let stars = tokens.iter().filter(|t| **t == Token::Any).count();
        if stars > MAX_STARS {
            return Err(format!(
                "--match has {stars} '*', more than the {MAX_STARS} allowed"
            ));
        }
        Ok(KeyGlob {
            source: s.to_string(),
            tokens,
        })
    }

    /// The literal characters before the first wildcard: every match starts with them.
    fn literal_prefix(&self) -> String {
        self.tokens
            .iter()
            .map_while(|t| match t {
                Token::Lit(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    /// The same pattern for SQLite's `GLOB` (case-sensitive, no escape character: a special
    /// character is matched literally as a one-character set).
    fn to_sqlite_glob(&self) -> String {
        let mut out = String::new();
        for t in &self.tokens {
            match t {
                Token::Lit(c @ ('*' | '?' | '[')) => {
                    out.push('[');
                    out.push(*c);
                    out.push(']');
                }
                Token::Lit(c) => out.push(*c),
                Token::Any => out.push('*'),
                Token::One => out.push('?'),
                Token::Class { negated, ranges } => {
                    // SQLite reads `^` first as negation, `]` first and `-` first or last as
                    // members: `]` goes first, `-` next, `^` last.
                    let single = |c: char| ranges.contains(&(c, c));
                    let others: Vec<&(char, char)> = ranges
                        .iter()
                        .filter(|&&(a, b)| !(a == b && matches!(a, ']' | '-' | '^')))
                        .collect();
                    out.push('[');
                    if *negated {
                        out.push('^');
                    }
                    if single(']') {
                        out.push(']');
                    }
                    if single('-') {
                        out.push('-');
                    }
                    for (a, b) in others {
                        out.push(*a);
                        if a != b {
                            out.push('-');
                            out.push(*b);
                        }
                    }
                    if single('^') {
                        if !negated && !single(']') && !single('-') && out.ends_with('[') {
                            // A set of `^` alone (with duplicates): the character itself.
                            out.pop();
                            out.push('^');
                            continue;
                        }
                        out.push('^');
                    }
                    out.push(']');
                }
            }
        }
        out
    }

    /// The same pattern as an anchored PostgreSQL regular expression: every character that
    /// is not a letter or digit is escaped with a backslash, which makes it literal.
    fn to_pg_regex(&self) -> String {
        fn lit(out: &mut String, c: char) {
            if !c.is_alphanumeric() {
                out.push('\\');
            }
            out.push(c);
        }
        let mut out = String::from("^");
        for t in &self.tokens {
            match t {
                Token::Lit(c) => lit(&mut out, *c),
                Token::Any => out.push_str(".*"),
                Token::One => out.push('.'),
                Token::Class { negated, ranges } => {
                    out.push('[');
                    if *negated {
                        out.push('^');
                    }
                    for (a, b) in ranges {
                        lit(&mut out, *a);
                        if a != b {
                            out.push('-');
                            lit(&mut out, *b);
                        }
                    }
                    out.push(']');
                }
            }
        }
        out.push('$');
        out
    }
}

/// The smallest string above every string that starts with `p` (byte order is code point
/// order in UTF-8), or `None` when there is none (`p` is all U+10FFFF).
fn successor(p: &str) -> Option<String> {
    let mut chars: Vec<char> = p.chars().collect();
    while let Some(c) = chars.pop() {
        let next = match c as u32 {
            0xD7FF => Some('\u{E000}'),
            n => char::from_u32(n + 1),
        };
        if let Some(n) = next {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// `m.key` in byte order on both databases (PostgreSQL's default collation may not be).
fn key_bytes(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "m.key COLLATE \"C\"",
        Backend::Sqlite => "m.key",
    }
}

fn push_range<'a, DB: sqlx::Database>(qb: &mut QueryBuilder<'a, DB>, backend: Backend, p: &str)
where
    String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    qb.push(" AND ")
        .push(key_bytes(backend))
        .push(" >= ")
        .push_bind(p.to_string());
    if let Some(s) = successor(p) {
        qb.push(" AND ")
            .push(key_bytes(backend))
            .push(" < ")
            .push_bind(s);
    }
}

/// Appends the scope's conditions on `m.key` (after a WHERE clause).
pub(super) fn push_key_scope<'a, DB: sqlx::Database>(
    qb: &mut QueryBuilder<'a, DB>,
    backend: Backend,
    scope: &'a KeyScope,
) where
    String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    if let Some(p) = &scope.prefix {
        push_range(qb, backend, p);
    }
    if let Some(g) = &scope.glob {
        // The literal head narrows the scan to a key range; the pattern decides.
        let head = g.literal_prefix();
        if !head.is_empty() {
            push_range(qb, backend, &head);
        }
        match backend {
            Backend::Postgres => qb.push(" AND m.key ~ ").push_bind(g.to_pg_regex()),
            Backend::Sqlite => qb.push(" AND m.key GLOB ").push_bind(g.to_sqlite_glob()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(s: &str) -> KeyGlob {
        KeyGlob::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn translates_to_each_dialect() {
        let cases = [
            ("mods/*.zip", "mods/*.zip", r"^mods\/.*\.zip$"),
            ("a?b", "a?b", "^a.b$"),
            ("100%_\\", "100%_\\", r"^100\%\_\\$"),
            ("[*][?][[]", "[*][?][[]", r"^\*\?\[$"),
            ("x[!a-c]", "x[^a-c]", r"^x[^a-c]$"),
            ("x[]a^-]", "x[]-a^]", r"^x[\]a\^\-]$"),
            ("x[^^]", "x[^^]", r"^x[^\^]$"),
            ("x[a^]", "x[a^]", r"^x[a\^]$"),
            ("x[^^]y[^]]", "x[^^]y[^]]", r"^x[^\^]y[^\]]$"),
            ("€", "€", r"^\€$"),
            ("ü**ñ", "ü*ñ", "^ü.*ñ$"),
            ("a b", "a b", r"^a\ b$"),
        ];
        for (src, sqlite, pg) in cases {
            let g = glob(src);
            assert_eq!(g.to_sqlite_glob(), sqlite, "{src} for SQLite");
            assert_eq!(g.to_pg_regex(), pg, "{src} for PostgreSQL");
        }
    }

    #[test]
    fn the_literal_head_stops_at_the_first_wildcard() {
        assert_eq!(glob("mods/a*b").literal_prefix(), "mods/a");
        assert_eq!(glob("[*]x?").literal_prefix(), "*x");
        assert_eq!(glob("*x").literal_prefix(), "");
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        for (p, want) in [
            ("a[bc", "not closed"),
            ("[z-a]", "reversed"),
            ("[]-a]", "may not start or end"),
            ("", "must not be empty"),
        ] {
            let e = KeyScope::new(None, Some(p)).expect_err(p);
            assert!(e.contains(want), "{p}: {e}");
        }
        let long = "a".repeat(MAX_PATTERN_BYTES + 1);
        assert!(KeyScope::new(Some(&long), None)
            .expect_err("long")
            .contains("over the 1024 bytes"));
        let stars = "*a".repeat(MAX_STARS + 1);
        assert!(KeyScope::new(None, Some(&stars))
            .expect_err("stars")
            .contains("'*'"));
        assert!(KeyScope::new(Some("a\0b"), None).is_err());
    }

    #[test]
    fn successor_bounds_every_extension() {
        assert_eq!(successor("mods/").as_deref(), Some("mods0"));
        assert_eq!(successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(successor("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(successor("\u{10FFFF}"), None);
    }
}
