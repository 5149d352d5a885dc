//! The dummy game client (placeholder until written).
/// `servercore client` options.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {}
/// Runs the dummy clients.
pub fn run(_args: ClientArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
