//! Development certificates for the TLS, QUIC and WebTransport tests,
//! written by the command under test itself (`servercore cert`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A pair written by `servercore cert --out DIR`.
pub struct DevCert {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// What the command printed (the key type, validity and SHA-256).
    pub printed: String,
}

/// Runs `exe cert --out dir` (`exe`: the `servercore` binary under test)
/// and returns the pair; panics with the command's error output if it
/// fails.
pub fn dev_cert(exe: &str, dir: &Path) -> DevCert {
    let out = Command::new(exe)
        .args(["cert", "--out"])
        .arg(dir)
        .output()
        .expect("run servercore cert");
    assert!(
        out.status.success(),
        "servercore cert failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    DevCert {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        printed: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}
