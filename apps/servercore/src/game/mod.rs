//! The sample game server (placeholder until written).
/// `servercore server` options.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {}
/// Runs the game server.
pub fn run(_args: ServerArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
