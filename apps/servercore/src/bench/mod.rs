//! Benchmarks (placeholder until written).
/// `servercore bench` options.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}
/// `servercore bench-server` options.
#[derive(Debug, clap::Args)]
pub struct BenchServerArgs {}
/// Runs the benchmarks.
pub fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
/// Runs one benchmark server.
pub fn run_server(_args: BenchServerArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
