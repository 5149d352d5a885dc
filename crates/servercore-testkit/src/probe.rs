//! Which outside tools and services the test suite can use here, decided
//! when the tests are built (by the build scripts of `servercore-game` and
//! `servercore-cli`, which call [`emit`]).
//!
//! Each one that is missing, and not required, becomes
//! `cfg(servercore_missing = "NAME")`; a test that needs it carries
//! `#[cfg_attr(servercore_missing = "NAME", ignore = "needs ...")]`, so a
//! plain `cargo test` reports it as *ignored*, with the reason, in its
//! summary instead of passing it silently. `CI` (and, for the services and
//! Python's websockets, `SERVERCORE_REQUIRE_SERVICES` and
//! `SERVERCORE_REQUIRE_PY`) makes every one required: nothing is ignored,
//! and a test whose tool is missing fails.
//!
//! A probe reruns when the environment variables it reads change or the
//! browser tools' folder changes; `scripts/test-env` touches the build
//! scripts after it installs something, and so should anyone who installs
//! a tool by hand (`touch apps/servercore/build.rs`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Every name the probes use: the values `cfg(servercore_missing)` may take.
pub const NAMES: &[&str] = &[
    "postgres",
    "postgres_server",
    "nats_server",
    "prometheus_client",
    "websockets",
    "aioquic",
    "chromium",
    "playwright",
];

/// The environment variables that make a tool required.
const REQUIRING: &[&str] = &["CI", "SERVERCORE_REQUIRE_SERVICES", "SERVERCORE_REQUIRE_PY"];

/// The environment variables the probes read.
const PROBED: &[&str] = &["SERVERCORE_TEST_POSTGRES", "CHROMIUM", "PATH"];

/// Probes `names` (of [`NAMES`]) for the package in `manifest_dir` and
/// prints the build script's instructions.
pub fn emit(manifest_dir: &Path, names: &[&str]) {
    let values: Vec<String> = NAMES.iter().map(|name| format!("\"{name}\"")).collect();
    println!(
        "cargo::rustc-check-cfg=cfg(servercore_missing, values({}))",
        values.join(", ")
    );
    println!("cargo::rerun-if-changed=build.rs");
    for var in REQUIRING {
        println!("cargo::rerun-if-env-changed={var}");
    }
    // Where every tool is required (CI) nothing probed can change the
    // outcome: a service's URL set later must not rebuild the tests.
    if names.iter().any(|name| !required(name)) {
        for var in PROBED {
            println!("cargo::rerun-if-env-changed={var}");
        }
        let browser = manifest_dir.join("tests/browser");
        if browser.is_dir() {
            println!("cargo::rerun-if-changed={}", browser.display());
        }
    }
    let mut missing = Vec::new();
    for &name in names {
        if required(name) || present(name, manifest_dir) {
            continue;
        }
        println!("cargo::rustc-cfg=servercore_missing=\"{name}\"");
        missing.push(name);
    }
    if !missing.is_empty() {
        println!(
            "cargo::warning=the tests that need {} are ignored (`cargo test` lists them); \
             scripts/test-env installs and starts everything the suite needs",
            missing.join(", ")
        );
    }
}

fn set(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|value| !value.is_empty())
}

/// Under CI every tool is required; locally the `SERVERCORE_REQUIRE_*`
/// variables require theirs.
fn required(name: &str) -> bool {
    set("CI")
        || match name {
            "postgres" | "postgres_server" | "nats_server" => set("SERVERCORE_REQUIRE_SERVICES"),
            "websockets" | "aioquic" => set("SERVERCORE_REQUIRE_PY"),
            _ => false,
        }
}

fn present(name: &str, manifest_dir: &Path) -> bool {
    match name {
        "postgres" => set("SERVERCORE_TEST_POSTGRES"),
        "postgres_server" => std::fs::read_dir("/usr/lib/postgresql").is_ok_and(|versions| {
            versions
                .filter_map(Result::ok)
                .any(|version| version.path().join("bin/pg_ctl").exists())
        }),
        "nats_server" => on_path("nats-server").is_some(),
        "prometheus_client" => python_has("prometheus_client"),
        "websockets" => python_has("websockets"),
        "aioquic" => python_has("aioquic"),
        "chromium" => {
            std::env::var_os("CHROMIUM").is_some_and(|path| Path::new(&path).exists())
                || ["chromium", "chromium-browser", "google-chrome"]
                    .iter()
                    .any(|binary| on_path(binary).is_some())
        }
        "playwright" => {
            on_path("node").is_some()
                && manifest_dir
                    .join("tests/browser/node_modules/playwright-core")
                    .is_dir()
        }
        other => panic!("no probe for {other:?}"),
    }
}

fn on_path(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
