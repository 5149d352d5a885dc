//! TLS with rustls: the per-connection record layer, and helpers that build
//! rustls configurations from PEM files (TLS 1.3 and 1.2, the `ring`
//! provider).
//!
//! The engine uses rustls's buffered API: wire bytes from the driver go to
//! `read_tls`, decrypted bytes come out of its reader into the session's
//! plain buffer, and queued plain `Bytes` are written into it and leave as
//! one buffer of records per flush.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::session::DisconnectReason;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A PEM file could not be read or held nothing usable.
    #[error("{path}: {detail}")]
    Pem {
        /// The file.
        path: String,
        /// What was wrong.
        detail: String,
    },
    /// rustls refused the certificate, key or settings.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_error(path: &Path, detail: impl ToString) -> TlsConfigError {
    TlsConfigError::Pem {
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

/// Reads every certificate of a PEM file.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no CERTIFICATE block"));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, e))
}

/// A server configuration (TLS 1.3 and 1.2) from a certificate chain and
/// its key, both PEM.
pub fn server_config_from_pem(
    cert: &Path,
    key: &Path,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    server_config(load_certificates(cert)?, load_private_key(key)?)
}

/// A server configuration (TLS 1.3 and 1.2) from DER certificates and key.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// A client configuration that trusts the certificates of a PEM file (a
/// private CA, or a self-signed server certificate itself).
pub fn client_config_from_pem(ca: &Path) -> Result<Arc<ClientConfig>, TlsConfigError> {
    client_config(load_certificates(ca)?)
}

/// A client configuration that trusts the given root certificates.
pub fn client_config(
    roots: Vec<CertificateDer<'static>>,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root)?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A client configuration that accepts any server certificate (signatures
/// are still checked). For development against self-signed servers only:
/// it gives no protection against an active attacker.
pub fn insecure_client_config() -> Arc<ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(AcceptAnyCertificate(Arc::clone(&provider)));
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Arc::new(config)
}

#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One connection's TLS state.
pub(crate) struct Tls {
    conn: rustls::Connection,
}

/// What a TLS read found besides plain bytes.
pub(crate) enum TlsRead {
    /// More may follow.
    Open,
    /// The peer sent `close_notify`.
    Closed,
}

impl Tls {
    pub(crate) fn server(config: &Arc<ServerConfig>) -> Result<Tls, DisconnectReason> {
        let conn = rustls::ServerConnection::new(Arc::clone(config))
            .map_err(|e| DisconnectReason::TlsHandshake(e.to_string()))?;
        Ok(Tls::new(conn.into()))
    }

    pub(crate) fn client(
        config: &Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<Tls, DisconnectReason> {
        let conn = rustls::ClientConnection::new(Arc::clone(config), name)
            .map_err(|e| DisconnectReason::TlsHandshake(e.to_string()))?;
        Ok(Tls::new(conn.into()))
    }

    fn new(mut conn: rustls::Connection) -> Tls {
        // The session's send queue limits what is buffered; rustls must
        // take whatever a flush hands it.
        conn.set_buffer_limit(None);
        Tls { conn }
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        match &self.conn {
            rustls::Connection::Client(c) => c.is_handshaking(),
            rustls::Connection::Server(c) => c.is_handshaking(),
        }
    }

    fn error(&self, error: impl ToString) -> DisconnectReason {
        if self.is_handshaking() {
            DisconnectReason::TlsHandshake(error.to_string())
        } else {
            DisconnectReason::Tls(error.to_string())
        }
    }

    /// Feeds wire bytes; decrypted bytes are appended to `plain`. On an
    /// error the alert rustls queued is left for [`Tls::take_output`].
    pub(crate) fn read(
        &mut self,
        mut input: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<TlsRead, DisconnectReason> {
        while !input.is_empty() {
            let read = match self.conn.read_tls(&mut input) {
                Ok(read) => read,
                Err(error) => return Err(self.error(error)),
            };
            if let Err(error) = self.conn.process_new_packets() {
                return Err(self.error(error));
            }
            match self.conn.reader().read_to_end(plain) {
                Ok(_) => return Ok(TlsRead::Closed),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(self.error(error)),
            }
            if read == 0 {
                return Ok(TlsRead::Closed);
            }
        }
        Ok(TlsRead::Open)
    }

    /// Encrypts `data` (it leaves through [`Tls::take_output`]).
    pub(crate) fn write(&mut self, data: &[u8]) {
        // Without a buffer limit the writer takes everything.
        let _ = self.conn.writer().write_all(data);
    }

    /// Encrypts `bufs` as if concatenated: small sends share records.
    pub(crate) fn write_bufs(&mut self, bufs: &[bytes::Bytes]) {
        // IoSlice batches of bounded size keep the slice array small.
        for group in bufs.chunks(64) {
            let slices: Vec<io::IoSlice<'_>> = group.iter().map(|b| io::IoSlice::new(b)).collect();
            let total: usize = group.iter().map(|b| b.len()).sum();
            let written = self.conn.writer().write_vectored(&slices).unwrap_or(0);
            if written < total {
                // Not expected without a buffer limit; finish byte-exactly.
                let mut skip = written;
                for buf in group {
                    if skip >= buf.len() {
                        skip -= buf.len();
                        continue;
                    }
                    self.write(&buf[skip..]);
                    skip = 0;
                }
            }
        }
    }

    /// Queues `close_notify`.
    pub(crate) fn close_notify(&mut self) {
        match &mut self.conn {
            rustls::Connection::Client(c) => c.send_close_notify(),
            rustls::Connection::Server(c) => c.send_close_notify(),
        }
    }

    /// Appends the records waiting to be sent to `out`.
    pub(crate) fn take_output(&mut self, out: &mut Vec<u8>) {
        loop {
            let wants = match &self.conn {
                rustls::Connection::Client(c) => c.wants_write(),
                rustls::Connection::Server(c) => c.wants_write(),
            };
            if !wants {
                break;
            }
            if self.conn.write_tls(out).is_err() {
                break;
            }
        }
    }
}
