//! mirrorctl: the operator's tool for an S3 mirror/cache. The engine holds the operations;
//! the terminal UI and headless mode render what they return.

pub mod cli;
pub mod config;
pub mod demo;
pub mod engine;
pub mod headless;
pub mod serve;
pub mod tui;
