//! The transport flags: `--tls-cert/--tls-key` of the server commands,
//! `--tls/--tls-ca/--tls-insecure` and `--ws URL` of the client commands,
//! and `servercore cert`, which writes a self-signed pair for development.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use servercore::transport::rustls::pki_types::ServerName;
use servercore::transport::{rustls, tls};
use servercore::{ClientTransport, WebSocketConfig};

/// TLS options of a server command.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsServerArgs {
    /// Certificate chain (PEM). With --tls-key the TCP port speaks TLS only
    /// and a --ws-addr listener serves WSS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl TlsServerArgs {
    /// The rustls configuration, when TLS was asked for.
    pub fn server_config(&self) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(tls::server_config_from_pem(cert, key)?)),
            _ => Ok(None),
        }
    }
}

/// TLS options of a client command.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsClientArgs {
    /// Connect with TLS (needs --tls-ca or --tls-insecure).
    #[arg(long)]
    pub tls: bool,

    /// Trust the certificates of FILE (PEM): a private CA, or the server's
    /// self-signed certificate itself.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Accept any server certificate (for self-signed development servers;
    /// no protection against an attacker).
    #[arg(long, conflicts_with = "tls_ca")]
    pub tls_insecure: bool,

    /// The name the server's certificate must carry (default: the host of
    /// --ws, else the server's IP address).
    #[arg(long, value_name = "NAME")]
    pub tls_name: Option<String>,
}

/// A parsed `ws://` or `wss://` URL.
#[derive(Debug, Clone)]
pub struct WsUrl {
    /// `wss://`.
    pub secure: bool,
    /// The host as written (for `Host` and the TLS name).
    pub host: String,
    /// Host and port as written.
    pub authority: String,
    /// The path, with its query (default `/`).
    pub path: String,
    /// The resolved address.
    pub addr: SocketAddr,
}

/// Parses `ws://HOST[:PORT][/PATH]` or `wss://...` (ports 80 and 443 by
/// default) and resolves the host.
pub fn parse_ws_url(url: &str) -> Result<WsUrl, String> {
    let (secure, rest) = if let Some(rest) = url.strip_prefix("ws://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("wss://") {
        (true, rest)
    } else {
        return Err(format!("{url}: expected ws://HOST:PORT/PATH or wss://..."));
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("{url}: no host"));
    }
    let default_port = if secure { 443 } else { 80 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            match port.parse::<u16>() {
                Ok(port) => (host, port),
                Err(_) if authority.starts_with('[') && authority.ends_with(']') => {
                    (authority, default_port)
                }
                Err(_) => return Err(format!("{url}: bad port {port:?}")),
            }
        }
        _ => (authority, default_port),
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addr = (bare, port)
        .to_socket_addrs()
        .map_err(|e| format!("{url}: cannot resolve {bare}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: {bare} resolved to nothing"))?;
    Ok(WsUrl {
        secure,
        host: bare.to_string(),
        authority: authority.to_string(),
        path: path.to_string(),
        addr,
    })
}

impl TlsClientArgs {
    /// The transport of a client of `addr`, over WebSocket when `ws` is set.
    pub fn client_transport(
        &self,
        addr: SocketAddr,
        ws: Option<&WsUrl>,
    ) -> anyhow::Result<ClientTransport> {
        let mut transport = ClientTransport::plain();
        if let Some(url) = ws {
            let config = WebSocketConfig::default()
                .path(url.path.clone())
                .host(url.authority.clone())
                .max_message_size(16 << 20);
            transport = transport.with_websocket(config);
        }
        let wants_tls = self.tls || ws.is_some_and(|url| url.secure);
        if !wants_tls {
            anyhow::ensure!(
                self.tls_ca.is_none() && !self.tls_insecure,
                "--tls-ca and --tls-insecure need --tls (or a wss:// URL)"
            );
            return Ok(transport);
        }
        let config = match (&self.tls_ca, self.tls_insecure) {
            (Some(ca), _) => tls::client_config_from_pem(ca)?,
            (None, true) => tls::insecure_client_config(),
            (None, false) => anyhow::bail!(
                "TLS needs --tls-ca FILE (the server's certificate or its CA) or --tls-insecure"
            ),
        };
        let name = match (&self.tls_name, ws) {
            (Some(name), _) => name.clone(),
            (None, Some(url)) => url.host.clone(),
            (None, None) => addr.ip().to_string(),
        };
        let name = ServerName::try_from(name.clone())
            .with_context(|| format!("{name:?} is not a DNS name or IP address"))?;
        Ok(transport.with_tls(config, name))
    }
}

impl TlsClientArgs {
    /// The QUIC settings of a client of `target` (`HOST:PORT`, resolved
    /// here): the certificate trusted through --tls-ca, or any with
    /// --tls-insecure; the name it must carry is --tls-name, else the host.
    pub fn quic_config(
        &self,
        target: &str,
    ) -> anyhow::Result<(SocketAddr, servercore::QuicClientConfig)> {
        let (host, _) = target
            .rsplit_once(':')
            .with_context(|| format!("--quic {target}: expected HOST:PORT"))?;
        let addr = target
            .to_socket_addrs()
            .with_context(|| format!("--quic {target}: cannot resolve it"))?
            .next()
            .with_context(|| format!("--quic {target}: resolved to nothing"))?;
        let config = match (&self.tls_ca, self.tls_insecure) {
            (Some(ca), _) => tls::client_config_from_pem(ca)?,
            (None, true) => tls::insecure_client_config(),
            (None, false) => anyhow::bail!(
                "QUIC needs --tls-ca FILE (the server's certificate or its CA) or --tls-insecure"
            ),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = self.tls_name.clone().unwrap_or_else(|| host.to_string());
        Ok((addr, servercore::QuicClientConfig::new(config, name)))
    }
}

/// `servercore cert` options.
#[derive(Debug, clap::Args)]
pub struct CertArgs {
    /// Directory to write `cert.pem` and `key.pem` into (created if needed).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Names the certificate is valid for (default: localhost, 127.0.0.1, ::1).
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,

    /// Days the certificate is valid. Browsers accept a certificate by its
    /// hash (WebTransport's serverCertificateHashes) only below 14 days.
    #[arg(long, value_name = "N", default_value_t = 13)]
    pub days: u32,
}

/// The SHA-256 of the first certificate of a PEM file, in lower-case hex:
/// what a browser's `serverCertificateHashes` names.
pub fn cert_sha256(path: &Path) -> anyhow::Result<String> {
    let certs = tls::load_certificates(path)?;
    Ok(sha256_hex(certs[0].as_ref()))
}

fn sha256_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Writes a self-signed certificate and its key for development.
pub fn run_cert(args: CertArgs) -> anyhow::Result<()> {
    let names = if args.names.is_empty() {
        vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
    } else {
        args.names.clone()
    };
    anyhow::ensure!(args.days >= 1, "--days must be at least 1");
    // ECDSA P-256, as WebTransport's certificate hashes require.
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating a key")?;
    let mut params = rcgen::CertificateParams::new(names.clone()).context("certificate names")?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(i64::from(args.days));
    let cert = params
        .self_signed(&key)
        .context("signing the certificate")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let cert_path = args.out.join("cert.pem");
    let key_path = args.out.join("key.pem");
    write_file(&cert_path, cert.pem().as_bytes(), false)?;
    write_file(&key_path, key.serialize_pem().as_bytes(), true)?;
    let hash = sha256_hex(cert.der());
    println!(
        "wrote {} and {} (self-signed, for {}); serve with --tls-cert {} --tls-key {}, \
         connect with --tls --tls-ca {}",
        cert_path.display(),
        key_path.display(),
        names.join(", "),
        cert_path.display(),
        key_path.display(),
        cert_path.display()
    );
    println!(
        "ECDSA P-256, valid {} days; SHA-256 {hash} (for WebTransport's serverCertificateHashes)",
        args.days
    );
    Ok(())
}

fn write_file(path: &Path, data: &[u8], private: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(data)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_urls_parse() {
        let url = parse_ws_url("ws://127.0.0.1:9000/ws?x=1").unwrap();
        assert!(!url.secure);
        assert_eq!(url.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(
            (url.path.as_str(), url.host.as_str()),
            ("/ws?x=1", "127.0.0.1")
        );
        let url = parse_ws_url("wss://[::1]:9443").unwrap();
        assert!(url.secure);
        assert_eq!(url.addr, "[::1]:9443".parse().unwrap());
        assert_eq!((url.path.as_str(), url.host.as_str()), ("/", "::1"));
        assert!(parse_ws_url("http://x").is_err());
        assert!(parse_ws_url("ws://127.0.0.1:notaport/").is_err());
    }
}
