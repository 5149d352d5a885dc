//! Decides which tests need a service this machine lacks (see
//! `servercore_testkit::probe`): they are built `#[ignore]`d, with the reason.

use servercore_testkit::probe;

fn main() {
    let manifest_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    probe::emit(&manifest_dir, &["postgres"]);
}
