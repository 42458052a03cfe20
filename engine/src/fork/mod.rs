//! Media fork: a call's audio streamed to a WebSocket service (a bot, speech recognition),
//! and the service's audio played back into a leg.
//!
//! The wire protocol is described in `docs/fork.md`.
//!
//! # Threads and queues
//!
//! ```text
//!  media worker (one core)                     control runtime (tokio)
//!  ───────────────────────                     ───────────────────────
//!  ForkAudioTx::push_frame ──rtrb<i16>──────▶  ForkSession ──ws:// / wss://──▶ service
//!  BotAudioRx::pop_frame   ◀─rtrb<i16>──────   ForkSession ◀───────────────── service
//!  BotAudioRx::barge_in    ──ForkShared (atomics)──▶  {"event":"barge_in"}, fork.barge_in
//!                                              events ──tokio mpsc<serde_json::Value>──▶ subscribers
//! ```
//!
//! [`pipes`] builds both ends. The media side ([`ForkMediaSide`]) never blocks, locks or
//! allocates: [`ForkAudioTx::push_frame`] copies one 20 ms frame into a lock-free ring or, if
//! the ring is full, counts it as dropped; [`BotAudioRx::pop_frame`] copies one 20 ms frame of
//! bot audio out when a whole frame is queued. The session ([`ForkSession::spawn`]) runs on
//! the control runtime: it connects (TLS through rustls for `wss://`), sends the start
//! message, then sends each frame as a binary WebSocket message, and turns what the service
//! sends back into bot audio (binary) and `fork.message` events (text).
//!
//! # Bounds
//!
//! * A frame waits at most [`ForkConfig::send_deadline`]: frames beyond that backlog are
//!   dropped (`frames_dropped_late`); a frame the socket will not take is dropped
//!   (`frames_dropped_backpressure`); frames produced while disconnected are dropped
//!   (`frames_dropped_disconnected`); frames the ring could not hold are dropped on the media
//!   side (`frames_dropped_ring_full`). All are reported in `fork.stats` events.
//! * Bot audio is read from the socket only while its ring has room for the largest message,
//!   so a service sending faster than real time is slowed by TCP flow control, not buffered
//!   without bound.
//! * What the service sends is checked by [`InboundGuard`]: odd-length binary, oversized
//!   messages and more than the allowed messages per second cut the service off with a close
//!   code and a `fork.error` naming the [`CloseReason`]; it is not reconnected.
//! * Lost connections are retried with exponential back-off ([`ReconnectPolicy`]) and given
//!   up after a bounded number of consecutive failures.

mod guard;
mod message;
mod session;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

pub use guard::{CloseReason, Inbound, InboundGuard, InboundLimits};
pub use message::{ForkLeg, ForkWhat, PROTOCOL_VERSION, StartMessage, analytics_json};
pub use session::{ForkHandle, ForkSession};

/// Frame length, in ms.
pub const FRAME_MS: u32 = 20;

/// Errors from setting up a fork.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ForkError {
    /// A setting is out of range.
    #[error("invalid fork setting {name}")]
    InvalidConfig {
        /// Which setting.
        name: &'static str,
    },
    /// The URL is not a `ws://` or `wss://` URL with a host.
    #[error("invalid fork url: {reason}")]
    InvalidUrl {
        /// What is wrong.
        reason: String,
    },
}

/// Reconnection with exponential back-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Delay before the first retry.
    pub initial_delay: Duration,
    /// Longest delay between retries.
    pub max_delay: Duration,
    /// Retries in a row: the failure after this many consecutive failed or short-lived
    /// connections ends the fork with `gave_up` (0: never reconnect).
    pub max_attempts: u32,
    /// A connection that stayed up this long resets the failure count.
    pub stable_after: Duration,
}

impl Default for ReconnectPolicy {
    /// 200 ms doubling to 5 s, 6 attempts, stable after 10 s.
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_attempts: 6,
            stable_after: Duration::from_secs(10),
        }
    }
}

impl ReconnectPolicy {
    /// Delay before retry number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.initial_delay
            .saturating_mul(factor)
            .min(self.max_delay)
    }
}

/// Settings of one fork session.
#[derive(Debug, Clone)]
pub struct ForkConfig {
    /// The fork id, in every event.
    pub id: String,
    /// `ws://` or `wss://` URL of the service.
    pub url: String,
    /// Sample rate of the forked and the bot audio: 8000 or 16000.
    pub sample_rate: u32,
    /// Channels of the forked audio: 1, or 2 for stereo (bot audio is always mono).
    pub channels: u16,
    /// Longest time a frame may wait to be sent before it is dropped.
    pub send_deadline: Duration,
    /// How often the session looks at the rings.
    pub poll_interval: Duration,
    /// Bound on TCP connect, TLS and WebSocket handshakes, and on the closing handshake.
    pub connect_timeout: Duration,
    /// Retry policy.
    pub reconnect: ReconnectPolicy,
    /// Bounds on what the service sends.
    pub limits: InboundLimits,
    /// How often `fork.stats` is emitted (zero: only at the end).
    pub stats_interval: Duration,
    /// A trailing partial frame of bot audio is padded with silence and played after no more
    /// bot audio arrived for this long.
    pub bot_flush_after: Duration,
    /// TCP send buffer size to request, in bytes; bounds what a stalled service holds up.
    pub socket_send_buffer: Option<u32>,
    /// TLS settings for `wss://`; `None`: the Mozilla roots shipped in `webpki-roots`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl ForkConfig {
    /// Defaults for a fork of `channels` at `sample_rate` to `url`: 200 ms send deadline,
    /// 5 ms polling, 5 s connect timeout, stats every 5 s, 64 KiB send buffer.
    pub fn new(
        id: impl Into<String>,
        url: impl Into<String>,
        sample_rate: u32,
        channels: u16,
    ) -> Self {
        Self {
            id: id.into(),
            url: url.into(),
            sample_rate,
            channels,
            send_deadline: Duration::from_millis(200),
            poll_interval: Duration::from_millis(5),
            connect_timeout: Duration::from_secs(5),
            reconnect: ReconnectPolicy::default(),
            limits: InboundLimits::default(),
            stats_interval: Duration::from_secs(5),
            bot_flush_after: Duration::from_millis(60),
            socket_send_buffer: Some(64 * 1024),
            tls: None,
        }
    }

    /// Checks the settings and the URL.
    pub fn validate(&self) -> Result<(), ForkError> {
        let check = |ok: bool, name| {
            if ok {
                Ok(())
            } else {
                Err(ForkError::InvalidConfig { name })
            }
        };
        check(matches!(self.sample_rate, 8000 | 16000), "sample_rate")?;
        check(matches!(self.channels, 1 | 2), "channels")?;
        check(
            self.send_deadline >= Duration::from_millis(u64::from(FRAME_MS)),
            "send_deadline",
        )?;
        check(
            !self.poll_interval.is_zero() && self.poll_interval <= Duration::from_millis(20),
            "poll_interval",
        )?;
        check(!self.connect_timeout.is_zero(), "connect_timeout")?;
        check(
            self.limits.max_binary_bytes >= 2 && self.limits.max_binary_bytes <= 1 << 20,
            "limits.max_binary_bytes",
        )?;
        check(
            self.limits.max_text_bytes <= 1 << 20,
            "limits.max_text_bytes",
        )?;
        check(
            self.limits.max_messages_per_second > 0,
            "limits.max_messages_per_second",
        )?;
        session::parse_url(&self.url).map(|_| ())
    }

    /// Samples in one forked frame (all channels).
    pub fn frame_samples(&self) -> usize {
        (self.sample_rate / 50) as usize * usize::from(self.channels)
    }

    /// Samples in one bot audio frame (mono).
    pub fn bot_frame_samples(&self) -> usize {
        (self.sample_rate / 50) as usize
    }
}

/// State shared by the two sides of one fork: counters and flags, all atomics.
#[derive(Debug, Default)]
pub struct ForkShared {
    frames_dropped_ring_full: AtomicU64,
    frames_pushed: AtomicU64,
    bot_frames_played: AtomicU64,
    /// Set by the media side on barge-in; the session tells the service.
    barge_in_requested: AtomicBool,
    /// Bumped by the session to make the media side discard queued bot audio.
    bot_flush_epoch: AtomicU64,
}

impl ForkShared {
    /// Frames the media side could not queue.
    pub fn frames_dropped_ring_full(&self) -> u64 {
        self.frames_dropped_ring_full.load(Ordering::Relaxed)
    }

    /// Frames the media side queued.
    pub fn frames_pushed(&self) -> u64 {
        self.frames_pushed.load(Ordering::Relaxed)
    }

    /// Bot audio frames the media side took.
    pub fn bot_frames_played(&self) -> u64 {
        self.bot_frames_played.load(Ordering::Relaxed)
    }
}

/// The media worker's end of the audio going to the service.
#[derive(Debug)]
pub struct ForkAudioTx {
    producer: rtrb::Producer<i16>,
    frame_samples: usize,
    shared: Arc<ForkShared>,
}

impl ForkAudioTx {
    /// Queues one 20 ms frame (interleaved when stereo). Never blocks: a frame of the wrong
    /// length or one the ring cannot hold is counted as dropped and `false` is returned.
    pub fn push_frame(&mut self, samples: &[i16]) -> bool {
        if samples.len() == self.frame_samples && self.producer.push_entire_slice(samples).is_ok() {
            self.shared.frames_pushed.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.shared
                .frames_dropped_ring_full
                .fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Samples in one frame.
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// Whether the session has ended (its end of the ring is gone).
    pub fn is_closed(&self) -> bool {
        self.producer.is_abandoned()
    }
}

/// The media worker's end of the bot audio coming from the service.
#[derive(Debug)]
pub struct BotAudioRx {
    consumer: rtrb::Consumer<i16>,
    frame_samples: usize,
    shared: Arc<ForkShared>,
    flush_epoch: u64,
}

impl BotAudioRx {
    /// Copies the next 20 ms of bot audio into `out` (which must hold one mono frame) when a
    /// whole frame is queued; `false` when there is none (the bot is not talking).
    pub fn pop_frame(&mut self, out: &mut [i16]) -> bool {
        let epoch = self.shared.bot_flush_epoch.load(Ordering::Acquire);
        if epoch != self.flush_epoch {
            self.flush_epoch = epoch;
            self.discard();
        }
        let Some(out) = out.get_mut(..self.frame_samples) else {
            return false;
        };
        if self.consumer.pop_entire_slice(out).is_ok() {
            self.shared
                .bot_frames_played
                .fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Whether bot audio is queued.
    pub fn has_audio(&self) -> bool {
        self.consumer.slots() >= self.frame_samples
    }

    /// Barge-in detected on the media side: discards the queued bot audio at once and asks
    /// the session to tell the service and the subscribers. Returns the samples discarded.
    pub fn barge_in(&mut self) -> usize {
        let discarded = self.discard();
        self.shared
            .barge_in_requested
            .store(true, Ordering::Release);
        discarded
    }

    fn discard(&mut self) -> usize {
        let n = self.consumer.slots();
        if let Ok(chunk) = self.consumer.read_chunk(n) {
            chunk.commit_all();
        }
        n
    }

    /// Samples in one frame.
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }
}

/// Both ends the media worker keeps.
#[derive(Debug)]
pub struct ForkMediaSide {
    /// Audio to the service.
    pub audio: ForkAudioTx,
    /// Bot audio from the service.
    pub bot: BotAudioRx,
}

/// Both ends the session takes; see [`ForkSession::spawn`].
#[derive(Debug)]
pub struct ForkSessionSide {
    pub(crate) audio: rtrb::Consumer<i16>,
    pub(crate) bot: rtrb::Producer<i16>,
    pub(crate) shared: Arc<ForkShared>,
}

impl ForkSessionSide {
    /// The counters and flags shared with the media side.
    pub fn shared(&self) -> &Arc<ForkShared> {
        &self.shared
    }
}

/// Builds the rings of one fork: `audio_ms` of forked audio (at least the send deadline plus
/// two frames) and `bot_ms` of bot audio (plus room for the largest bot message).
pub fn pipes(config: &ForkConfig, audio_ms: u32, bot_ms: u32) -> (ForkMediaSide, ForkSessionSide) {
    let frames = |ms: u32| (ms.max(FRAME_MS) / FRAME_MS) as usize;
    let deadline_frames = (config.send_deadline.as_millis() / u128::from(FRAME_MS)) as usize;
    let audio_frames = frames(audio_ms).max(deadline_frames + 2);
    // The session reads from the socket only while a largest message fits.
    let bot_samples = frames(bot_ms) * config.bot_frame_samples()
        + config.limits.max_binary_bytes / 2
        + config.bot_frame_samples();
    let (audio_tx, audio_rx) = rtrb::RingBuffer::new(audio_frames * config.frame_samples());
    let (bot_tx, bot_rx) = rtrb::RingBuffer::new(bot_samples);
    let shared = Arc::new(ForkShared::default());
    (
        ForkMediaSide {
            audio: ForkAudioTx {
                producer: audio_tx,
                frame_samples: config.frame_samples(),
                shared: Arc::clone(&shared),
            },
            bot: BotAudioRx {
                consumer: bot_rx,
                frame_samples: config.bot_frame_samples(),
                shared: Arc::clone(&shared),
                flush_epoch: 0,
            },
        },
        ForkSessionSide {
            audio: audio_rx,
            bot: bot_tx,
            shared,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_config_validation_and_backoff() {
        let ok = ForkConfig::new("f", "ws://127.0.0.1:9/x", 8000, 2);
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(ok.frame_samples(), 320);
        assert_eq!(ok.bot_frame_samples(), 160);
        for url in ["http://x/", "ws://", "not a url", "wss:///path"] {
            let c = ForkConfig::new("f", url, 8000, 1);
            assert!(
                matches!(c.validate(), Err(ForkError::InvalidUrl { .. })),
                "{url}"
            );
        }
        let c = ForkConfig::new("f", "ws://h/", 11025, 1);
        assert!(c.validate().is_err());
        let p = ReconnectPolicy::default();
        assert_eq!(p.delay(1), Duration::from_millis(200));
        assert_eq!(p.delay(3), Duration::from_millis(800));
        assert_eq!(p.delay(40), Duration::from_secs(5));
    }

    #[test]
    fn fork_media_side_never_blocks_and_counts() {
        let config = ForkConfig::new("f", "ws://127.0.0.1:9/", 8000, 1);
        let (mut media, mut session) = pipes(&config, 100, 100);
        let frame = [7i16; 160];
        let mut pushed = 0;
        for _ in 0..1000 {
            if media.audio.push_frame(&frame) {
                pushed += 1;
            }
        }
        assert!((10..1000).contains(&pushed));
        assert!(!media.audio.push_frame(&[0; 3]));
        let shared = Arc::clone(session.shared());
        assert_eq!(shared.frames_pushed(), pushed);
        assert_eq!(shared.frames_dropped_ring_full(), 1001 - pushed);

        // Bot audio: whole frames only; barge-in discards.
        let mut out = [0i16; 160];
        assert!(!media.bot.pop_frame(&mut out));
        session.bot.push_entire_slice(&[5; 400]).unwrap();
        assert!(media.bot.pop_frame(&mut out));
        assert_eq!(out[0], 5);
        assert!(media.bot.has_audio());
        assert_eq!(media.bot.barge_in(), 240);
        assert!(!media.bot.has_audio());
        assert!(shared.barge_in_requested.load(Ordering::Relaxed));
        // A flush requested by the session is applied on the next pop.
        session.bot.push_entire_slice(&[5; 320]).unwrap();
        shared.bot_flush_epoch.fetch_add(1, Ordering::Release);
        assert!(!media.bot.pop_frame(&mut out));
        assert!(!media.bot.pop_frame(&mut [0; 10]));
    }
}
