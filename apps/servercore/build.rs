//! Decides which tests need a tool this machine lacks (see
//! `scripts/test_probe.rs`): they are built `#[ignore]`d, with the reason.

#[path = "../../scripts/test_probe.rs"]
mod test_probe;

fn main() {
    let manifest_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // The shared PostgreSQL (SERVERCORE_TEST_POSTGRES) is the storage
    // tests' alone, in servercore-game.
    let names: Vec<&str> = test_probe::NAMES
        .iter()
        .copied()
        .filter(|name| *name != "postgres")
        .collect();
    test_probe::emit(&manifest_dir, &names);
}
