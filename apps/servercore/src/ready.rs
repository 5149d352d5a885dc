//! The ready file (`--ready-file FILE` on `server` and `echo`): once every
//! listener is bound, the command writes one JSON object naming its
//! addresses, so a supervisor or a test learns where it listens without
//! parsing the human banner. The file appears whole (written beside its
//! place, then renamed), so whoever sees it can read it at once; it is
//! removed again when the command stops.
//!
//! ```json
//! {"kind":"game","pid":4242,"backend":"uring","addr":"127.0.0.1:7777",
//!  "ws":"127.0.0.1:7778","quic":null,"admin":"127.0.0.1:9100"}
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;

/// What a ready file says.
#[derive(Debug, Clone, Serialize)]
pub struct Ready {
    /// `game` or `echo`.
    pub kind: &'static str,
    /// The process id.
    pub pid: u32,
    /// The I/O backend in use (`uring` or `poll`).
    pub backend: String,
    /// The main TCP listener.
    pub addr: SocketAddr,
    /// The WebSocket listener, if any.
    pub ws: Option<SocketAddr>,
    /// The QUIC (UDP) listener, if any.
    pub quic: Option<SocketAddr>,
    /// The admin HTTP listener, if any.
    pub admin: Option<SocketAddr>,
}

/// A written ready file, removed on drop.
#[derive(Debug)]
pub struct ReadyFile {
    path: PathBuf,
}

impl Ready {
    /// Writes `self` to `path` whole (a temporary file beside it, then a
    /// rename).
    pub fn write(&self, path: &Path) -> anyhow::Result<ReadyFile> {
        let json = serde_json::to_string(self).expect("a ready file serializes");
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        std::fs::write(&partial, format!("{json}\n"))
            .with_context(|| format!("cannot write the ready file {}", partial.display()))?;
        std::fs::rename(&partial, path)
            .with_context(|| format!("cannot write the ready file {}", path.display()))?;
        Ok(ReadyFile {
            path: path.to_owned(),
        })
    }
}

impl Drop for ReadyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_appears_whole_and_goes_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready.json");
        let ready = Ready {
            kind: "echo",
            pid: 7,
            backend: "poll".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            ws: None,
            quic: Some("[::1]:2".parse().unwrap()),
            admin: None,
        };
        let file = ready.write(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"kind\":\"echo\",\"pid\":7,\"backend\":\"poll\",\"addr\":\"127.0.0.1:1\",\
             \"ws\":null,\"quic\":\"[::1]:2\",\"admin\":null}\n"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        drop(file);
        assert!(!path.exists());
    }

    #[test]
    fn an_unwritable_place_is_an_error_naming_it() {
        let ready = Ready {
            kind: "game",
            pid: 1,
            backend: "poll".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            ws: None,
            quic: None,
            admin: None,
        };
        let error = ready
            .write(Path::new("/nonexistent-dir/ready.json"))
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("/nonexistent-dir/ready.json"),
            "{error:#}"
        );
    }
}
