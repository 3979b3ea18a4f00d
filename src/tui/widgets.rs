//! Small drawing pieces the views share: centred popups, text bars, truncation, "ago" times.

use chrono::{DateTime, Utc};
use ratatui::layout::Rect;

/// A `w`×`h` rectangle centred in `area` (clipped to it).
pub fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

/// A bar `width` cells wide filled to `ratio` with eighth-block precision.
pub fn bar(ratio: f64, width: usize) -> String {
    const PARTS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let ratio = if ratio.is_finite() {
        ratio.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let eighths = (ratio * width as f64 * 8.0).round() as usize;
    let full = eighths / 8;
    let mut s = "█".repeat(full.min(width));
    if full < width {
        s.push(PARTS[eighths % 8]);
        s.push_str(&"░".repeat(width - full - 1));
    }
    s
}

/// `s` in at most `w` characters, keeping the end (the file name is the informative part
/// of a key).
pub fn truncate_left(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n <= w {
        return s.to_string();
    }
    if w == 0 {
        return String::new();
    }
    let skip = n - (w - 1);
    let mut out = String::from("…");
    out.extend(s.chars().skip(skip));
    out
}

/// `s` in at most `w` characters, keeping the start.
pub fn truncate_right(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        return s.to_string();
    }
    if w == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(w - 1).collect();
    out.push('…');
    out
}

/// A time in the UI's zone with its label: "2026-12-07 14:05 UTC", or with `tui.timezone =
/// "local"` "2026-12-07 15:05 +01:00".
pub fn clock(t: DateTime<Utc>, zone: crate::config::TimeZoneName, seconds: bool) -> String {
    let fmt = if seconds {
        "%Y-%m-%d %H:%M:%S"
    } else {
        "%Y-%m-%d %H:%M"
    };
    match zone {
        crate::config::TimeZoneName::Utc => format!("{} UTC", t.format(fmt)),
        crate::config::TimeZoneName::Local => t
            .with_timezone(&chrono::Local)
            .format(&format!("{fmt} %:z"))
            .to_string(),
    }
}

/// "5m ago", "3h ago", "2d ago", or "never".
pub fn ago(now: DateTime<Utc>, t: Option<DateTime<Utc>>) -> String {
    let Some(t) = t else { return "never".into() };
    let secs = (now - t).num_seconds();
    if secs < 0 {
        return "just now".into();
    }
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=172_799 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// A duration in seconds as "45s", "12m 3s", "2h 5m".
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".into();
    }
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_fill_to_the_ratio() {
        assert_eq!(bar(0.0, 4), " ░░░");
        assert_eq!(bar(1.0, 4), "████");
        assert_eq!(bar(0.5, 4), "██ ░");
        assert_eq!(bar(f64::NAN, 2), " ░");
        assert_eq!(bar(0.5, 4).chars().count(), 4);
    }

    #[test]
    fn truncation_keeps_the_informative_end() {
        assert_eq!(truncate_left("mods/1/2/maps.zip", 9), "…maps.zip");
        assert_eq!(truncate_left("short", 9), "short");
        assert_eq!(truncate_right("abcdef", 4), "abc…");
    }
}
