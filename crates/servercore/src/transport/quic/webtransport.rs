//! WebTransport (HTTP/3, ALPN `h3`) on the QUIC listener's port, for
//! browsers: a `CONNECT` with `:protocol webtransport` to the configured
//! path (`/wt`) opens a session; the client's first bidirectional stream
//! in it carries the packets and its datagrams (RFC 9297 framing: the
//! session's quarter stream id, then the payload) carry moves, exactly as
//! on a `servercore/1` connection. Other requests get 404 (or 400) and
//! the connection stays open until the handshake deadline.

use bytes::Bytes;
use h3::quic::BidiStream as _;
use h3_webtransport::server::{AcceptedBi, WebTransportSession};

/// The client's stream halves and what keeps the session alive.
pub(super) struct Accepted {
    /// Must live as long as the bridge: dropping it ends the session.
    pub session: WebTransportSession<h3_quinn::Connection, Bytes>,
    pub send: h3_webtransport::stream::SendStream<h3_quinn::SendStream<Bytes>, Bytes>,
    pub recv: h3_webtransport::stream::RecvStream<h3_quinn::RecvStream, Bytes>,
    /// The CONNECT stream's id (the datagrams' quarter stream id × 4).
    pub session_stream: u64,
}

/// Runs the HTTP/3 handshake on `conn` until a WebTransport session to
/// `path` is open and the client has opened its stream in it.
pub(super) async fn accept(conn: quinn::Connection, path: &str) -> Result<Accepted, String> {
    let mut h3 = h3::server::builder()
        .enable_webtransport(true)
        .enable_extended_connect(true)
        .enable_datagram(true)
        .max_webtransport_sessions(1)
        .send_grease(true)
        .build(h3_quinn::Connection::new(conn))
        .await
        .map_err(|error| format!("HTTP/3: {error}"))?;
    loop {
        let resolver = h3
            .accept()
            .await
            .map_err(|error| format!("HTTP/3: {error}"))?
            .ok_or("the connection closed before a CONNECT")?;
        let (request, mut stream) = resolver
            .resolve_request()
            .await
            .map_err(|error| format!("HTTP/3 request: {error}"))?;
        let is_web_transport = request.method() == http::Method::CONNECT
            && request.extensions().get::<h3::ext::Protocol>()
                == Some(&h3::ext::Protocol::WEB_TRANSPORT);
        if !is_web_transport || request.uri().path() != path {
            let status = if is_web_transport {
                http::StatusCode::NOT_FOUND
            } else {
                http::StatusCode::BAD_REQUEST
            };
            let response = http::Response::builder().status(status).body(()).unwrap();
            let _ = stream.send_response(response).await;
            let _ = stream.finish().await;
            continue;
        }
        let session = WebTransportSession::accept(request, stream, h3)
            .await
            .map_err(|error| format!("WebTransport: {error}"))?;
        loop {
            match session.accept_bi().await {
                Ok(Some(AcceptedBi::BidiStream(stream_session, stream))) => {
                    // The session id the client's stream names (its CONNECT
                    // stream's id); `session.session_id()` is not in the
                    // same units in h3 0.0.8.
                    let session_stream = h3::quic::StreamId::from(stream_session).into_inner();
                    let (send, recv) = stream.split();
                    return Ok(Accepted {
                        session,
                        send,
                        recv,
                        session_stream,
                    });
                }
                // Another request inside the session: not served.
                Ok(Some(AcceptedBi::Request(_, mut stream))) => {
                    let response = http::Response::builder()
                        .status(http::StatusCode::NOT_FOUND)
                        .body(())
                        .unwrap();
                    let _ = stream.send_response(response).await;
                    let _ = stream.finish().await;
                }
                Ok(None) => return Err("the session closed before its stream".into()),
                Err(error) => return Err(format!("WebTransport: {error}")),
            }
        }
    }
}
