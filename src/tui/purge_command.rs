//! The TUI's `:purge` command: the headless purge's selection (stale, unused, max-bytes,
//! prefix, match) and `--max-delete`, typed as words (`purge unused 30 prefix mods/`) or as
//! the headless flags (`purge --unused-days 30 --prefix mods/`), quoted as in a shell so a
//! key with spaces can be named. `unused` without DAYS means `policy.unused_days`.

use crate::engine::ops::purge::PurgeTarget;

/// The `:purge` usage line that errors show.
pub const USAGE: &str = "purge stale|unused [N]|max-bytes S|prefix P|match G [max-delete N]";
/// The same, short enough for the command list's line.
pub const USAGE_SHORT: &str = "purge stale|unused [N]|max-bytes S|prefix P|match G";

/// A purge as the operator asked for it in the TUI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeRequest {
    pub target: PurgeTarget,
    pub prefix: Option<String>,
    pub pattern: Option<String>,
    pub max_delete: Option<u64>,
}

impl PurgeRequest {
    pub fn new(target: PurgeTarget) -> PurgeRequest {
        PurgeRequest {
            target,
            prefix: None,
            pattern: None,
            max_delete: None,
        }
    }

    /// One line saying what it deletes.
    pub fn title(&self) -> String {
        let mut scope = String::new();
        if let Some(p) = &self.prefix {
            scope.push_str(&format!(" under {p:?}"));
        }
        if let Some(g) = &self.pattern {
            scope.push_str(&format!(" matching {g:?}"));
        }
        match self.target {
            PurgeTarget::All => format!("purge every object{scope}"),
            PurgeTarget::Stale => format!("purge stale objects{scope}"),
            PurgeTarget::UnusedDays(d) => {
                format!("purge objects{scope} not downloaded for {d} days")
            }
            PurgeTarget::MaxBytes(b) => {
                let b = humansize::format_size(b, humansize::BINARY);
                if scope.is_empty() {
                    format!("purge least recently used objects until the mirror fits in {b}")
                } else {
                    format!(
                        "purge objects{scope}, least recently used first, until they fit in {b}"
                    )
                }
            }
        }
    }

    /// The arguments of the same purge as a headless command, quoted for a POSIX shell.
    pub fn headless_args(&self) -> String {
        let mut words: Vec<String> = vec!["purge".into()];
        match self.target {
            PurgeTarget::All => {}
            PurgeTarget::Stale => words.push("--stale".into()),
            PurgeTarget::UnusedDays(d) => words.extend(["--unused-days".into(), d.to_string()]),
            PurgeTarget::MaxBytes(b) => words.extend(["--max-bytes".into(), size_text(b)]),
        }
        if let Some(p) = &self.prefix {
            words.extend(["--prefix".into(), quote(p)]);
        }
        if let Some(g) = &self.pattern {
            words.extend(["--match".into(), quote(g)]);
        }
        if let Some(n) = self.max_delete {
            words.extend(["--max-delete".into(), n.to_string()]);
        }
        words.push("--yes".into());
        words.join(" ")
    }
}

fn quote(s: &str) -> String {
    shlex::try_quote(s)
        .map(|q| q.into_owned())
        // Only a NUL cannot be quoted, and the engine refuses it anyway.
        .unwrap_or_else(|_| format!("{s:?}"))
}

/// Bytes in the largest binary unit that divides them: 500GiB, not 536870912000.
fn size_text(b: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if b > 0 && b.trailing_zeros() >= shift {
            return format!("{}{unit}", b >> shift);
        }
    }
    b.to_string()
}

/// Parses what follows `purge` on the command line; `unused_days` is `policy.unused_days`.
pub fn parse(args: &str, unused_days: u32) -> Result<PurgeRequest, String> {
    let words = shlex::split(args).ok_or("purge: a quote is not closed")?;
    let mut words = words.into_iter().peekable();
    let mut target = None;
    let mut req = PurgeRequest::new(PurgeTarget::All);
    let set = |target: &mut Option<PurgeTarget>, t: PurgeTarget| match target {
        Some(_) => Err("purge: pick one of stale, unused and max-bytes".to_string()),
        None => {
            *target = Some(t);
            Ok(())
        }
    };
    while let Some(word) = words.next() {
        // `--flag=value` as `--flag value`.
        let (name, inline) = match word.strip_prefix("--") {
            Some(f) => match f.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (f.to_string(), None),
            },
            None => (word.clone(), None),
        };
        let mut value = |what: &str| {
            inline
                .clone()
                .or_else(|| words.next())
                .ok_or_else(|| format!("purge {name}: needs {what}"))
        };
        match name.as_str() {
            "stale" => set(&mut target, PurgeTarget::Stale)?,
            "unused" | "unused-days" => {
                let days = match (&inline, name.as_str()) {
                    (Some(_), _) | (None, "unused-days") => Some(value("DAYS")?),
                    // `unused` alone is the policy's window; a number after it is DAYS.
                    _ => words.next_if(|w| w.chars().all(|c| c.is_ascii_digit())),
                };
                let days = match days {
                    None => unused_days,
                    Some(d) => d
                        .parse::<u32>()
                        .ok()
                        .filter(|&d| d > 0)
                        .ok_or("purge unused: DAYS must be a positive number")?,
                };
                set(&mut target, PurgeTarget::UnusedDays(days))?;
            }
            "max-bytes" => {
                let size = crate::config::parse_size(&value("SIZE")?)
                    .map_err(|e| format!("purge max-bytes: {e}"))?;
                set(&mut target, PurgeTarget::MaxBytes(size))?;
            }
            "prefix" => req.prefix = Some(value("P")?),
            "match" => req.pattern = Some(value("GLOB")?),
            "max-delete" => {
                req.max_delete = Some(
                    value("N")?
                        .parse()
                        .map_err(|_| "purge max-delete: N must be a number")?,
                )
            }
            "yes" | "y" | "dry-run" => {} // the confirmation is the TUI's yes and dry run
            other => return Err(format!("purge: unknown {other:?}; usage: {USAGE}")),
        }
    }
    match target {
        Some(t) => req.target = t,
        None if req.prefix.is_none() && req.pattern.is_none() => {
            return Err(format!("usage: {USAGE}"))
        }
        None => {}
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_flags_parse_alike() {
        let want = PurgeRequest {
            prefix: Some("mods/a b/".into()),
            max_delete: Some(5000),
            ..PurgeRequest::new(PurgeTarget::UnusedDays(30))
        };
        assert_eq!(
            parse("unused 30 prefix 'mods/a b/' max-delete 5000", 90),
            Ok(want.clone())
        );
        assert_eq!(
            parse(
                "--unused-days=30 --prefix \"mods/a b/\" --max-delete 5000",
                90
            ),
            Ok(want)
        );
    }

    #[test]
    fn unused_alone_is_the_policy_window() {
        assert_eq!(
            parse("unused", 45).map(|r| r.target),
            Ok(PurgeTarget::UnusedDays(45))
        );
        assert_eq!(
            parse("unused match '*.zip'", 45),
            Ok(PurgeRequest {
                pattern: Some("*.zip".into()),
                ..PurgeRequest::new(PurgeTarget::UnusedDays(45))
            })
        );
    }

    #[test]
    fn scope_alone_and_max_bytes() {
        assert_eq!(
            parse("match 'x%_\\*'", 90),
            Ok(PurgeRequest {
                pattern: Some("x%_\\*".into()),
                ..PurgeRequest::new(PurgeTarget::All)
            })
        );
        let r = parse("max-bytes 2GiB prefix mods/", 90).expect("parses");
        assert_eq!(r.target, PurgeTarget::MaxBytes(2 << 30));
        assert_eq!(
            r.headless_args(),
            "purge --max-bytes 2GiB --prefix mods/ --yes"
        );
    }

    #[test]
    fn mistakes_are_named() {
        for (line, want) in [
            ("", "usage: purge stale"),
            ("stale unused", "pick one"),
            ("unused 0", "positive"),
            ("max-bytes lots", "bad size"),
            ("prefix", "needs P"),
            ("prefix 'open", "quote"),
            ("everything", "unknown \"everything\""),
        ] {
            let e = parse(line, 90).expect_err(line);
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn the_headless_command_is_quoted_for_a_shell() {
        let r = PurgeRequest {
            pattern: Some("it's *.zip".into()),
            ..PurgeRequest::new(PurgeTarget::Stale)
        };
        let args = r.headless_args();
        assert_eq!(
            shlex::split(&args).expect("splits"),
            ["purge", "--stale", "--match", "it's *.zip", "--yes"]
        );
    }
}
