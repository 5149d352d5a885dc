//! Decides which tests need a service this machine lacks (see
//! `scripts/test_probe.rs`): they are built `#[ignore]`d, with the reason.

#[path = "../../scripts/test_probe.rs"]
mod test_probe;

fn main() {
    let manifest_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    test_probe::emit(&manifest_dir, &["postgres"]);
}
