//! WebSocket (RFC 6455): the opening handshake and the frame codec, for the
//! server side (accepting browser and library clients) and the client side
//! (the load tester).
//!
//! The codec streams: a binary frame's payload is unmasked straight into
//! the session's plain bytes as it arrives, so a large message is never
//! buffered whole; only frame headers (at most 14 bytes) and control frames
//! (at most 125 bytes) are held between reads. Outgoing server frames are
//! not masked, so a message is a small header buffer followed by the
//! session's own `Bytes`, never copied.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use sha1::{Digest, Sha1};

use super::escape_peer_text;
use crate::session::DisconnectReason;

/// The GUID of RFC 6455 section 1.3, appended to the key for the accept hash.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest opening handshake (request or response) accepted.
const MAX_HANDSHAKE: usize = 8 * 1024;
/// Most header lines parsed in a handshake.
const MAX_HEADERS: usize = 32;
/// Most bytes of a close frame's reason (a control frame carries at most
/// 125 bytes, two of them the code).
const MAX_CLOSE_REASON: usize = 123;

/// Close codes of RFC 6455 section 7.4.1 that the engine sends.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The endpoint is going away (server shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// A protocol error (bad framing, unmasked client frame, ...).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A data type the endpoint does not accept (text frames).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A close frame's reason was not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The peer broke a policy of the application: rate limits, the idle,
    /// login or packet deadlines, or an app-specific reason.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message larger than the configured maximum.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// This end failed (a session callback panicked).
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// A file a WebSocket listener serves to a plain HTTP `GET` (one that asks
/// for no upgrade): a browser client's page and scripts, on the same port
/// as the game's socket.
#[derive(Debug, Clone)]
pub struct WebPage {
    /// The `Content-Type` header's value.
    pub content_type: &'static str,
    /// The file's bytes.
    pub body: Bytes,
}

/// Finds the [`WebPage`] for a request path (`None`: 404).
pub type PageLookup = std::sync::Arc<dyn Fn(&str) -> Option<WebPage> + Send + Sync>;

/// Settings of the WebSocket transport, for a listener or a client.
#[derive(Clone)]
pub struct WebSocketConfig {
    pub(crate) max_message_size: usize,
    pub(crate) max_outgoing_message: usize,
    pub(crate) subprotocol: String,
    pub(crate) path: String,
    pub(crate) host: Option<String>,
    pub(crate) pages: Option<PageLookup>,
}

impl std::fmt::Debug for WebSocketConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketConfig")
            .field("max_message_size", &self.max_message_size)
            .field("max_outgoing_message", &self.max_outgoing_message)
            .field("subprotocol", &self.subprotocol)
            .field("path", &self.path)
            .field("host", &self.host)
            .field("pages", &self.pages.is_some())
            .finish()
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            max_message_size: 1 << 20,
            max_outgoing_message: 64 * 1024,
            subprotocol: "servercore".to_string(),
            path: "/".to_string(),
            host: None,
            pages: None,
        }
    }
}

impl WebSocketConfig {
    /// Largest message (all its fragments) accepted from the peer; a larger
    /// one is closed with code 1009 (default 1 MiB).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes.max(1);
        self
    }

    /// Outgoing messages are disconnected at `send` boundaries once they reach this
    /// size (default 64 KiB); a single larger `send` still goes as one
    /// message. Each message therefore carries whole sends (whole packets).
    pub fn max_outgoing_message(mut self, bytes: usize) -> Self {
        self.max_outgoing_message = bytes.max(1);
        self
    }

    /// Client side: the request path (default `/`).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// Client side: the `Host` header (default: the server's address).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Server side: answer a plain HTTP `GET` (no upgrade asked) with the
    /// page `pages` finds for its path, then close the connection; a path
    /// it does not know gets 404. Upgrades on `/` and `/ws` are unchanged.
    /// Such a connection ends with [`DisconnectReason::HttpServed`], a 404
    /// included: a page load is no failed handshake (`pages` sees every
    /// plain request, so it is where they are counted).
    pub fn pages(mut self, pages: PageLookup) -> Self {
        self.pages = Some(pages);
        self
    }
}

/// Which end of the connection this codec is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Server,
    Client,
}

enum State {
    /// Collecting the opening handshake (request or response).
    Handshake { buf: Vec<u8>, key: Option<String> },
    /// Frames flow.
    Open,
    /// A close frame was received or a protocol error ended the stream;
    /// further input is ignored.
    Done,
}

#[derive(Clone, Copy)]
enum FrameKind {
    Data,
    Control(u8),
}

struct Frame {
    kind: FrameKind,
    fin: bool,
    remaining: u64,
    mask: Option<[u8; 4]>,
    mask_offset: usize,
}

/// One WebSocket connection's codec state.
pub(crate) struct WebSocket {
    role: Role,
    max_message: usize,
    max_outgoing: usize,
    subprotocol: String,
    state: State,
    header: [u8; 14],
    header_len: usize,
    frame: Option<Frame>,
    /// Payload bytes of the data message in progress (fragments so far).
    message_len: u64,
    /// A fragmented data message is in progress.
    in_message: bool,
    control: Vec<u8>,
    close_sent: bool,
    mask_state: u64,
    pages: Option<PageLookup>,
}

/// What a read ended with, when it ended the connection.
pub(crate) type Ending = Option<DisconnectReason>;

impl WebSocket {
    /// A server-side codec that waits for the client's upgrade request.
    pub(crate) fn server(config: &WebSocketConfig) -> WebSocket {
        WebSocket::new(Role::Server, config, None)
    }

    /// A client-side codec; its upgrade request is appended to `out`.
    pub(crate) fn client(config: &WebSocketConfig, default_host: &str, out: &mut Vec<u8>) -> Self {
        let mut seed = [0u8; 16];
        fill_random(&mut seed);
        let key = base64::engine::general_purpose::STANDARD.encode(seed);
        let host = config.host.as_deref().unwrap_or(default_host);
        out.extend_from_slice(
            format!(
                "GET {} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Protocol: {}\r\n\r\n",
                config.path, config.subprotocol
            )
            .as_bytes(),
        );
        let mut codec = WebSocket::new(Role::Client, config, Some(key));
        codec.mask_state = u64::from_le_bytes(seed[..8].try_into().expect("8 bytes")) | 1;
        codec
    }

    fn new(role: Role, config: &WebSocketConfig, key: Option<String>) -> WebSocket {
        WebSocket {
            role,
            max_message: config.max_message_size,
            max_outgoing: config.max_outgoing_message,
            subprotocol: config.subprotocol.clone(),
            state: State::Handshake {
                buf: Vec::new(),
                key,
            },
            header: [0; 14],
            header_len: 0,
            frame: None,
            message_len: 0,
            in_message: false,
            control: Vec::new(),
            close_sent: false,
            mask_state: 0,
            pages: config.pages.clone(),
        }
    }

    /// True while a close frame can still be sent: the opening handshake
    /// is done and no close went out yet.
    pub(crate) fn can_send_close(&self) -> bool {
        self.is_open() && !self.close_sent
    }

    /// True once the opening handshake is done.
    pub(crate) fn is_open(&self) -> bool {
        !matches!(self.state, State::Handshake { .. })
    }

    /// Feeds bytes from the peer: binary payload goes to `plain`, bytes this
    /// end must send (handshake response, pong, close) to `out`.
    pub(crate) fn read(&mut self, input: &[u8], plain: &mut Vec<u8>, out: &mut Vec<u8>) -> Ending {
        let mut input = input;
        if let State::Handshake { .. } = self.state {
            match self.read_handshake(input, out) {
                Ok(Some(rest)) => input = &input[input.len() - rest..],
                Ok(None) => return None,
                Err(reason) => {
                    self.state = State::Done;
                    return Some(reason);
                }
            }
        }
        if !matches!(self.state, State::Open) {
            return None;
        }
        match self.read_frames(input, plain, out) {
            Ok(()) => None,
            Err(Failure::Protocol(code, detail)) => {
                self.state = State::Done;
                self.write_close(code, &detail, out);
                Some(DisconnectReason::WebSocket { code, detail })
            }
            Err(Failure::PeerClosed(reason)) => {
                self.state = State::Done;
                Some(reason)
            }
        }
    }

    // ---- handshake -------------------------------------------------------

    /// Returns how many bytes of `input` follow the handshake (`None`: the
    /// handshake is not complete yet).
    fn read_handshake(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<usize>, DisconnectReason> {
        let State::Handshake { buf, key } = &mut self.state else {
            return Ok(Some(input.len()));
        };
        buf.extend_from_slice(input);
        let Some(end) = find_header_end(buf) else {
            if buf.len() > MAX_HANDSHAKE {
                if self.role == Role::Server {
                    http_error(out, "431 Request Header Fields Too Large", "");
                }
                return Err(handshake_error("handshake larger than 8 KiB"));
            }
            return Ok(None);
        };
        let head = std::mem::take(buf);
        let key = key.take();
        // The end lies in this input (earlier reads did not hold it), so
        // what follows it is a suffix of `input`.
        let rest = head.len() - end;
        match self.role {
            Role::Server => self.answer_request(&head[..end], out)?,
            Role::Client => check_response(&head[..end], key.as_deref().unwrap_or_default())?,
        }
        self.state = State::Open;
        Ok(Some(rest))
    }

    fn answer_request(&self, head: &[u8], out: &mut Vec<u8>) -> Result<(), DisconnectReason> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => {
                http_error(out, "400 Bad Request", "");
                return Err(handshake_error("incomplete request"));
            }
            Err(httparse::Error::TooManyHeaders) => {
                http_error(out, "431 Request Header Fields Too Large", "");
                return Err(handshake_error("too many headers"));
            }
            Err(error) => {
                http_error(out, "400 Bad Request", "");
                return Err(handshake_error(&format!("bad HTTP request: {error}")));
            }
        }
        if request.method != Some("GET") {
            http_error(out, "405 Method Not Allowed", "Allow: GET\r\n");
            return Err(handshake_error("method is not GET"));
        }
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(h.value).ok())
        };
        let has_token = |name: &str, token: &str| {
            request
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .filter_map(|h| std::str::from_utf8(h.value).ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        let path = request.path.unwrap_or("");
        let path = path.split('?').next().unwrap_or("");
        let upgrade = has_token("Upgrade", "websocket");
        if let (false, Some(pages)) = (upgrade, &self.pages) {
            // A plain HTTP request to a listener that serves pages is a
            // page load, not a failed upgrade: answered, then closed by
            // this end, never counted or logged as a handshake failure.
            match pages(path) {
                Some(page) => {
                    out.extend_from_slice(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
                             Cache-Control: no-cache\r\nConnection: close\r\n\r\n",
                            page.content_type,
                            page.body.len()
                        )
                        .as_bytes(),
                    );
                    out.extend_from_slice(&page.body);
                }
                None => http_error(out, "404 Not Found", ""),
            }
            return Err(DisconnectReason::HttpServed);
        }
        if path != "/" && path != "/ws" {
            http_error(out, "404 Not Found", "");
            return Err(handshake_error(&format!("unknown path {path:?}")));
        }
        if !upgrade || !has_token("Connection", "upgrade") {
            http_error(out, "400 Bad Request", "");
            return Err(handshake_error("not a WebSocket upgrade request"));
        }
        if header("Sec-WebSocket-Version").map(str::trim) != Some("13") {
            http_error(out, "426 Upgrade Required", "Sec-WebSocket-Version: 13\r\n");
            return Err(handshake_error("unsupported Sec-WebSocket-Version"));
        }
        let Some(key) = header("Sec-WebSocket-Key").map(str::trim) else {
            http_error(out, "400 Bad Request", "");
            return Err(handshake_error("missing Sec-WebSocket-Key"));
        };
        let decoded = base64::engine::general_purpose::STANDARD.decode(key);
        if !matches!(decoded, Ok(ref raw) if raw.len() == 16) {
            http_error(out, "400 Bad Request", "");
            return Err(handshake_error(
                "Sec-WebSocket-Key is not 16 bytes of base64",
            ));
        }
        let protocol = if has_token("Sec-WebSocket-Protocol", &self.subprotocol) {
            format!("Sec-WebSocket-Protocol: {}\r\n", self.subprotocol)
        } else {
            String::new()
        };
        out.extend_from_slice(
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\n{protocol}\r\n",
                accept_key(key)
            )
            .as_bytes(),
        );
        Ok(())
    }

    // ---- frames ----------------------------------------------------------

    fn read_frames(
        &mut self,
        mut input: &[u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<(), Failure> {
        while !input.is_empty() {
            let Some(frame) = self.frame.as_mut() else {
                let used = self.read_header(input)?;
                input = &input[used..];
                if self.frame.as_ref().is_some_and(|f| f.remaining == 0) {
                    self.finish_frame(out)?;
                }
                continue;
            };
            let take = (frame.remaining.min(input.len() as u64)) as usize;
            let (chunk, rest) = input.split_at(take);
            input = rest;
            let target = match frame.kind {
                FrameKind::Data => &mut *plain,
                FrameKind::Control(_) => &mut self.control,
            };
            let start = target.len();
            target.extend_from_slice(chunk);
            if let Some(mask) = frame.mask {
                let offset = frame.mask_offset;
                for (i, byte) in target[start..].iter_mut().enumerate() {
                    *byte ^= mask[(offset + i) & 3];
                }
                frame.mask_offset = (offset + take) & 3;
            }
            frame.remaining -= take as u64;
            if frame.remaining == 0 {
                self.finish_frame(out)?;
            }
        }
        Ok(())
    }

    /// Collects and checks one frame header; returns the input bytes used.
    fn read_header(&mut self, input: &[u8]) -> Result<usize, Failure> {
        let mut used = 0;
        loop {
            let needed = self.header_needed();
            if self.header_len >= needed {
                break;
            }
            if used == input.len() {
                return Ok(used);
            }
            let take = (needed - self.header_len).min(input.len() - used);
            self.header[self.header_len..self.header_len + take]
                .copy_from_slice(&input[used..used + take]);
            self.header_len += take;
            used += take;
            if self.header_len == 2 {
                self.check_first_bytes()?;
            }
        }
        let header = &self.header[..self.header_len];
        let fin = header[0] & 0x80 != 0;
        let opcode = header[0] & 0x0F;
        let masked = header[1] & 0x80 != 0;
        let (len, at) = match header[1] & 0x7F {
            126 => (u16::from_be_bytes([header[2], header[3]]) as u64, 4),
            127 => {
                let len = u64::from_be_bytes(header[2..10].try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(protocol(
                        close_code::PROTOCOL_ERROR,
                        "length has its top bit set",
                    ));
                }
                (len, 10)
            }
            short => (short as u64, 2),
        };
        let mask = masked.then(|| header[at..at + 4].try_into().expect("4 bytes"));
        self.header_len = 0;
        let kind = if opcode >= 8 {
            FrameKind::Control(opcode)
        } else {
            if self.message_len.saturating_add(len) > self.max_message as u64 {
                return Err(protocol(
                    close_code::MESSAGE_TOO_BIG,
                    &format!("message larger than {} bytes", self.max_message),
                ));
            }
            self.message_len += len;
            self.in_message = !fin;
            if fin {
                self.message_len = 0;
            }
            FrameKind::Data
        };
        self.control.clear();
        self.frame = Some(Frame {
            kind,
            fin,
            remaining: len,
            mask,
            mask_offset: 0,
        });
        Ok(used)
    }

    /// Header bytes needed for the header collected so far.
    fn header_needed(&self) -> usize {
        if self.header_len < 2 {
            return 2;
        }
        let extended = match self.header[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    /// The checks the first two header bytes allow.
    fn check_first_bytes(&self) -> Result<(), Failure> {
        let (b0, b1) = (self.header[0], self.header[1]);
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7F;
        if b0 & 0x70 != 0 {
            return Err(protocol(close_code::PROTOCOL_ERROR, "reserved bits set"));
        }
        match self.role {
            Role::Server if !masked => {
                return Err(protocol(
                    close_code::PROTOCOL_ERROR,
                    "client frame not masked",
                ))
            }
            Role::Client if masked => {
                return Err(protocol(close_code::PROTOCOL_ERROR, "server frame masked"))
            }
            _ => {}
        }
        match opcode {
            0 if !self.in_message => Err(protocol(
                close_code::PROTOCOL_ERROR,
                "continuation frame without a message",
            )),
            0 => Ok(()),
            1 => Err(protocol(
                close_code::UNSUPPORTED_DATA,
                "text frames are not accepted",
            )),
            2 if self.in_message => Err(protocol(
                close_code::PROTOCOL_ERROR,
                "new message inside a fragmented message",
            )),
            2 => Ok(()),
            8..=10 if !fin => Err(protocol(
                close_code::PROTOCOL_ERROR,
                "fragmented control frame",
            )),
            8..=10 if len7 > 125 => Err(protocol(
                close_code::PROTOCOL_ERROR,
                "control frame longer than 125 bytes",
            )),
            8..=10 => Ok(()),
            other => Err(protocol(
                close_code::PROTOCOL_ERROR,
                &format!("unknown opcode {other}"),
            )),
        }
    }

    fn finish_frame(&mut self, out: &mut Vec<u8>) -> Result<(), Failure> {
        let frame = self.frame.take().expect("a frame in progress");
        let FrameKind::Control(opcode) = frame.kind else {
            debug_assert!(frame.fin || self.in_message);
            return Ok(());
        };
        match opcode {
            9 => {
                let payload = std::mem::take(&mut self.control);
                self.write_frame(0xA, &payload, out);
                self.control = payload;
                Ok(())
            }
            10 => Ok(()),
            _ => self.peer_close(out),
        }
    }

    fn peer_close(&mut self, out: &mut Vec<u8>) -> Result<(), Failure> {
        let payload = std::mem::take(&mut self.control);
        if payload.is_empty() {
            self.write_close(close_code::NORMAL, "", out);
            return Err(Failure::PeerClosed(DisconnectReason::ClosedByPeer));
        }
        if payload.len() == 1 {
            return Err(protocol(
                close_code::PROTOCOL_ERROR,
                "close payload of 1 byte",
            ));
        }
        let code = u16::from_be_bytes([payload[0], payload[1]]);
        if !valid_close_code(code) {
            return Err(protocol(
                close_code::PROTOCOL_ERROR,
                &format!("invalid close code {code}"),
            ));
        }
        let Ok(text) = std::str::from_utf8(&payload[2..]) else {
            return Err(protocol(
                close_code::INVALID_PAYLOAD,
                "close reason is not UTF-8",
            ));
        };
        self.write_close(code, "", out);
        let reason = match code {
            close_code::NORMAL | close_code::GOING_AWAY => DisconnectReason::ClosedByPeer,
            code => DisconnectReason::WebSocket {
                code,
                detail: format!(
                    "closed by peer: {}",
                    escape_peer_text(text, MAX_CLOSE_REASON)
                ),
            },
        };
        Err(Failure::PeerClosed(reason))
    }

    // ---- writing ---------------------------------------------------------

    /// Appends a close frame (once per connection).
    pub(crate) fn write_close(&mut self, code: u16, reason: &str, out: &mut Vec<u8>) {
        if self.close_sent || !self.is_open() {
            return;
        }
        self.close_sent = true;
        let mut payload = Vec::with_capacity(2 + reason.len().min(MAX_CLOSE_REASON));
        payload.extend_from_slice(&code.to_be_bytes());
        let mut cut = reason.len().min(MAX_CLOSE_REASON);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        payload.extend_from_slice(&reason.as_bytes()[..cut]);
        self.write_frame(0x8, &payload, out);
    }

    fn write_frame(&mut self, opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
        let mut header = [0u8; 14];
        let mask = (self.role == Role::Client).then(|| self.next_mask());
        let len = encode_header(&mut header, opcode, payload.len() as u64, mask);
        out.extend_from_slice(&header[..len]);
        let start = out.len();
        out.extend_from_slice(payload);
        if let Some(mask) = mask {
            for (i, byte) in out[start..].iter_mut().enumerate() {
                *byte ^= mask[i & 3];
            }
        }
    }

    /// Frames `plain` (drained) as binary messages cut at buffer boundaries,
    /// appending the wire buffers to `out`. A server's payload buffers are
    /// passed through; a client's are masked into one new buffer each
    /// message.
    pub(crate) fn write_messages(&mut self, plain: &mut Vec<Bytes>, out: &mut Vec<Bytes>) {
        let mut bufs = plain.drain(..).peekable();
        while bufs.peek().is_some() {
            let mut message = Vec::new();
            let mut len = 0usize;
            while let Some(next) = bufs.peek() {
                if !message.is_empty() && len + next.len() > self.max_outgoing {
                    break;
                }
                len += next.len();
                message.push(bufs.next().expect("peeked"));
            }
            let mut header = [0u8; 14];
            match self.role {
                Role::Server => {
                    let n = encode_header(&mut header, 0x2, len as u64, None);
                    out.push(Bytes::copy_from_slice(&header[..n]));
                    out.extend(message);
                }
                Role::Client => {
                    let mask = self.next_mask();
                    let n = encode_header(&mut header, 0x2, len as u64, Some(mask));
                    let mut wire = Vec::with_capacity(n + len);
                    wire.extend_from_slice(&header[..n]);
                    for buf in &message {
                        wire.extend_from_slice(buf);
                    }
                    for (i, byte) in wire[n..].iter_mut().enumerate() {
                        *byte ^= mask[i & 3];
                    }
                    out.push(Bytes::from(wire));
                }
            }
        }
    }

    /// Client masks: a per-connection xorshift seeded from the system's
    /// random source (RFC 6455 asks that they not be predictable by the
    /// page's script; this is a native client).
    fn next_mask(&mut self) -> [u8; 4] {
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.mask_state = x;
        (x as u32).to_le_bytes()
    }
}

enum Failure {
    /// This end closes with `code`.
    Protocol(u16, String),
    /// The peer closed; the reply close frame is written.
    PeerClosed(DisconnectReason),
}

fn protocol(code: u16, detail: &str) -> Failure {
    Failure::Protocol(code, detail.to_string())
}

fn handshake_error(detail: &str) -> DisconnectReason {
    DisconnectReason::WebSocketHandshake(detail.to_string())
}

/// Close codes a peer may send (RFC 6455 7.4.1 and the IANA registry).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Writes a frame header; returns its length.
fn encode_header(header: &mut [u8; 14], opcode: u8, len: u64, mask: Option<[u8; 4]>) -> usize {
    header[0] = 0x80 | opcode;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut at = if len < 126 {
        header[1] = mask_bit | len as u8;
        2
    } else if len <= u16::MAX as u64 {
        header[1] = mask_bit | 126;
        header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        header[1] = mask_bit | 127;
        header[2..10].copy_from_slice(&len.to_be_bytes());
        10
    };
    if let Some(mask) = mask {
        header[at..at + 4].copy_from_slice(&mask);
        at += 4;
    }
    at
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key + GUID)).
pub(crate) fn accept_key(key: &str) -> String {
    let mut hasher = Sha1::new();
    hasher.update(key.as_bytes());
    hasher.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(hasher.finalize())
}

fn find_header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

fn http_error(out: &mut Vec<u8>, status: &str, extra: &str) {
    out.extend_from_slice(
        format!("HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
}

fn check_response(head: &[u8], key: &str) -> Result<(), DisconnectReason> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(handshake_error("incomplete response")),
        Err(error) => return Err(handshake_error(&format!("bad HTTP response: {error}"))),
    }
    if response.code != Some(101) {
        return Err(handshake_error(&format!(
            "server answered {} {}",
            response.code.unwrap_or(0),
            escape_peer_text(response.reason.unwrap_or(""), 64)
        )));
    }
    let accept = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("Sec-WebSocket-Accept"))
        .map(|h| h.value);
    if accept != Some(accept_key(key).as_bytes()) {
        return Err(handshake_error("wrong or missing Sec-WebSocket-Accept"));
    }
    Ok(())
}

/// Fills `buf` from the operating system's random source, falling back to
/// the clock (masks and keys need to be unpredictable, not secret).
fn fill_random(buf: &mut [u8]) {
    use rustls::crypto::ring::default_provider;
    if default_provider().secure_random.fill(buf).is_err() {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte = (nanos >> ((i % 8) * 8)) as u8 ^ i as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn open_server() -> WebSocket {
        let mut ws = WebSocket::server(&WebSocketConfig::default().max_message_size(100));
        ws.state = State::Open;
        ws
    }

    fn masked(opcode_byte: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut frame = vec![opcode_byte, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        frame
    }

    #[test]
    fn fragmented_binary_split_anywhere_yields_the_payload() {
        let mut stream = masked(0x02, b"hello ");
        stream.extend(masked(0x89, b"ping"));
        stream.extend(masked(0x80, b"world"));
        for split in 0..stream.len() {
            let mut ws = open_server();
            let (mut plain, mut out) = (Vec::new(), Vec::new());
            assert!(ws.read(&stream[..split], &mut plain, &mut out).is_none());
            assert!(ws.read(&stream[split..], &mut plain, &mut out).is_none());
            assert_eq!(plain, b"hello world");
            assert_eq!(out, [0x8A, 4, b'p', b'i', b'n', b'g']);
        }
    }

    #[test]
    fn hostile_frames_get_their_close_codes() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (vec![0x82, 0x01, b'x'], close_code::PROTOCOL_ERROR),
            (masked(0xC2, b"x"), close_code::PROTOCOL_ERROR),
            (masked(0x83, b"x"), close_code::PROTOCOL_ERROR),
            (masked(0x09, b"x"), close_code::PROTOCOL_ERROR),
            (masked(0x81, b"x"), close_code::UNSUPPORTED_DATA),
            (masked(0x80, b"x"), close_code::PROTOCOL_ERROR),
            (masked(0x82, &[0; 101]), close_code::MESSAGE_TOO_BIG),
            (masked(0x88, &[0x03, 0xE7]), close_code::PROTOCOL_ERROR),
            (
                masked(0x88, &[0x03, 0xE8, 0xFF]),
                close_code::INVALID_PAYLOAD,
            ),
            (vec![0x89, 0xFE, 0, 200], close_code::PROTOCOL_ERROR),
        ];
        for (frame, code) in cases {
            let mut ws = open_server();
            let (mut plain, mut out) = (Vec::new(), Vec::new());
            let ending = ws.read(&frame, &mut plain, &mut out);
            assert!(
                matches!(ending, Some(DisconnectReason::WebSocket { code: c, .. }) if c == code),
                "{frame:02x?}: {ending:?}"
            );
            assert_eq!(&out[..4], &[0x88, out[1], (code >> 8) as u8, code as u8]);
            assert!(plain.is_empty());
        }
    }

    #[test]
    fn a_peers_close_reason_is_escaped() {
        let mut ws = open_server();
        let mut payload = 4000u16.to_be_bytes().to_vec();
        payload.extend_from_slice("bad\nline\u{1b}[31m \"q\" \\ é".as_bytes());
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        let ending = ws.read(&masked(0x88, &payload), &mut plain, &mut out);
        assert_eq!(
            ending,
            Some(DisconnectReason::WebSocket {
                code: 4000,
                detail: r#"closed by peer: bad\nline\u{1b}[31m \"q\" \\ é"#.to_string(),
            })
        );
    }

    #[test]
    fn a_servers_reason_phrase_is_escaped_and_cut() {
        let long = "x".repeat(200);
        let head = format!("HTTP/1.1 403 Go\taway {long}\r\n\r\n");
        let Err(DisconnectReason::WebSocketHandshake(detail)) =
            check_response(head.as_bytes(), "key")
        else {
            panic!("a 403 is refused");
        };
        assert!(
            detail.starts_with("server answered 403 Go\\taway xxx"),
            "{detail}"
        );
        assert!(detail.len() < 120, "{} bytes: {detail}", detail.len());
    }

    #[test]
    fn server_messages_cut_at_buffer_boundaries() {
        let mut ws = WebSocket::server(&WebSocketConfig::default().max_outgoing_message(10));
        let mut plain = vec![
            Bytes::from_static(b"aaaaaa"),
            Bytes::from_static(b"bbbb"),
            Bytes::from_static(b"cc"),
        ];
        let mut out = Vec::new();
        ws.write_messages(&mut plain, &mut out);
        let wire: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(wire, b"\x82\x0aaaaaaabbbb\x82\x02cc");
    }
}
