//! One file per operation. Each is one function taking `&Ctx`, typed params and a `Progress`,
//! returning a typed report that the TUI and headless mode both render.

pub mod archive;
pub mod catalog;
pub mod check;
pub mod costs;
pub mod doctor;
pub mod drift;
pub mod files;
pub mod fleet;
pub mod history;
pub mod lock;
pub mod prefetch;
pub mod purge;
pub mod remirror;
pub mod replication;
pub mod stats;
pub mod uploads;
pub mod validate;
