//! Documentation generated from the command-line definitions: shell completions and manual
//! pages, so neither can drift from `--help`.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use crate::cli::Cli;

/// The completion script for `shell`. (Rendered into memory: the generator panics on a write
/// error, and a closed pipe such as `| head` is not worth one.)
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "mirrorctl", &mut out);
    out
}

/// The top-level manual page (its COMMANDS section lists every command).
pub fn man_page() -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = clap_mangen::Man::new(Cli::command()).render(&mut out);
    out
}

/// Writes generated text to stdout; a closed pipe (`| head`) is not an error worth reporting.
pub fn to_stdout(text: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text);
    let _ = out.flush();
}

/// Writes `mirrorctl.1` and one `mirrorctl-COMMAND.1` page per command (and sub-command) into
/// `dir`, creating it; returns how many pages were written.
pub fn man_pages(dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(Cli::command(), dir)?;
    Ok(std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("mirrorctl"))
        .count())
}
