//! NG control servers: UDP (one datagram per message, reply to the sender) and TCP (messages
//! back to back, framed by cookie and one bencode value), both on the same address.

use std::net::SocketAddr;
use std::sync::Arc;

use switchboard_proto::ng::{TcpFramer, parse_datagram};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::Hub;

/// Largest NG message accepted (UDP datagram or TCP message).
pub const MAX_MESSAGE: usize = 256 * 1024;
/// NG requests in flight at once (UDP); more wait in the socket buffer.
const IN_FLIGHT: usize = 1024;
/// TCP connections at once.
const MAX_TCP: usize = 256;

/// The `result` of an encoded reply, as a metric label.
#[must_use]
pub fn reply_result(reply: &[u8]) -> &'static str {
    match parse_datagram(reply)
        .ok()
        .and_then(|m| {
            m.dict
                .get("result")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        })
        .as_deref()
    {
        Some("ok") => "ok",
        Some("pong") => "pong",
        Some("load limit") => "load_limit",
        Some("error") => "error",
        _ => "other",
    }
}

/// Serves NG over UDP until the socket fails.
pub async fn serve_udp(hub: Hub, sock: UdpSocket) {
    let sock = Arc::new(sock);
    let limit = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors from earlier replies surface here on some kernels: not fatal.
                debug!(error = %e, "NG UDP receive error");
                continue;
            }
        };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let data = buf[..n].to_vec();
        let hub = hub.clone();
        let sock = sock.clone();
        tokio::spawn(async move {
            if let Some(reply) = hub.ng(data).await {
                if let Err(e) = sock.send_to(&reply, from).await {
                    debug!(%from, error = %e, "NG reply not sent");
                }
            }
            drop(permit);
        });
    }
}

/// Serves NG over TCP until the listener fails.
pub async fn serve_tcp(hub: Hub, listener: TcpListener) {
    let conns = Arc::new(Semaphore::new(MAX_TCP));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "NG TCP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            debug!(%peer, "NG TCP connection refused: too many");
            continue;
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            tcp_connection(hub, stream, peer).await;
            drop(permit);
        });
    }
}

async fn tcp_connection(hub: Hub, mut stream: TcpStream, peer: SocketAddr) {
    let mut framer = TcpFramer::new(MAX_MESSAGE);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while let Some(msg) = framer.next_message() {
            match msg {
                Ok(m) => {
                    if let Some(reply) = hub.ng(m).await {
                        if stream.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    // The stream cannot be re-synchronised after a framing error: answer if
                    // possible, then close.
                    debug!(%peer, error = %e, "NG TCP framing error");
                    if let Some(reply) = e.reply() {
                        let _ = stream.write_all(&reply).await;
                    }
                    return;
                }
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => framer.push(&buf[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_labels() {
        assert_eq!(reply_result(b"x d6:result4:ponge"), "pong");
        assert_eq!(reply_result(b"x {\"result\":\"ok\"}"), "ok");
        assert_eq!(reply_result(b"x d6:result5:errore"), "error");
        assert_eq!(reply_result(b"garbage"), "other");
    }
}
