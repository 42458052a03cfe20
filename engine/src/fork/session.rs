//! The WebSocket side of a fork: one tokio task per fork on the control runtime.

use std::future::poll_fn;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::guard::{CloseReason, Inbound, InboundGuard};
use super::message::event;
use super::{FRAME_MS, ForkConfig, ForkError, ForkSessionSide, ForkShared};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Sink = SplitSink<Ws, Message>;
type Stream = SplitStream<Ws>;

/// Host, port and scheme of a fork URL.
#[derive(Debug, Clone)]
pub(crate) struct ParsedUrl {
    host: String,
    port: u16,
    tls: bool,
}

pub(crate) fn parse_url(url: &str) -> Result<ParsedUrl, ForkError> {
    let invalid = |reason: &str| ForkError::InvalidUrl {
        reason: reason.to_owned(),
    };
    let uri: tungstenite::http::Uri = url.parse().map_err(|_| invalid("not a URL"))?;
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err(invalid("the scheme must be ws or wss")),
    };
    let host = uri
        .host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .filter(|h| !h.is_empty())
        .ok_or_else(|| invalid("no host"))?;
    Ok(ParsedUrl {
        host: host.to_owned(),
        port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        tls,
    })
}

/// TLS client settings with the Mozilla roots, built once.
fn default_tls() -> Result<Arc<rustls::ClientConfig>, String> {
    static TLS: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    TLS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
            .map_err(|e| e.to_string())
    })
    .clone()
}

async fn connect(config: &ForkConfig, url: &ParsedUrl) -> Result<Ws, String> {
    let request = config
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let addrs = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("resolving {}: {e}", url.host))?;
    let mut last = format!("{} has no address", url.host);
    let mut tcp = None;
    for addr in addrs.take(4) {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| e.to_string())?;
        if let Some(size) = config.socket_send_buffer {
            // A smaller buffer only bounds what a stalled service holds up; failure is fine.
            let _ = socket.set_send_buffer_size(size);
        }
        match socket.connect(addr).await {
            Ok(stream) => {
                tcp = Some(stream);
                break;
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    let tcp = tcp.ok_or(last)?;
    let _ = tcp.set_nodelay(true);
    let connector = if url.tls {
        Connector::Rustls(match &config.tls {
            Some(tls) => Arc::clone(tls),
            None => default_tls()?,
        })
    } else {
        Connector::Plain
    };
    let largest = config
        .limits
        .max_binary_bytes
        .max(config.limits.max_text_bytes)
        .max(1024);
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(2 * largest))
        .max_frame_size(Some(2 * largest));
    let (ws, _) = tokio_tungstenite::client_async_tls_with_config(
        request,
        tcp,
        Some(ws_config),
        Some(connector),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(ws)
}

#[derive(Debug)]
enum Command {
    Stop,
    BargeIn,
}

/// Control of a running fork session; dropping it stops the session.
#[derive(Debug)]
pub struct ForkHandle {
    id: String,
    commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
    shared: Arc<ForkShared>,
}

impl ForkHandle {
    /// The fork id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Barge-in from control: the media side discards queued bot audio on its next frame,
    /// the service gets `{"event":"barge_in"}` and subscribers `fork.barge_in`. `false` if
    /// the session has ended or is flooded with commands.
    pub fn barge_in(&self) -> bool {
        self.commands.try_send(Command::BargeIn).is_ok()
    }

    /// Asks the session to send `stop`, close the connection and end.
    pub fn stop(&self) -> bool {
        self.commands.try_send(Command::Stop).is_ok()
    }

    /// Whether the session has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Counters shared with the media side.
    pub fn shared(&self) -> &Arc<ForkShared> {
        &self.shared
    }

    /// Waits for the session to end.
    pub async fn join(self) {
        let _ = self.task.await;
    }

    /// Ends the session at once, without a closing handshake.
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// Spawns fork sessions; see the [module docs](super).
#[derive(Debug)]
pub struct ForkSession;

impl ForkSession {
    /// Starts a session on `runtime`: it connects to `config.url`, sends `start` (the start
    /// message JSON, see [`super::StartMessage`]) as the first text frame of every
    /// connection, forwards the media side's frames and returns bot audio and events until
    /// stopped. Events go to `events` without waiting (dropped and counted when it is full).
    pub fn spawn(
        runtime: &tokio::runtime::Handle,
        config: ForkConfig,
        start: Value,
        side: ForkSessionSide,
        events: mpsc::Sender<Value>,
    ) -> Result<ForkHandle, ForkError> {
        config.validate()?;
        let url = parse_url(&config.url)?;
        let (commands_tx, commands) = mpsc::channel(16);
        let shared = Arc::clone(&side.shared);
        let id = config.id.clone();
        let runner = Runner {
            frame: vec![0; config.frame_samples()],
            url,
            start,
            audio: side.audio,
            bot: side.bot,
            shared: side.shared,
            events,
            commands,
            stats: Stats::default(),
            bot_tail: 0,
            last_bot: None,
            last_stats: Instant::now(),
            connected: false,
            config,
        };
        let task = runtime.spawn(runner.run());
        Ok(ForkHandle {
            id,
            commands: commands_tx,
            task,
            shared,
        })
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    frames_sent: u64,
    frames_dropped_late: u64,
    frames_dropped_backpressure: u64,
    frames_dropped_disconnected: u64,
    bot_messages: u64,
    bot_samples: u64,
    bot_samples_dropped: u64,
    text_messages: u64,
    connects: u64,
    reconnects: u64,
    barge_ins: u64,
    events_dropped: u64,
}

/// How a connection ended.
enum Ended {
    /// The session ends.
    Done(CloseReason),
    /// Reconnect: what failed, and the detail.
    Lost(&'static str, String),
}

enum Flow {
    Continue,
    End(Ended),
}

struct Runner {
    config: ForkConfig,
    url: ParsedUrl,
    start: Value,
    audio: rtrb::Consumer<i16>,
    bot: rtrb::Producer<i16>,
    shared: Arc<ForkShared>,
    events: mpsc::Sender<Value>,
    commands: mpsc::Receiver<Command>,
    stats: Stats,
    /// Scratch for one forked frame.
    frame: Vec<i16>,
    /// Samples of bot audio past the last whole frame.
    bot_tail: usize,
    last_bot: Option<Instant>,
    last_stats: Instant,
    connected: bool,
}

impl Runner {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(self.config.poll_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut failures = 0u32;
        let reason = loop {
            let ended = match self.connect_phase(&mut tick).await {
                Ok(ws) => {
                    let up = Instant::now();
                    self.stats.connects += 1;
                    self.connected = true;
                    let mut e = event("fork.connected", &self.config.id);
                    e["url"] = json!(self.config.url);
                    e["reconnects"] = json!(self.stats.reconnects);
                    self.emit(e);
                    let ended = self.connected(ws, &mut tick).await;
                    self.connected = false;
                    if up.elapsed() >= self.config.reconnect.stable_after {
                        failures = 0;
                    }
                    ended
                }
                Err(ended) => ended,
            };
            let (what, detail) = match ended {
                Ended::Done(reason) => break reason,
                Ended::Lost(what, detail) => (what, detail),
            };
            failures += 1;
            let gave_up = failures > self.config.reconnect.max_attempts;
            self.error(what, &detail, gave_up);
            if gave_up {
                break CloseReason::GaveUp;
            }
            let until = tokio::time::Instant::now() + self.config.reconnect.delay(failures);
            if let Some(reason) = self.wait_offline(&mut tick, until).await {
                break reason;
            }
            self.stats.reconnects += 1;
        };
        self.emit_stats();
        let mut e = event("fork.stopped", &self.config.id);
        e["reason"] = json!(reason.as_str());
        self.emit(e);
    }

    /// Connects within the connect timeout, dropping audio meanwhile.
    async fn connect_phase(&mut self, tick: &mut Interval) -> Result<Ws, Ended> {
        let config = self.config.clone();
        let url = self.url.clone();
        let attempt = tokio::time::timeout(config.connect_timeout, connect(&config, &url));
        tokio::pin!(attempt);
        loop {
            tokio::select! {
                biased;
                cmd = self.commands.recv() => match cmd {
                    Some(Command::BargeIn) => self.barge_in_offline("control"),
                    Some(Command::Stop) | None => return Err(Ended::Done(CloseReason::Stopped)),
                },
                r = &mut attempt => {
                    return match r {
                        Ok(Ok(ws)) => Ok(ws),
                        Ok(Err(detail)) => Err(Ended::Lost("connect_failed", detail)),
                        Err(_) => Err(Ended::Lost("connect_failed", "timed out".to_owned())),
                    };
                }
                _ = tick.tick() => {
                    if let Some(reason) = self.offline_tick() {
                        return Err(Ended::Done(reason));
                    }
                }
            }
        }
    }

    /// Waits out a back-off delay, dropping audio meanwhile.
    async fn wait_offline(
        &mut self,
        tick: &mut Interval,
        until: tokio::time::Instant,
    ) -> Option<CloseReason> {
        let sleep = tokio::time::sleep_until(until);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                cmd = self.commands.recv() => match cmd {
                    Some(Command::BargeIn) => self.barge_in_offline("control"),
                    Some(Command::Stop) | None => return Some(CloseReason::Stopped),
                },
                () = &mut sleep => return None,
                _ = tick.tick() => {
                    if let Some(reason) = self.offline_tick() {
                        return Some(reason);
                    }
                }
            }
        }
    }

    async fn connected(&mut self, ws: Ws, tick: &mut Interval) -> Ended {
        let (mut sink, mut stream): (Sink, Stream) = ws.split();
        let mut guard = InboundGuard::new(self.config.limits);
        let mut start = self.start.clone();
        if let Some(object) = start.as_object_mut() {
            object.insert("reconnects".to_owned(), json!(self.stats.reconnects));
        }
        let sent = tokio::time::timeout(
            self.config.connect_timeout,
            sink.send(Message::text(start.to_string())),
        )
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Ended::Lost("connection_lost", e.to_string()),
            Err(_) => return Ended::Lost("connection_lost", "start message timed out".into()),
        }
        // Audio queued while connecting is older than the deadline allows; drop it.
        self.drop_late();
        let bot_room = self.config.limits.max_binary_bytes / 2 + self.config.bot_frame_samples();
        let mut dirty = false;
        loop {
            let room = self.bot.slots() >= bot_room;
            let flow = tokio::select! {
                biased;
                cmd = self.commands.recv() => match cmd {
                    Some(Command::BargeIn) => self.barge_in(&mut sink, "control").await,
                    Some(Command::Stop) | None => {
                        Flow::End(self.close(&mut sink, CloseReason::Stopped).await)
                    }
                },
                _ = tick.tick() => self.online_tick(&mut sink, &mut dirty).await,
                r = poll_fn(|cx| sink.poll_flush_unpin(cx)), if dirty => {
                    dirty = false;
                    match r {
                        Ok(()) => Flow::Continue,
                        Err(e) => Flow::End(Ended::Lost("connection_lost", e.to_string())),
                    }
                }
                msg = stream.next(), if room => self.inbound(msg, &mut guard),
            };
            match flow {
                Flow::Continue => {}
                Flow::End(Ended::Done(reason)) if reason.is_cut_off() => {
                    return self.close(&mut sink, reason).await;
                }
                Flow::End(ended) => return ended,
            }
        }
    }

    async fn online_tick(&mut self, sink: &mut Sink, dirty: &mut bool) -> Flow {
        if self.media_ended() {
            return Flow::End(self.close(sink, CloseReason::MediaEnded).await);
        }
        if self.shared.barge_in_requested.swap(false, Ordering::AcqRel)
            && let Flow::End(e) = self.barge_in(sink, "media").await
        {
            return Flow::End(e);
        }
        self.flush_bot_tail();
        self.drop_late();
        let n = self.frame.len();
        while self.audio.slots() >= n {
            match poll_fn(|cx| sink.poll_ready_unpin(cx)).now_or_never() {
                // The socket does not take more now: the frames wait, and go late.
                None => {
                    *dirty = true;
                    break;
                }
                Some(Err(e)) => return Flow::End(Ended::Lost("connection_lost", e.to_string())),
                Some(Ok(())) => {}
            }
            if self.audio.pop_entire_slice(&mut self.frame).is_err() {
                break;
            }
            let mut bytes = Vec::with_capacity(n * 2);
            for s in &self.frame {
                bytes.extend_from_slice(&s.to_le_bytes());
            }
            match sink.start_send_unpin(Message::binary(bytes)) {
                Ok(()) => {
                    self.stats.frames_sent += 1;
                    *dirty = true;
                }
                Err(tungstenite::Error::WriteBufferFull(_)) => {
                    self.stats.frames_dropped_backpressure += 1;
                    *dirty = true;
                    break;
                }
                Err(e) => return Flow::End(Ended::Lost("connection_lost", e.to_string())),
            }
        }
        self.maybe_stats();
        Flow::Continue
    }

    /// Drops the frames that have waited longer than the send deadline.
    fn drop_late(&mut self) {
        let n = self.frame.len();
        let max_backlog = (self.config.send_deadline.as_millis() / u128::from(FRAME_MS)).max(1);
        let backlog = (self.audio.slots() / n) as u128;
        if backlog > max_backlog {
            let late = (backlog - max_backlog) as usize;
            if let Ok(chunk) = self.audio.read_chunk(late * n) {
                chunk.commit_all();
                self.stats.frames_dropped_late += late as u64;
            }
        }
    }

    fn media_ended(&self) -> bool {
        self.audio.is_abandoned() && self.audio.slots() < self.frame.len()
    }

    /// While disconnected: drop the audio, note barge-ins, emit stats.
    fn offline_tick(&mut self) -> Option<CloseReason> {
        if self.media_ended() {
            return Some(CloseReason::MediaEnded);
        }
        let n = self.frame.len();
        let frames = self.audio.slots() / n;
        if let Ok(chunk) = self.audio.read_chunk(frames * n) {
            chunk.commit_all();
            self.stats.frames_dropped_disconnected += frames as u64;
        }
        if self.shared.barge_in_requested.swap(false, Ordering::AcqRel) {
            self.barge_in_offline("media");
        }
        self.flush_bot_tail();
        self.maybe_stats();
        None
    }

    fn inbound(
        &mut self,
        msg: Option<Result<Message, tungstenite::Error>>,
        guard: &mut InboundGuard,
    ) -> Flow {
        let msg = match msg {
            None => return Flow::End(Ended::Lost("connection_lost", "connection closed".into())),
            Some(Err(e)) => {
                return match e {
                    tungstenite::Error::Capacity(_) => {
                        self.cut_off(CloseReason::MessageTooLarge, &e.to_string())
                    }
                    tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                    ) => Flow::End(Ended::Lost("connection_lost", e.to_string())),
                    tungstenite::Error::Protocol(_) | tungstenite::Error::Utf8(_) => {
                        self.cut_off(CloseReason::ProtocolError, &e.to_string())
                    }
                    _ => Flow::End(Ended::Lost("connection_lost", e.to_string())),
                };
            }
            Some(Ok(msg)) => msg,
        };
        let kind = match &msg {
            Message::Binary(b) => Inbound::Binary(b.len()),
            Message::Text(t) => Inbound::Text(t.len()),
            _ => Inbound::Control,
        };
        if let Err(reason) = guard.check(Instant::now(), kind) {
            let detail = match kind {
                Inbound::Binary(len) => format!("binary message of {len} bytes"),
                Inbound::Text(len) => format!("text message of {len} bytes"),
                Inbound::Control => "control message".to_owned(),
            };
            return self.cut_off(reason, &detail);
        }
        match msg {
            Message::Binary(bytes) => self.bot_audio(&bytes),
            Message::Text(text) => {
                self.stats.text_messages += 1;
                let mut e = event("fork.message", &self.config.id);
                e["text"] = json!(text.as_str());
                self.emit(e);
            }
            Message::Close(frame) => {
                let (code, why) = frame
                    .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
                    .unwrap_or((1005, String::new()));
                if code == 1000 {
                    return Flow::End(Ended::Done(CloseReason::ServiceClosed));
                }
                return Flow::End(Ended::Lost(
                    "connection_lost",
                    format!("closed by the service: {code} {why}"),
                ));
            }
            _ => {}
        }
        Flow::Continue
    }

    fn cut_off(&mut self, reason: CloseReason, detail: &str) -> Flow {
        self.error(reason.as_str(), detail, true);
        Flow::End(Ended::Done(reason))
    }

    fn bot_audio(&mut self, bytes: &[u8]) {
        self.stats.bot_messages += 1;
        let samples = bytes.len() / 2;
        if samples == 0 {
            return;
        }
        match self.bot.write_chunk_uninit(samples) {
            Ok(chunk) => {
                chunk.fill_from_iter(
                    bytes
                        .chunks_exact(2)
                        .map(|b| i16::from_le_bytes([b[0], b[1]])),
                );
                self.stats.bot_samples += samples as u64;
                self.bot_tail = (self.bot_tail + samples) % self.config.bot_frame_samples();
                self.last_bot = Some(Instant::now());
            }
            Err(_) => self.stats.bot_samples_dropped += samples as u64,
        }
    }

    /// Pads a trailing partial bot frame with silence once the service paused.
    fn flush_bot_tail(&mut self) {
        if self.bot_tail == 0
            || self
                .last_bot
                .is_some_and(|t| t.elapsed() < self.config.bot_flush_after)
        {
            return;
        }
        let pad = self.config.bot_frame_samples() - self.bot_tail;
        if let Ok(chunk) = self.bot.write_chunk_uninit(pad) {
            chunk.fill_from_iter(std::iter::repeat(0));
            self.bot_tail = 0;
        }
    }

    async fn barge_in(&mut self, sink: &mut Sink, source: &str) -> Flow {
        self.barge_in_offline(source);
        let msg = Message::text(json!({"event": "barge_in"}).to_string());
        match tokio::time::timeout(self.config.send_deadline, sink.send(msg)).await {
            Ok(Err(e)) => Flow::End(Ended::Lost("connection_lost", e.to_string())),
            // A service too slow to take it hears of the barge-in late; audio stopped anyway.
            Ok(Ok(())) | Err(_) => Flow::Continue,
        }
    }

    fn barge_in_offline(&mut self, source: &str) {
        self.stats.barge_ins += 1;
        self.shared.bot_flush_epoch.fetch_add(1, Ordering::AcqRel);
        self.bot_tail = 0;
        let mut e = event("fork.barge_in", &self.config.id);
        e["source"] = json!(source);
        self.emit(e);
    }

    /// Says goodbye (`stop` for a normal end), sends a close frame, bounded in time.
    async fn close(&mut self, sink: &mut Sink, reason: CloseReason) -> Ended {
        let limit = self.config.connect_timeout.min(Duration::from_secs(2));
        let bye = async {
            if !reason.is_cut_off() {
                let stop = json!({"event": "stop", "reason": reason.as_str()});
                sink.send(Message::text(stop.to_string())).await?;
            }
            sink.send(Message::Close(Some(CloseFrame {
                code: CloseCode::from(reason.close_code()),
                reason: reason.as_str().into(),
            })))
            .await
        };
        let _ = tokio::time::timeout(limit, bye).await;
        Ended::Done(reason)
    }

    fn error(&mut self, reason: &str, detail: &str, fatal: bool) {
        let mut e = event("fork.error", &self.config.id);
        e["reason"] = json!(reason);
        e["detail"] = json!(detail);
        e["fatal"] = json!(fatal);
        self.emit(e);
    }

    fn maybe_stats(&mut self) {
        let every = self.config.stats_interval;
        if !every.is_zero() && self.last_stats.elapsed() >= every {
            self.emit_stats();
        }
    }

    fn emit_stats(&mut self) {
        self.last_stats = Instant::now();
        let s = self.stats;
        let mut e = event("fork.stats", &self.config.id);
        let fields = json!({
            "connected": self.connected,
            "frames_queued": self.shared.frames_pushed(),
            "frames_sent": s.frames_sent,
            "frames_dropped_late": s.frames_dropped_late,
            "frames_dropped_backpressure": s.frames_dropped_backpressure,
            "frames_dropped_disconnected": s.frames_dropped_disconnected,
            "frames_dropped_ring_full": self.shared.frames_dropped_ring_full(),
            "bot_messages": s.bot_messages,
            "bot_samples": s.bot_samples,
            "bot_samples_dropped": s.bot_samples_dropped,
            "bot_frames_played": self.shared.bot_frames_played(),
            "text_messages": s.text_messages,
            "connects": s.connects,
            "reconnects": s.reconnects,
            "barge_ins": s.barge_ins,
            "events_dropped": s.events_dropped,
        });
        if let (Some(e), Value::Object(fields)) = (e.as_object_mut(), fields) {
            e.extend(fields);
        }
        self.emit(e);
    }

    fn emit(&mut self, event: Value) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.events.try_send(event) {
            self.stats.events_dropped += 1;
        }
    }
}
