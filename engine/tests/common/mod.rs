//! Shared helpers of the end-to-end tests: start a real `switchboard` process on loopback
//! with ports of its own, talk NG (JSON over UDP) to it, and send RTP through it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod ctl;
pub mod media;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// A free loopback port usable for both UDP and TCP.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port");
}

/// A running engine, killed when dropped.
pub struct Engine {
    pub child: Child,
    pub ng: SocketAddr,
    pub control: SocketAddr,
    pub http: SocketAddr,
    pub port_min: u16,
    pub port_max: u16,
    pub dir: PathBuf,
    /// The driver and extra flags it was started with (reused by [`Engine::restart`]).
    pub driver: String,
    pub extra: Vec<String>,
}

impl Engine {
    /// Starts `switchboard serve` with the given driver and extra flags; waits until the NG
    /// socket answers a ping.
    pub fn start(driver: &str, extra: &[&str]) -> Engine {
        let k = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sb-test-{}-{k}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self::spawn_in(driver, extra, dir, k)
    }

    /// Kills the process with SIGKILL (no clean-up of any kind), then starts a new one with
    /// the same driver, flags and state directory (on fresh ports); waits for NG ping.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let k = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let next = Self::spawn_in(&self.driver, &extra, self.dir.clone(), k);
        // The old process is gone; drop the old value without its clean-up.
        let old = std::mem::replace(self, next);
        std::mem::forget(old);
    }

    fn spawn_in(driver: &str, extra: &[&str], dir: PathBuf, k: u32) -> Engine {
        let slot = (std::process::id().wrapping_mul(7).wrapping_add(k * 13)) % 90;
        let port_min = 20000 + u16::try_from(slot).unwrap() * 100;
        let port_max = port_min + 99;
        let ng: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let control: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.arg("serve")
            .args(["--driver", driver])
            .args(["--listen-ng", &ng.to_string()])
            .args(["--listen-control", &control.to_string()])
            .args(["--listen-http", &http.to_string()])
            .args(["--port-min", &port_min.to_string()])
            .args(["--port-max", &port_max.to_string()])
            .args(["--workers", "2"])
            .args(["--state-dir", dir.to_str().unwrap()])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd.spawn().expect("starting switchboard");
        let e = Engine {
            child,
            ng,
            control,
            http,
            port_min,
            port_max,
            dir,
            driver: driver.to_owned(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = NgClient::new(e.ng);
        loop {
            if let Ok(r) =
                client.try_request(&json!({"command": "ping"}), Duration::from_millis(200))
            {
                assert_eq!(r["result"], "pong");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "switchboard did not answer NG ping"
            );
        }
        e
    }

    pub fn ng(&self) -> NgClient {
        NgClient::new(self.ng)
    }

    /// Sends SIGTERM and waits up to `within` for the process to exit; returns its status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        signal(&self.child, libc_sig::SIGTERM);
        wait_exit(&mut self.child, within)
    }

    /// Sends SIGINT and waits up to `within`.
    pub fn interrupt(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        signal(&self.child, libc_sig::SIGINT);
        wait_exit(&mut self.child, within)
    }

    /// GET a path on the HTTP port; returns (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.http, path, None)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

mod libc_sig {
    pub const SIGINT: &str = "INT";
    pub const SIGTERM: &str = "TERM";
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status();
}

pub fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Minimal HTTP/1.1 GET.
pub fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut body = String::new();
    let mut in_body = false;
    for line in r.lines() {
        let Ok(line) = line else { break };
        if in_body {
            body.push_str(&line);
            body.push('\n');
        } else if line.is_empty() {
            in_body = true;
        }
    }
    (code, body)
}

/// NG over UDP with JSON dictionaries.
pub struct NgClient {
    sock: UdpSocket,
    server: SocketAddr,
}

static COOKIE: AtomicU32 = AtomicU32::new(1);

impl NgClient {
    pub fn new(server: SocketAddr) -> NgClient {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        NgClient { sock, server }
    }

    /// Sends raw bytes, returns the raw reply (or None on timeout).
    pub fn raw(&self, msg: &[u8], timeout: Duration) -> Option<Vec<u8>> {
        self.sock.set_read_timeout(Some(timeout)).unwrap();
        self.sock.send_to(msg, self.server).unwrap();
        let mut buf = vec![0u8; 65536];
        match self.sock.recv_from(&mut buf) {
            Ok((n, _)) => Some(buf[..n].to_vec()),
            Err(_) => None,
        }
    }

    pub fn try_request(&self, dict: &Value, timeout: Duration) -> Result<Value, String> {
        let cookie = format!(
            "t{}_{}",
            std::process::id(),
            COOKIE.fetch_add(1, Ordering::Relaxed)
        );
        let msg = format!("{cookie} {dict}");
        let reply = self
            .raw(msg.as_bytes(), timeout)
            .ok_or_else(|| "timeout".to_string())?;
        let text = String::from_utf8(reply).map_err(|e| e.to_string())?;
        let (c, body) = text.split_once(' ').ok_or("no cookie")?;
        assert_eq!(c, cookie, "reply cookie");
        serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))
    }

    pub fn request(&self, dict: &Value) -> Value {
        self.try_request(dict, Duration::from_secs(5))
            .expect("NG request")
    }
}

/// The first `m=audio` port and connection address of an SDP body.
pub fn sdp_media_addr(sdp: &str) -> SocketAddr {
    let mut addr = None;
    let mut port = None;
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(c) = line
            .strip_prefix("c=IN IP4 ")
            .or(line.strip_prefix("c=IN IP6 "))
        {
            addr = Some(c.to_string());
        }
        if let Some(m) = line.strip_prefix("m=audio ") {
            if port.is_none() {
                port = m
                    .split_whitespace()
                    .next()
                    .and_then(|p| p.parse::<u16>().ok());
            }
        }
    }
    let ip: std::net::IpAddr = addr.expect("c= line").parse().unwrap();
    SocketAddr::new(ip, port.expect("m=audio line"))
}

/// An SDP offer/answer body for PCMU (+ telephone-event) on `port`.
pub fn sdp(user: &str, port: u16) -> String {
    format!(
        "v=0\r\no={user} 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
         a=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
    )
}

/// A PCMU RTP packet with a recognisable payload.
pub fn rtp_packet(seq: u16, ts: u32, ssrc: u32, fill: u8) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..160u32).map(|i| fill.wrapping_add(u8::try_from(i % 251).unwrap())));
    p
}

/// Receives datagrams on `sock` until `n` arrived or `within` passed.
pub fn recv_all(sock: &UdpSocket, n: usize, within: Duration) -> Vec<(Vec<u8>, SocketAddr)> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match sock.recv_from(&mut buf) {
            Ok((len, from)) => out.push((buf[..len].to_vec(), from)),
            Err(_) => break,
        }
    }
    out
}

/// A loopback UDP socket on an ephemeral port.
pub fn udp() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

/// True when `prog` is on the PATH.
pub fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}
