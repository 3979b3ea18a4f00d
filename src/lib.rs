//! mirrorctl: the operator's tool for an S3 mirror/cache. The engine holds the operations;
//! the terminal UI and headless mode render what they return.

// The command dispatch (`app`) awaits every operation inline; the release build computes the
// layout of that one future past the default query depth (128).
#![recursion_limit = "256"]

pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod engine;
pub mod headless;
pub mod serve;
pub mod tui;
