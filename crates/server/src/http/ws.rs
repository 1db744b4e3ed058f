//! SIP over WebSocket (RFC 7118) on `/ws` of the HTTP listeners: what browser phones
//! (Odoo's SIP.js, JsSIP) speak. `ws://` on the HTTP listener, `wss://` on the HTTPS one.
//!
//! Each WebSocket message carries exactly one SIP message, so there is no stream framing:
//! a message is handed to the engine as it is, with the connection as its peer (requests
//! for a browser can only travel down the socket it registered on). The connection is
//! filed in the same table as TCP and TLS ones; when it closes, the engine drops the
//! registrations made over it. The server pings every 30 s, which keeps NAT bindings
//! open (Odoo's client sends no keep-alives) and notices browsers that vanished.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use bytes::Bytes;
use confero_sip::message::MAX_MESSAGE_LEN;
use confero_sip::transport::{Peer, Transport};

use super::auth::OverTls;
use crate::shell::ConnTable;
use crate::state::AppState;

/// How often the server pings a browser.
const PING_EVERY: Duration = Duration::from_secs(30);
/// A connection silent this long (not even answering pings) is closed.
const SILENT_FOR: Duration = Duration::from_secs(90);

pub(crate) fn router(state: AppState) -> Router {
    Router::new().route("/ws", get(upgrade)).with_state(state)
}

/// Whether the client asked for the `sip` subprotocol (RFC 7118 §4.1 makes it mandatory).
fn offers_sip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("sip"))
}

async fn upgrade(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    tls: Option<Extension<OverTls>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !offers_sip(&headers) {
        return (
            StatusCode::BAD_REQUEST,
            "SIP over WebSocket needs the \"sip\" subprotocol (RFC 7118)",
        )
            .into_response();
    }
    let Some(conns) = state.websocket.clone() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no SIP engine").into_response();
    };
    let addr = connect.map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0 .0);
    let transport = if tls.is_some() {
        Transport::Wss
    } else {
        Transport::Ws
    };
    let closing = state.closing.clone();
    ws.protocols(["sip"])
        .max_message_size(MAX_MESSAGE_LEN)
        .max_frame_size(MAX_MESSAGE_LEN)
        // Small buffers: an idle browser holds them (the defaults are 128 KiB each); SIP
        // messages fit, and longer ones are read in several chunks.
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        .on_upgrade(move |socket| serve(socket, conns, addr, transport, closing))
}

/// One browser's connection, until it closes, goes silent, or the server stops.
async fn serve(
    mut socket: WebSocket,
    conns: ConnTable,
    addr: SocketAddr,
    transport: Transport,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let Some((id, _, mut outgoing)) = conns.register(addr, transport, None) else {
        tracing::warn!(%addr, "too many connections; WebSocket refused");
        let _ = socket.send(Message::Close(None)).await;
        return;
    };
    let peer = Peer {
        transport,
        addr,
        conn: Some(id),
    };
    tracing::debug!(%addr, ?transport, "SIP WebSocket connected");
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            out = outgoing.recv() => {
                let Some(data) = out else { break };
                // SIP is text; a body that is not UTF-8 goes as a binary message.
                let msg = match String::from_utf8(data.to_vec()) {
                    Ok(text) => Message::Text(text.into()),
                    Err(_) => Message::Binary(data),
                };
                if socket.send(msg).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => {
                let Some(Ok(msg)) = incoming else { break };
                last_heard = tokio::time::Instant::now();
                let data = match msg {
                    Message::Text(t) => Bytes::copy_from_slice(t.as_bytes()),
                    Message::Binary(b) => b,
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                if data.iter().all(|b| matches!(b, b'\r' | b'\n')) {
                    // A CRLF keep-alive (RFC 5626 style, as SIP.js sends): answer in kind.
                    if !data.is_empty() && socket.send(Message::Text("\r\n".into())).await.is_err() {
                        break;
                    }
                    continue;
                }
                if !conns.received(data, peer).await {
                    break;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > SILENT_FOR {
                    tracing::info!(%addr, "SIP WebSocket silent; closing");
                    break;
                }
                if socket.send(Message::Ping(Bytes::new())).await.is_err() {
                    break;
                }
            }
            _ = closing.changed() => break,
        }
    }
    let _ = socket.send(Message::Close(None)).await;
    conns.closed(id, addr, transport).await;
    tracing::debug!(%addr, "SIP WebSocket closed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_sip_subprotocol_is_required() {
        let mut h = HeaderMap::new();
        assert!(!offers_sip(&h));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat, SIP"),
        );
        assert!(offers_sip(&h));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("sips"),
        );
        assert!(!offers_sip(&h));
    }
}
