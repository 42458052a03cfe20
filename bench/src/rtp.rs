//! The RTP packets the harness sends (RFC 3550 §5.1) and the probe each one carries.
//!
//! A packet is a 12-byte RTP header (version 2, no CSRC, no extension, marker clear) and a
//! payload of the configured size. The payload opens with a [`Probe`] — magic, stream index,
//! per-stream send counter and the send time on `CLOCK_MONOTONIC` — and the rest is G.711 µ-law
//! audio from [`Audio`], a deterministic speech-like signal, so that the relay moves bytes that
//! look like a real call.

/// Length of the fixed RTP header, RFC 3550 §5.1.
pub const RTP_HEADER_LEN: usize = 12;

/// Length of the probe at the start of every payload.
pub const PROBE_LEN: usize = 20;

/// The first four payload bytes of every packet the harness sends.
pub const PROBE_MAGIC: [u8; 4] = *b"SBLD";

/// RTP payload type of PCMU, RFC 3551 §6.
pub const PT_PCMU: u8 = 0;

/// G.711 sample rate, RFC 3551 §4.5.14.
pub const PCMU_CLOCK_RATE: u32 = 8_000;

/// What the sender writes into each payload and the receiver reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Index of the stream among all streams of the run.
    pub stream: u32,
    /// How many packets the stream had sent before this one.
    pub counter: u32,
    /// `CLOCK_MONOTONIC` nanoseconds just before the packet was handed to the kernel.
    pub sent_ns: u64,
}

/// The RTP header fields the harness sets per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    /// Payload type (7 bits).
    pub payload_type: u8,
    /// Sequence number, RFC 3550 §5.1.
    pub sequence: u16,
    /// Media timestamp in clock-rate units.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
}

/// A received packet that the harness recognises as one of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The header as it arrived.
    pub header: RtpHeader,
    /// The probe from the payload.
    pub probe: Probe,
}

/// Writes a packet into `buf`: header, probe, then `audio` up to `payload_len` payload bytes.
///
/// Returns the packet length, or `None` when `buf` is too small or `payload_len` cannot hold the
/// probe.
pub fn write_packet(
    buf: &mut [u8],
    header: &RtpHeader,
    probe: &Probe,
    payload_len: usize,
    audio: &[u8],
) -> Option<usize> {
    let len = RTP_HEADER_LEN + payload_len;
    if payload_len < PROBE_LEN || buf.len() < len {
        return None;
    }
    buf[0] = 0x80;
    buf[1] = header.payload_type & 0x7f;
    buf[2..4].copy_from_slice(&header.sequence.to_be_bytes());
    buf[4..8].copy_from_slice(&header.timestamp.to_be_bytes());
    buf[8..12].copy_from_slice(&header.ssrc.to_be_bytes());
    let payload = &mut buf[RTP_HEADER_LEN..len];
    payload[0..4].copy_from_slice(&PROBE_MAGIC);
    payload[4..8].copy_from_slice(&probe.stream.to_be_bytes());
    payload[8..12].copy_from_slice(&probe.counter.to_be_bytes());
    payload[12..20].copy_from_slice(&probe.sent_ns.to_be_bytes());
    let rest = &mut payload[PROBE_LEN..];
    let n = rest.len().min(audio.len());
    rest[..n].copy_from_slice(&audio[..n]);
    rest[n..].fill(0xff);
    Some(len)
}

/// Reads the fixed RTP header of any version-2 packet (payloads the target re-encoded carry
/// no probe); `None` for anything else.
pub fn parse_header(packet: &[u8]) -> Option<RtpHeader> {
    if packet.len() < RTP_HEADER_LEN || packet[0] >> 6 != 2 {
        return None;
    }
    Some(RtpHeader {
        payload_type: packet[1] & 0x7f,
        sequence: u16::from_be_bytes([packet[2], packet[3]]),
        timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
        ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
    })
}

/// Writes a packet with `header` and an opaque `payload` into `buf`; returns its length, or
/// `None` when `buf` is too small.
pub fn write_plain(buf: &mut [u8], header: &RtpHeader, payload: &[u8]) -> Option<usize> {
    let len = RTP_HEADER_LEN + payload.len();
    if buf.len() < len {
        return None;
    }
    buf[0] = 0x80;
    buf[1] = header.payload_type & 0x7f;
    buf[2..4].copy_from_slice(&header.sequence.to_be_bytes());
    buf[4..8].copy_from_slice(&header.timestamp.to_be_bytes());
    buf[8..12].copy_from_slice(&header.ssrc.to_be_bytes());
    buf[RTP_HEADER_LEN..len].copy_from_slice(payload);
    Some(len)
}

/// Reads a packet the harness sent; `None` for anything else (not RTP version 2, too short, or
/// no probe magic).
pub fn parse_packet(packet: &[u8]) -> Option<Received> {
    if packet.len() < RTP_HEADER_LEN || packet[0] >> 6 != 2 {
        return None;
    }
    let csrc_count = usize::from(packet[0] & 0x0f);
    let mut offset = RTP_HEADER_LEN + 4 * csrc_count;
    if packet[0] & 0x10 != 0 {
        // Header extension, RFC 3550 §5.3.1: 4-byte header, then `length` 32-bit words.
        let ext = packet.get(offset..offset + 4)?;
        offset += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    let payload = packet.get(offset..offset + PROBE_LEN)?;
    if payload[0..4] != PROBE_MAGIC {
        return None;
    }
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some(Received {
        header: RtpHeader {
            payload_type: packet[1] & 0x7f,
            sequence: u16::from_be_bytes([packet[2], packet[3]]),
            timestamp: be32(&packet[4..8]),
            ssrc: be32(&packet[8..12]),
        },
        probe: Probe {
            stream: be32(&payload[4..8]),
            counter: be32(&payload[8..12]),
            sent_ns: u64::from_be_bytes([
                payload[12],
                payload[13],
                payload[14],
                payload[15],
                payload[16],
                payload[17],
                payload[18],
                payload[19],
            ]),
        },
    })
}

/// Encodes one 16-bit linear sample as G.711 µ-law (ITU-T G.711, with the usual bias of 0x84
/// and clipping at 32635).
pub fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32_635;
    let mut magnitude = i32::from(sample);
    let sign = if magnitude < 0 {
        magnitude = -magnitude;
        0x80
    } else {
        0
    };
    let biased = magnitude.min(CLIP) + BIAS;
    // `biased` lies in 0x84..=0x7fff, so its top bit is between bit 7 and bit 14.
    let exponent = (31 - (biased as u32).leading_zeros())
        .saturating_sub(7)
        .min(7) as i32;
    let mantissa = (biased >> (exponent + 3)) & 0x0f;
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// Longest audio slice [`Audio::at`] returns.
pub const MAX_AUDIO_SLICE: usize = 1_500;

/// One second of speech-like G.711 µ-law audio at 8 kHz, generated deterministically: a
/// 140 Hz voice with its first harmonics, shaped by a syllable-rate envelope with pauses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audio {
    /// The second of audio followed by its first [`MAX_AUDIO_SLICE`] samples again, so that a
    /// slice starting anywhere in the second is contiguous.
    samples: Vec<u8>,
    /// Length of the loop.
    len: usize,
}

impl Default for Audio {
    fn default() -> Self {
        Self::new()
    }
}

impl Audio {
    /// Generates the signal.
    pub fn new() -> Self {
        let rate = f64::from(PCMU_CLOCK_RATE);
        let mut samples: Vec<u8> = (0..PCMU_CLOCK_RATE)
            .map(|n| {
                let t = f64::from(n) / rate;
                let tau = std::f64::consts::TAU;
                // Syllables at 4 Hz, voiced for most of each, and a pause every second word.
                let syllable = (tau * 4.0 * t).sin().max(0.0);
                let word = if (t * 2.0).fract() < 0.8 { 1.0 } else { 0.05 };
                let pitch = 140.0 * (1.0 + 0.08 * (tau * 1.5 * t).sin());
                let voice = (1..=5)
                    .map(|h| (tau * pitch * f64::from(h) * t).sin() / f64::from(h))
                    .sum::<f64>();
                let value = 9_000.0 * syllable * word * voice;
                linear_to_ulaw(value.clamp(-32_768.0, 32_767.0) as i16)
            })
            .collect();
        samples.extend_from_within(..MAX_AUDIO_SLICE);
        Self {
            samples,
            len: PCMU_CLOCK_RATE as usize,
        }
    }

    /// Audio from µ-law samples (real speech, see [`crate::media`]), looped.
    pub fn from_ulaw(ulaw: &[u8]) -> Self {
        if ulaw.is_empty() {
            return Self::new();
        }
        let mut samples = ulaw.to_vec();
        while samples.len() < ulaw.len() + MAX_AUDIO_SLICE {
            let need = ulaw.len() + MAX_AUDIO_SLICE - samples.len();
            samples.extend_from_slice(&ulaw[..need.min(ulaw.len())]);
        }
        Self {
            samples,
            len: ulaw.len(),
        }
    }

    /// `len` samples (at most [`MAX_AUDIO_SLICE`]) starting at sample `offset`, wrapping around
    /// the end of the loop.
    pub fn at(&self, offset: usize, len: usize) -> &[u8] {
        let start = offset % self.len;
        &self.samples[start..start + len.min(MAX_AUDIO_SLICE)]
    }

    /// The whole loop of audio (one second for the built-in signal).
    pub fn second(&self) -> &[u8] {
        &self.samples[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_reference_values() {
        assert_eq!(linear_to_ulaw(0), 0xff);
        assert_eq!(linear_to_ulaw(-1), 0x7f);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_ulaw(1000), 0xce);
        assert_eq!(linear_to_ulaw(-1000), 0x4e);
    }

    #[test]
    fn packet_round_trip() {
        let header = RtpHeader {
            payload_type: PT_PCMU,
            sequence: 65_535,
            timestamp: 0xdead_beef,
            ssrc: 0x1234_5678,
        };
        let probe = Probe {
            stream: 7,
            counter: 99,
            sent_ns: 123_456_789_012,
        };
        let audio = Audio::new();
        let mut buf = [0u8; 300];
        let len = write_packet(&mut buf, &header, &probe, 160, audio.at(0, 140)).unwrap();
        assert_eq!(len, 172);
        assert_eq!(&buf[..2], &[0x80, 0x00]);
        assert_eq!(buf[12 + PROBE_LEN..172], audio.second()[..140]);
        let got = parse_packet(&buf[..len]).unwrap();
        assert_eq!(got, Received { header, probe });
    }

    #[test]
    fn foreign_packets_are_refused() {
        assert_eq!(parse_packet(&[]), None);
        assert_eq!(parse_packet(&[0x80; 11]), None);
        let mut buf = [0u8; 64];
        buf[0] = 0x80;
        assert_eq!(parse_packet(&buf), None, "no magic");
        buf[12..16].copy_from_slice(&PROBE_MAGIC);
        buf[0] = 0x40;
        assert_eq!(parse_packet(&buf), None, "version 1");
        let mut tiny = [0u8; 4];
        let header = RtpHeader {
            payload_type: 0,
            sequence: 0,
            timestamp: 0,
            ssrc: 0,
        };
        let probe = Probe {
            stream: 0,
            counter: 0,
            sent_ns: 0,
        };
        assert_eq!(write_packet(&mut tiny, &header, &probe, 160, &[]), None);
        assert_eq!(write_packet(&mut buf, &header, &probe, 10, &[]), None);
    }

    #[test]
    fn csrc_and_extension_are_skipped() {
        let mut buf = vec![0x80 | 0x10 | 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        buf.extend_from_slice(&[0, 0, 0, 9]); // one CSRC
        buf.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]); // one-word extension
        buf.extend_from_slice(&PROBE_MAGIC);
        buf.extend_from_slice(&[0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 5]);
        let got = parse_packet(&buf).unwrap();
        assert_eq!(got.probe.stream, 3);
        assert_eq!(got.probe.counter, 4);
        assert_eq!(got.probe.sent_ns, 5);
    }

    #[test]
    fn audio_is_deterministic_speech_like_and_wraps() {
        let a = Audio::new();
        assert_eq!(a.second(), Audio::new().second());
        assert_eq!(a.second().len(), 8000);
        // Not silence, not a constant.
        let distinct = a.second().iter().collect::<std::collections::BTreeSet<_>>();
        assert!(distinct.len() > 50);
        let out = a.at(8_000 + 7_900, 200);
        assert_eq!(out[..100], a.second()[7_900..]);
        assert_eq!(out[100..], a.second()[..100]);
        assert_eq!(a.at(0, 10_000).len(), MAX_AUDIO_SLICE);
    }
}
