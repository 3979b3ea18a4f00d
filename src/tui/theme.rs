//! Colours and emphasis from `tui.theme`: dark, light or mono. Only the 16 base ANSI colours
//! are used, and every state that colour marks is also marked by a modifier or a word, so the
//! mono theme (and a monochrome terminal) stays legible.

use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;

use crate::config::ThemeName;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Theme {
    pub name: ThemeName,
    /// Plain text.
    pub text: Style,
    /// Secondary text: hints, units, "never".
    pub dim: Style,
    /// Titles and the active tab.
    pub title: Style,
    /// Keys in hints and help.
    pub key: Style,
    pub border: Style,
    /// The table header row.
    pub header: Style,
    /// The selected row.
    pub selected: Style,
    pub good: Style,
    pub warn: Style,
    pub bad: Style,
    /// The hits series.
    pub hits: Style,
    /// The misses series.
    pub misses: Style,
    pub hits_marker: Marker,
    pub misses_marker: Marker,
}

impl Theme {
    pub fn from_name(name: ThemeName) -> Theme {
        match name {
            ThemeName::Dark => Theme {
                name,
                text: Style::new().fg(Color::Gray),
                dim: Style::new().fg(Color::DarkGray),
                title: Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
                key: Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
                border: Style::new().fg(Color::DarkGray),
                header: Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
                selected: Style::new().add_modifier(Modifier::REVERSED),
                good: Style::new().fg(Color::Green),
                warn: Style::new().fg(Color::Yellow),
                bad: Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
                hits: Style::new().fg(Color::Green),
                misses: Style::new().fg(Color::Red),
                hits_marker: Marker::Braille,
                misses_marker: Marker::Braille,
            },
            ThemeName::Light => Theme {
                name,
                text: Style::new().fg(Color::Black),
                dim: Style::new().fg(Color::DarkGray),
                title: Style::new().fg(Color::Blue).add_modifier(Modifier::BOLD),
                key: Style::new().fg(Color::Magenta).add_modifier(Modifier::BOLD),
                border: Style::new().fg(Color::DarkGray),
                header: Style::new().fg(Color::Blue).add_modifier(Modifier::BOLD),
                selected: Style::new().add_modifier(Modifier::REVERSED),
                good: Style::new().fg(Color::Green),
                warn: Style::new().fg(Color::Magenta),
                bad: Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
                hits: Style::new().fg(Color::Blue),
                misses: Style::new().fg(Color::Red),
                hits_marker: Marker::Braille,
                misses_marker: Marker::Braille,
            },
            ThemeName::Mono => Theme {
                name,
                text: Style::new(),
                dim: Style::new().add_modifier(Modifier::DIM),
                title: Style::new().add_modifier(Modifier::BOLD),
                key: Style::new().add_modifier(Modifier::BOLD),
                border: Style::new(),
                header: Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED),
                selected: Style::new().add_modifier(Modifier::REVERSED),
                good: Style::new(),
                warn: Style::new().add_modifier(Modifier::BOLD),
                bad: Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED),
                hits: Style::new(),
                misses: Style::new(),
                // Without colour the two series differ by their dots.
                hits_marker: Marker::Braille,
                misses_marker: Marker::Dot,
            },
        }
    }
}

impl Default for Theme {
    fn default() -> Self {
        Theme::from_name(ThemeName::Dark)
    }
}
