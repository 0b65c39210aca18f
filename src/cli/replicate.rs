//! (in progress)
use anyhow::Result;
pub fn run(_args: pico_args::Arguments) -> Result<i32> {
    anyhow::bail!("replicate: not built yet")
}
