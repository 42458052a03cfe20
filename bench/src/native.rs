//! A blocking client of Switchboard's native control protocol: JSON lines over TCP, one
//! request `{"id", "op", ...}` per line and one reply per request carrying the same `id`
//! (event lines, which carry an `event` key, are skipped).
//!
//! A target that does not know an operation answers `unknown_op`; the client turns that into
//! an error naming the operation, so a scenario against an engine that lacks it fails at once
//! with a clear message instead of hanging. A request waits at most [`REPLY_TIMEOUT`] (also
//! after Ctrl-C, so that the calls of an interrupted run are still deleted).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

/// Longest reply line accepted.
pub const MAX_LINE: usize = 1 << 20;

/// How long a request may wait for its reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to one engine.
#[derive(Debug)]
pub struct NativeClient {
    server: SocketAddr,
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    next_id: u64,
    line: Vec<u8>,
    /// Requests issued.
    pub requests: u64,
}

/// The error of an operation the target does not offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// The operation.
    pub op: String,
    /// The target.
    pub server: SocketAddr,
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the engine at {} does not support `{}` (unknown_op); this scenario needs an engine \
             that offers it",
            self.server, self.op
        )
    }
}

impl std::error::Error for Unsupported {}

impl NativeClient {
    /// Connects to `server` (at most 2 s).
    pub fn connect(server: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&server, Duration::from_secs(2))
            .with_context(|| format!("connecting to the native control port {server}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Self {
            server,
            writer: stream,
            reader,
            next_id: 1,
            line: Vec::with_capacity(4096),
            requests: 0,
        })
    }

    /// The engine this client talks to.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Sends `op` with `fields` and returns the reply object (without `id` and `ok`).
    pub fn request(&mut self, op: &str, fields: Value) -> Result<Map<String, Value>> {
        let id = self.next_id;
        self.next_id += 1;
        self.requests += 1;
        let mut req = match fields {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            _ => bail!("request fields must be an object"),
        };
        req.insert("id".into(), json!(id));
        req.insert("op".into(), json!(op));
        let mut text = serde_json::to_vec(&Value::Object(req))?;
        text.push(b'\n');
        self.writer
            .write_all(&text)
            .with_context(|| format!("sending `{op}` to {}", self.server))?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let value = self.read_line(op, deadline)?;
            let Value::Object(mut map) = value else {
                continue;
            };
            if map.contains_key("event") || map.get("id") != Some(&json!(id)) {
                continue;
            }
            if map.get("ok") == Some(&Value::Bool(true)) {
                map.remove("id");
                map.remove("ok");
                return Ok(map);
            }
            let error = map.get("error").cloned().unwrap_or(Value::Null);
            let code = error.get("code").and_then(Value::as_str).unwrap_or("?");
            let message = error.get("message").and_then(Value::as_str).unwrap_or("");
            if code == "unknown_op" {
                return Err(Unsupported {
                    op: op.to_string(),
                    server: self.server,
                }
                .into());
            }
            bail!("`{op}` on {} failed: {code}: {message}", self.server);
        }
    }

    fn read_line(&mut self, op: &str, deadline: Instant) -> Result<Value> {
        self.line.clear();
        loop {
            if Instant::now() >= deadline {
                bail!(
                    "`{op}`: no reply from {} within {} s",
                    self.server,
                    REPLY_TIMEOUT.as_secs()
                );
            }
            let before = self.line.len();
            match self.reader.read_until(b'\n', &mut self.line) {
                Ok(0) if self.line.len() == before => {
                    bail!(
                        "{} closed the control connection during `{op}`",
                        self.server
                    )
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e).context("reading a control reply"),
            }
            if self.line.len() > MAX_LINE {
                bail!("a control reply from {} is longer than 1 MiB", self.server);
            }
            if self.line.last() == Some(&b'\n') {
                return serde_json::from_slice(&self.line)
                    .with_context(|| format!("a control reply from {} is not JSON", self.server));
            }
        }
    }

    /// `call.create` → the call's id.
    pub fn call_create(&mut self, call: Option<&str>) -> Result<String> {
        let fields = match call {
            Some(c) => json!({ "call": c }),
            None => json!({}),
        };
        let reply = self.request("call.create", fields)?;
        reply
            .get("call")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .context("call.create reply has no `call`")
    }

    /// `leg.create`: a leg of `call` that sends to `remote`; returns the leg's id and the
    /// engine's address for it.
    pub fn leg_create(
        &mut self,
        call: &str,
        codecs: &[&str],
        remote: SocketAddr,
        hears: Option<Value>,
    ) -> Result<(String, SocketAddr)> {
        let mut fields = json!({
            "call": call,
            "codecs": codecs,
            "remote": remote.to_string(),
            "ptime": 20,
        });
        if let Some(h) = hears {
            fields["hears"] = h;
        }
        let reply = self.request("leg.create", fields)?;
        let leg = match reply.get("leg") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => bail!("leg.create reply has no `leg`"),
        };
        let local = reply
            .get("local")
            .and_then(Value::as_str)
            .context("leg.create reply has no `local`")?
            .parse()
            .context("leg.create `local` is not ip:port")?;
        Ok((leg, local))
    }

    /// `call.delete`.
    pub fn call_delete(&mut self, call: &str) -> Result<()> {
        self.request("call.delete", json!({ "call": call }))?;
        Ok(())
    }
}
