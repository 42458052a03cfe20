//! Checks on what a fork service sends: sizes, shapes and rate. Plain logic, time as an
//! argument.

use std::time::{Duration, Instant};

/// Why a fork connection was closed by the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// `fork.stop`, or the handle was dropped.
    Stopped,
    /// The media side ended (the call or leg is gone).
    MediaEnded,
    /// The service closed the connection normally (close code 1000): it is done.
    ServiceClosed,
    /// A binary frame with an odd number of bytes (not whole L16 samples).
    OddBinaryLength,
    /// A binary frame over [`InboundLimits::max_binary_bytes`].
    BinaryTooLarge,
    /// A text frame over [`InboundLimits::max_text_bytes`].
    TextTooLarge,
    /// A message over the WebSocket message or frame size limit.
    MessageTooLarge,
    /// More than [`InboundLimits::max_messages_per_second`] messages in one second.
    RateExceeded,
    /// A WebSocket protocol violation (bad framing, invalid UTF-8 in text).
    ProtocolError,
    /// Reconnecting failed [`super::ReconnectPolicy::max_attempts`] times in a row.
    GaveUp,
}

impl CloseReason {
    /// The reason as it appears in events and close frames.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::MediaEnded => "media_ended",
            Self::ServiceClosed => "service_closed",
            Self::OddBinaryLength => "odd_binary_length",
            Self::BinaryTooLarge => "binary_too_large",
            Self::TextTooLarge => "text_too_large",
            Self::MessageTooLarge => "message_too_large",
            Self::RateExceeded => "rate_exceeded",
            Self::ProtocolError => "protocol_error",
            Self::GaveUp => "gave_up",
        }
    }

    /// The WebSocket close code sent with it (RFC 6455 §7.4.1).
    pub fn close_code(self) -> u16 {
        match self {
            Self::Stopped | Self::MediaEnded | Self::ServiceClosed => 1000,
            Self::OddBinaryLength => 1003,
            Self::BinaryTooLarge | Self::TextTooLarge | Self::MessageTooLarge => 1009,
            Self::RateExceeded => 1008,
            Self::ProtocolError => 1002,
            Self::GaveUp => 1001,
        }
    }

    /// Whether the service misbehaved (the session is cut off and not reconnected).
    pub fn is_cut_off(self) -> bool {
        !matches!(
            self,
            Self::Stopped | Self::MediaEnded | Self::ServiceClosed | Self::GaveUp
        )
    }
}

/// Bounds on what a fork service may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundLimits {
    /// Largest binary (bot audio) message, in bytes.
    pub max_binary_bytes: usize,
    /// Largest text message, in bytes.
    pub max_text_bytes: usize,
    /// Most messages of any kind in one second.
    pub max_messages_per_second: u32,
}

impl Default for InboundLimits {
    /// 64 KiB binary (2 s of 16 kHz mono), 16 KiB text, 200 messages per second.
    fn default() -> Self {
        Self {
            max_binary_bytes: 64 * 1024,
            max_text_bytes: 16 * 1024,
            max_messages_per_second: 200,
        }
    }
}

/// What arrived from the service, as far as the guard cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// A binary message of this many bytes.
    Binary(usize),
    /// A text message of this many bytes.
    Text(usize),
    /// A ping, pong or close.
    Control,
}

/// Applies [`InboundLimits`] to each message; one per connection.
#[derive(Debug, Clone)]
pub struct InboundGuard {
    limits: InboundLimits,
    window_start: Option<Instant>,
    in_window: u32,
}

impl InboundGuard {
    /// A guard with these limits.
    pub fn new(limits: InboundLimits) -> Self {
        Self {
            limits,
            window_start: None,
            in_window: 0,
        }
    }

    /// Checks one message received at `now`; an error means cut the service off.
    pub fn check(&mut self, now: Instant, message: Inbound) -> Result<(), CloseReason> {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < Duration::from_secs(1) => {
                self.in_window += 1;
            }
            _ => {
                self.window_start = Some(now);
                self.in_window = 1;
            }
        }
        if self.in_window > self.limits.max_messages_per_second {
            return Err(CloseReason::RateExceeded);
        }
        match message {
            Inbound::Binary(len) if len > self.limits.max_binary_bytes => {
                Err(CloseReason::BinaryTooLarge)
            }
            Inbound::Binary(len) if len % 2 != 0 => Err(CloseReason::OddBinaryLength),
            Inbound::Text(len) if len > self.limits.max_text_bytes => {
                Err(CloseReason::TextTooLarge)
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_sizes_shapes_and_rate() {
        let limits = InboundLimits {
            max_binary_bytes: 640,
            max_text_bytes: 100,
            max_messages_per_second: 5,
        };
        let t0 = Instant::now();
        let mut g = InboundGuard::new(limits);
        assert_eq!(g.check(t0, Inbound::Binary(640)), Ok(()));
        assert_eq!(
            g.check(t0, Inbound::Binary(642)),
            Err(CloseReason::BinaryTooLarge)
        );
        assert_eq!(
            g.check(t0, Inbound::Binary(63)),
            Err(CloseReason::OddBinaryLength)
        );
        assert_eq!(
            g.check(t0, Inbound::Text(101)),
            Err(CloseReason::TextTooLarge)
        );
        assert_eq!(g.check(t0, Inbound::Text(100)), Ok(()));
        // Sixth message in the same second.
        assert_eq!(
            g.check(t0 + Duration::from_millis(900), Inbound::Control),
            Err(CloseReason::RateExceeded)
        );
        // A new window.
        let mut g = InboundGuard::new(limits);
        for i in 0..20u64 {
            let now = t0 + Duration::from_millis(250 * i);
            assert_eq!(g.check(now, Inbound::Text(1)), Ok(()), "{i}");
        }
        assert!(CloseReason::RateExceeded.is_cut_off());
        assert!(!CloseReason::Stopped.is_cut_off());
        assert_eq!(CloseReason::TextTooLarge.close_code(), 1009);
    }
}
