//! Decides which tests need a tool this machine lacks (see
//! `servercore_testkit::probe`): they are built `#[ignore]`d, with the reason.

use servercore_testkit::probe;

fn main() {
    let manifest_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // The shared PostgreSQL (SERVERCORE_TEST_POSTGRES) is the storage
    // tests' alone, in servercore-game.
    let names: Vec<&str> = probe::NAMES
        .iter()
        .copied()
        .filter(|name| *name != "postgres")
        .collect();
    probe::emit(&manifest_dir, &names);
}
