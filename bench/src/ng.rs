//! A blocking NG control client over UDP that speaks JSON dictionaries.
//!
//! A request is `COOKIE SP {json}`; the server replies with the same cookie and a JSON dictionary
//! (rtpengine answers in the encoding it was asked in). Every request gets a cookie no earlier
//! request of this client used, so a server's retransmission cache never answers a new request
//! with an old reply. A request that gets no reply within [`NgConfig::timeout`] is sent again
//! with the same cookie, up to [`NgConfig::tries`] times in all, as Kamailio does; replies that
//! carry another cookie (late answers to earlier tries) are skipped.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

/// Timing of NG requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NgConfig {
    /// How long to wait for a reply before sending the request again.
    pub timeout: Duration,
    /// How many times a request is sent before giving up.
    pub tries: u32,
}

impl Default for NgConfig {
    /// Kamailio's behaviour: 1 s timeout, 5 tries.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(1),
            tries: 5,
        }
    }
}

/// Request counters of one client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NgStats {
    /// Requests issued (a retried request counts once).
    pub requests: u64,
    /// Sends after the first, for requests that timed out once or more.
    pub retries: u64,
    /// Requests that never got a reply.
    pub failures: u64,
}

/// The parts of a call's legs the harness picks: one caller and one callee tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallIds {
    /// `call-id`.
    pub call_id: String,
    /// Caller's tag (`from-tag`).
    pub from_tag: String,
    /// Callee's tag (`to-tag`).
    pub to_tag: String,
}

/// An NG client bound to one server.
#[derive(Debug)]
pub struct NgClient {
    socket: UdpSocket,
    server: SocketAddr,
    config: NgConfig,
    cookie_prefix: String,
    next_cookie: u64,
    buf: Vec<u8>,
    stats: NgStats,
}

/// Largest reply accepted (a `delete` reply carries per-stream statistics).
const MAX_REPLY: usize = 65_535;

impl NgClient {
    /// A client that sends from an ephemeral port on `local_ip` to `server`.
    pub fn new(local_ip: IpAddr, server: SocketAddr, config: NgConfig) -> Result<Self> {
        let socket = UdpSocket::bind(SocketAddr::new(local_ip, 0))
            .with_context(|| format!("binding the NG client socket on {local_ip}"))?;
        socket
            .connect(server)
            .with_context(|| format!("connecting the NG client socket to {server}"))?;
        // The process id and the start time make cookies unique across runs too.
        let salt = crate::sys::monotonic_ns() % 1_000_000_007;
        Ok(Self {
            socket,
            server,
            config,
            cookie_prefix: format!("sbl{}x{salt}", std::process::id()),
            next_cookie: 0,
            buf: vec![0; MAX_REPLY],
            stats: NgStats::default(),
        })
    }

    /// The server this client talks to.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Counters so far.
    pub fn stats(&self) -> NgStats {
        self.stats
    }

    /// Sends `request` (a JSON dictionary with a `command`) and returns the reply dictionary.
    ///
    /// Fails when no reply comes after every try, when the reply is not a JSON dictionary, or
    /// when its `result` is neither `ok` nor `pong` (the message then carries `error-reason`).
    pub fn request(&mut self, request: &Value) -> Result<Map<String, Value>> {
        let command = request
            .get("command")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let cookie = format!("{}_{}", self.cookie_prefix, self.next_cookie);
        self.next_cookie += 1;
        self.stats.requests += 1;
        let mut message = Vec::with_capacity(256);
        message.extend_from_slice(cookie.as_bytes());
        message.push(b' ');
        serde_json::to_writer(&mut message, request).context("encoding an NG request")?;
        for attempt in 0..self.config.tries.max(1) {
            if attempt > 0 {
                self.stats.retries += 1;
            }
            self.socket
                .send(&message)
                .with_context(|| format!("sending NG {command} to {}", self.server))?;
            if let Some(reply) = self.await_reply(&cookie)? {
                return check_result(&command, reply);
            }
        }
        self.stats.failures += 1;
        bail!(
            "NG {command} to {}: no reply after {} tries of {} ms",
            self.server,
            self.config.tries.max(1),
            self.config.timeout.as_millis()
        )
    }

    /// Waits up to the timeout for the reply carrying `cookie`.
    fn await_reply(&mut self, cookie: &str) -> Result<Option<Map<String, Value>>> {
        let deadline = Instant::now() + self.config.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.socket.set_read_timeout(Some(left))?;
            let len = match self.socket.recv(&mut self.buf) {
                Ok(len) => len,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                // ICMP port unreachable surfaces as ConnectionRefused: treat like no reply.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    std::thread::sleep(left.min(Duration::from_millis(50)));
                    continue;
                }
                Err(e) => return Err(e).context("receiving an NG reply"),
            };
            if let Some(reply) = parse_reply(&self.buf[..len], cookie)? {
                return Ok(Some(reply));
            }
        }
    }

    /// `ping`; succeeds on `pong`.
    pub fn ping(&mut self) -> Result<()> {
        self.request(&json!({"command": "ping"}))?;
        Ok(())
    }

    /// `offer` from the caller with `sdp`; returns the SDP the relay rewrote for the callee.
    pub fn offer(&mut self, ids: &CallIds, sdp: &str) -> Result<String> {
        self.offer_with(ids, sdp, false)
    }

    /// `offer`, with `record call: yes` when `record` is set.
    pub fn offer_with(&mut self, ids: &CallIds, sdp: &str, record: bool) -> Result<String> {
        let mut req = json!({
            "command": "offer",
            "call-id": ids.call_id,
            "from-tag": ids.from_tag,
            "sdp": sdp,
        });
        if record {
            req["record call"] = json!("yes");
        }
        let reply = self.request(&req)?;
        reply_sdp("offer", reply)
    }

    /// `offer` with extra option keys (such as `codec`) merged into the request.
    pub fn offer_opts(&mut self, ids: &CallIds, sdp: &str, options: &Value) -> Result<String> {
        let mut req = json!({
            "command": "offer",
            "call-id": ids.call_id,
            "from-tag": ids.from_tag,
            "sdp": sdp,
        });
        if let (Some(req), Some(opts)) = (req.as_object_mut(), options.as_object()) {
            for (k, v) in opts {
                req.insert(k.clone(), v.clone());
            }
        }
        let reply = self.request(&req)?;
        reply_sdp("offer", reply)
    }

    /// `answer` from the callee with `sdp`; returns the SDP the relay rewrote for the caller.
    pub fn answer(&mut self, ids: &CallIds, sdp: &str) -> Result<String> {
        let reply = self.request(&json!({
            "command": "answer",
            "call-id": ids.call_id,
            "from-tag": ids.from_tag,
            "to-tag": ids.to_tag,
            "sdp": sdp,
        }))?;
        reply_sdp("answer", reply)
    }

    /// `delete` of the whole call, at once (`delete delay` 0: the relay frees its ports now
    /// rather than after its default delay).
    pub fn delete(&mut self, ids: &CallIds) -> Result<()> {
        self.request(&json!({
            "command": "delete",
            "call-id": ids.call_id,
            "from-tag": ids.from_tag,
            "delete delay": 0,
        }))?;
        Ok(())
    }
}

/// Splits `COOKIE SP DICT` and decodes the JSON dictionary; `Ok(None)` when the cookie is not
/// `cookie` (a stale reply).
pub fn parse_reply(datagram: &[u8], cookie: &str) -> Result<Option<Map<String, Value>>> {
    let Some(space) = datagram.iter().position(|&b| b == b' ') else {
        bail!("NG reply has no cookie separator");
    };
    if &datagram[..space] != cookie.as_bytes() {
        return Ok(None);
    }
    let body = &datagram[space + 1..];
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(_) => bail!("NG reply is not a dictionary"),
        Err(e) => {
            let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
            bail!("NG reply is not JSON ({e}): {shown:?}")
        }
    }
}

/// Accepts `ok` and `pong`; turns anything else into an error naming the reason.
fn check_result(command: &str, reply: Map<String, Value>) -> Result<Map<String, Value>> {
    match reply.get("result").and_then(Value::as_str) {
        Some("ok" | "pong") => Ok(reply),
        Some("error") => {
            let reason = reply
                .get("error-reason")
                .and_then(Value::as_str)
                .unwrap_or("(no reason given)");
            bail!("NG {command} failed: {reason}")
        }
        Some(other) => bail!("NG {command}: result {other:?}"),
        None => bail!("NG {command}: reply has no result"),
    }
}

fn reply_sdp(command: &str, mut reply: Map<String, Value>) -> Result<String> {
    match reply.remove("sdp") {
        Some(Value::String(sdp)) => Ok(sdp),
        _ => bail!("NG {command} reply carries no SDP"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_matching_reply() {
        let reply = parse_reply(br#"c_1 {"result":"ok","sdp":"v=0"}"#, "c_1")
            .unwrap()
            .unwrap();
        assert_eq!(reply["sdp"], "v=0");
        assert!(check_result("offer", reply).is_ok());
    }

    #[test]
    fn skips_other_cookies() {
        assert!(
            parse_reply(br#"c_0 {"result":"ok"}"#, "c_1")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn rejects_malformed_replies() {
        assert!(parse_reply(b"nospace", "c").is_err());
        assert!(parse_reply(b"c d6:result2:oke", "c").is_err());
        assert!(parse_reply(b"c [1]", "c").is_err());
    }

    #[test]
    fn error_results_name_the_reason() {
        let reply = parse_reply(
            br#"c {"result":"error","error-reason":"Unknown call-id"}"#,
            "c",
        )
        .unwrap()
        .unwrap();
        let err = check_result("answer", reply).unwrap_err().to_string();
        assert!(err.contains("Unknown call-id"), "{err}");
        let limit = parse_reply(br#"c {"result":"load limit"}"#, "c")
            .unwrap()
            .unwrap();
        assert!(check_result("offer", limit).is_err());
    }
}
