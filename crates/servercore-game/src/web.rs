//! The browser client (this crate's `web/`), built into the server and
//! served by its WebSocket listener to plain HTTP `GET`s: open
//! `http://WS_ADDR/` in a browser and it plays over `ws://WS_ADDR/ws`.
//!
//! The page fetches `protocol.proto`, the same file the server's packet ids
//! are generated from, so browser and server can never disagree on ids.
//!
//! Every plain HTTP request is counted here, by whether a file answered it
//! (`http_requests_served`) or a 404 (`http_requests_not_found`), apart
//! from the game's sessions; a browser's `/favicon.ico` has its file.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use servercore::transport::{PageLookup, WebPage};

use crate::stats::GameCounters;

const INDEX_HTML: &[u8] = include_bytes!("../web/index.html");
const APP_JS: &[u8] = include_bytes!("../web/app.js");
const PROTOCOL_JS: &[u8] = include_bytes!("../web/protocol.js");
const STYLE_CSS: &[u8] = include_bytes!("../web/style.css");
const PROTOBUF_JS: &[u8] = include_bytes!("../web/vendor/protobuf.min.js");
const PROTOCOL_PROTO: &[u8] = servercore_protocol::PROTOCOL_PROTO.as_bytes();
const FAVICON_ICO: &[u8] = include_bytes!("../web/favicon.ico");

/// What the page needs to know of this server's world, served as
/// `/config.json`.
#[derive(Debug, Clone, Copy)]
pub struct WebWorld {
    /// The map's side length.
    pub world_size: f32,
    /// A cell's side length.
    pub cell: f32,
}

/// The browser client's files by request path; each lookup is counted in
/// `counters` (a file served, or a 404).
pub fn pages(world: WebWorld, counters: Arc<GameCounters>) -> PageLookup {
    pages_with_web_transport(world, counters, Arc::new(OnceLock::new()))
}

/// Where the page finds the server's WebTransport endpoint: its UDP port
/// and the SHA-256 of its certificate (hex), for `serverCertificateHashes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebTransportInfo {
    /// The QUIC listener's UDP port (path `/wt`).
    pub port: u16,
    /// The SHA-256 of the certificate's DER, in lower-case hex.
    pub cert_sha256: String,
}

/// [`pages`], whose `/config.json` also names the WebTransport endpoint
/// once `web_transport` is set (after the QUIC listener is bound).
pub fn pages_with_web_transport(
    world: WebWorld,
    counters: Arc<GameCounters>,
    web_transport: Arc<OnceLock<WebTransportInfo>>,
) -> PageLookup {
    let base = format!(
        "{{\"world_size\":{},\"cell\":{}",
        world.world_size, world.cell
    );
    let config = move || match web_transport.get() {
        Some(wt) => Bytes::from(format!(
            "{base},\"web_transport\":{{\"port\":{},\"path\":\"/wt\",\"cert_sha256\":\"{}\"}}}}",
            wt.port, wt.cert_sha256
        )),
        None => Bytes::from(format!("{base}}}")),
    };
    Arc::new(move |path: &str| {
        let (content_type, body): (&'static str, Bytes) = match path {
            "/" | "/index.html" => ("text/html; charset=utf-8", Bytes::from_static(INDEX_HTML)),
            "/app.js" => ("text/javascript; charset=utf-8", Bytes::from_static(APP_JS)),
            "/protocol.js" => (
                "text/javascript; charset=utf-8",
                Bytes::from_static(PROTOCOL_JS),
            ),
            "/style.css" => ("text/css; charset=utf-8", Bytes::from_static(STYLE_CSS)),
            "/vendor/protobuf.min.js" => (
                "text/javascript; charset=utf-8",
                Bytes::from_static(PROTOBUF_JS),
            ),
            "/protocol.proto" => (
                "text/plain; charset=utf-8",
                Bytes::from_static(PROTOCOL_PROTO),
            ),
            "/config.json" => ("application/json", config()),
            "/favicon.ico" => ("image/x-icon", Bytes::from_static(FAVICON_ICO)),
            _ => {
                counters.http_not_found.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        counters.http_served.fetch_add(1, Ordering::Relaxed);
        Some(WebPage { content_type, body })
    })
}
