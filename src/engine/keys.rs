//! Object keys: which keys the mirror accepts (from a URL path or a catalog line), and which
//! key the mirrored copy of a catalog entry lives under.

/// A key the mirror will store and serve: 1 to 1024 bytes, no control characters, no empty,
/// `.` or `..` path segments (they would resolve differently on the origin and in the bucket).
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 1024 {
        return Err("key must be 1 to 1024 bytes".into());
    }
    if key.chars().any(char::is_control) {
        return Err("key contains control characters".into());
    }
    if key
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err("key contains an empty, '.' or '..' path segment".into());
    }
    Ok(())
}

/// Characters a key keeps in a URL path: everything else (`%`, `?`, `#`, `:`, spaces, non-ASCII…)
/// is percent-encoded, so a key is always a path under `origin.base_url`, never a query, a
/// scheme or an encoded `..`.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b'@');

/// The relative URL of a key under `origin.base_url`: each segment percent-encoded. Its
/// `derive_key` is the key again.
pub fn key_to_url(key: &str) -> String {
    key.split('/')
        .map(|seg| percent_encoding::utf8_percent_encode(seg, PATH_SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// `origin.base_url` as a base to join relative URLs to: a path without a trailing `/` gets
/// one, so `http://o/base` + `pkgs/f1.bin` is `http://o/base/pkgs/f1.bin`, not `/pkgs/f1.bin`.
pub fn base_url(s: &str) -> Result<url::Url, url::ParseError> {
    let mut u = url::Url::parse(s)?;
    if !u.path().ends_with('/') {
        let path = format!("{}/", u.path());
        u.set_path(&path);
    }
    Ok(u)
}

/// Whether `location` is an absolute URL (`https://…`, `s3://…`) rather than a path.
pub fn is_absolute(location: &str) -> bool {
    url::Url::parse(location).is_ok()
}

/// The key of a catalog entry's mirrored copy when the catalog does not name one:
/// - a relative URL is its own key (`pkgs/f1.bin`), as for pull-through;
/// - an absolute URL under `base_url` is the rest of it (`https://o/pkgs/f1.bin` → `pkgs/f1.bin`);
/// - any other absolute URL gets `{source}/{remote_id}/{file name}`, unique by construction.
///
/// The query string never becomes part of a key.
pub fn derive_key(
    source: &str,
    remote_id: &str,
    url: &str,
    file_name: Option<&str>,
    base_url: Option<&url::Url>,
) -> String {
    let path_only = |s: &str| s.split(['?', '#']).next().unwrap_or("").to_string();
    if !is_absolute(url) {
        return decode(path_only(url).trim_start_matches('/'));
    }
    if let Some(base) = base_url {
        if let Some(rest) = url.strip_prefix(base.as_str()) {
            return decode(&path_only(rest));
        }
    }
    let name = file_name
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| last_segment(url));
    format!("{source}/{remote_id}/{name}")
}

/// The last path segment of a URL or path, decoded (`https://h/a/b%20c.zip?x` → `b c.zip`).
pub fn last_segment(location: &str) -> String {
    let path = match url::Url::parse(location) {
        Ok(u) => u.path().to_string(),
        Err(_) => location.split(['?', '#']).next().unwrap_or("").to_string(),
    };
    decode(path.trim_end_matches('/').rsplit('/').next().unwrap_or(""))
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(check_key("mods/a b/ü.zip").is_ok());
        assert!(check_key("mods/../etc/passwd").is_err());
        assert!(check_key("./x").is_err());
        assert!(check_key("a//b").is_err());
        assert!(check_key("a\u{0}b").is_err());
        assert!(check_key("a\nb").is_err());
        assert!(check_key("").is_err());
    }

    #[test]
    fn keys_stay_paths_under_the_base() {
        let base = base_url("http://o:1/base").expect("base");
        assert_eq!(base.as_str(), "http://o:1/base/");
        for (key, path) in [
            (
                "pkgs/%2e%2e/%2e%2e/private/secret.bin",
                "/base/pkgs/%252e%252e/%252e%252e/private/secret.bin",
            ),
            (
                "http:/127.0.0.2:9/x.bin",
                "/base/http%3A/127.0.0.2%3A9/x.bin",
            ),
            ("pull/a%41.bin", "/base/pull/a%2541.bin"),
            ("pull/q?v=1.bin", "/base/pull/q%3Fv=1.bin"),
            ("mods/a b/ü.zip", "/base/mods/a%20b/%C3%BC.zip"),
        ] {
            let url = key_to_url(key);
            let joined = base.join(&url).expect("joins");
            assert_eq!(joined.host_str(), Some("o"), "{key}");
            assert_eq!(joined.path(), path, "{key}");
            assert_eq!(joined.query(), None, "{key}");
            assert_eq!(derive_key("http", "1", &url, None, Some(&base)), key);
        }
    }

    #[test]
    fn derived_keys() {
        let base = url::Url::parse("http://origin:8000/").ok();
        let b = base.as_ref();
        assert_eq!(
            derive_key("http", "1", "pkgs/f1.bin", None, b),
            "pkgs/f1.bin"
        );
        assert_eq!(
            derive_key("http", "1", "/pkgs/f1.bin?t=1", None, None),
            "pkgs/f1.bin"
        );
        assert_eq!(
            derive_key("http", "1", "http://origin:8000/pkgs/a%20b.bin", None, b),
            "pkgs/a b.bin"
        );
        assert_eq!(
            derive_key(
                "gb",
                "77",
                "https://cdn.example/dl/9?token=s",
                Some("mod.zip"),
                b
            ),
            "gb/77/mod.zip"
        );
        assert_eq!(
            derive_key("gb", "77", "https://cdn.example/dl/x.zip?token=s", None, b),
            "gb/77/x.zip"
        );
    }
}
