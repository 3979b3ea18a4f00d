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
