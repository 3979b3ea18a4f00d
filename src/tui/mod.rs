//! The terminal UI.

use crate::engine::error::Result;
use crate::engine::Ctx;

pub async fn run(_ctx: Ctx, _view: Option<&str>) -> Result<u8> {
    Ok(0)
}
