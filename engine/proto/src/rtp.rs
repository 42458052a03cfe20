//! RTP packets (RFC 3550 §5): zero-copy views, in-place header rewrites and a header writer.
//!
//! - [`RtpPacket`] borrows a received datagram and validates the fixed header, the CSRC list,
//!   the header extension (§5.3.1) and the padding (§5.1) without copying anything.
//! - [`RtpPacketMut`] borrows a buffer mutably to rewrite sequence number, timestamp, SSRC,
//!   payload type or marker in place.
//! - [`RtpHeaderWriter`] builds a header (and optionally copies a payload) into a buffer the
//!   caller owns.
//! - [`SeqUnwrapper`] extends 16-bit sequence numbers to a monotonic [`SeqNo`] across wraps.
//! - [`is_rtcp`] tells RTCP from RTP on a port shared by both (RFC 5761 §4).
//!
//! Nothing here allocates. A malformed packet is an [`RtpError`] whose [`RtpError::reason`] names
//! the counter it belongs to.

use std::fmt;

use crate::stats::DropReason;

/// The only RTP version in use (RFC 3550 §5.1).
pub const RTP_VERSION: u8 = 2;

/// Length of the fixed RTP header, without CSRCs or extension (RFC 3550 §5.1).
pub const RTP_HEADER_LEN: usize = 12;

/// Most CSRC identifiers a header can carry: the CC field has four bits (RFC 3550 §5.1).
pub const MAX_CSRCS: usize = 15;

/// Synchronization source identifier (RFC 3550 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Ssrc(pub u32);

impl fmt::Display for Ssrc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// RTP payload type: seven bits (RFC 3550 §5.1, RFC 3551 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PayloadType(u8);

impl PayloadType {
    /// PCMU (G.711 µ-law), static payload type 0 (RFC 3551 §6).
    pub const PCMU: PayloadType = PayloadType(0);
    /// PCMA (G.711 A-law), static payload type 8 (RFC 3551 §6).
    pub const PCMA: PayloadType = PayloadType(8);

    /// A payload type from its number, `None` above 127.
    #[must_use]
    pub const fn new(pt: u8) -> Option<Self> {
        if pt <= 0x7f {
            Some(PayloadType(pt))
        } else {
            None
        }
    }

    /// The low seven bits of `byte` as a payload type (the marker bit is dropped).
    #[must_use]
    pub const fn from_masked(byte: u8) -> Self {
        PayloadType(byte & 0x7f)
    }

    /// The payload type number, 0–127.
    #[must_use]
    pub const fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for PayloadType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An extended sequence number: the 16-bit wire value plus the count of wraps above it
/// (RFC 3550 §6.4.1, "extended highest sequence number").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SeqNo(pub u64);

impl SeqNo {
    /// The 16-bit value carried on the wire.
    #[must_use]
    pub const fn wire(self) -> u16 {
        // Truncation keeps the low 16 bits, which is the wire value by construction.
        (self.0 & 0xffff) as u16
    }

    /// How many times the 16-bit value wrapped before this one.
    #[must_use]
    pub const fn cycles(self) -> u64 {
        self.0 >> 16
    }
}

/// RTP media timestamp in clock-rate units; wraps at 2^32 (RFC 3550 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RtpTimestamp(pub u32);

/// Why an RTP packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtpError {
    /// Shorter than the 12-byte fixed header.
    #[error("RTP packet too short: {len} bytes")]
    TooShort {
        /// Datagram length.
        len: usize,
    },
    /// The version field is not 2.
    #[error("RTP version {version}, expected 2")]
    BadVersion {
        /// Version found.
        version: u8,
    },
    /// The CSRC list runs past the end of the datagram.
    #[error("RTP CSRC count {count} does not fit in {len} bytes")]
    BadCsrcCount {
        /// CSRC count from the header.
        count: u8,
        /// Datagram length.
        len: usize,
    },
    /// The header extension (RFC 3550 §5.3.1) is truncated or runs past the end.
    #[error("RTP header extension of {needed} bytes does not fit in {len} bytes")]
    BadExtension {
        /// Bytes needed up to the end of the extension.
        needed: usize,
        /// Datagram length.
        len: usize,
    },
    /// The padding count is zero or larger than what follows the header.
    #[error("RTP padding of {padding} bytes invalid with {available} bytes after the header")]
    BadPadding {
        /// Padding count from the last byte.
        padding: u8,
        /// Bytes after the header, padding included.
        available: usize,
    },
}

impl RtpError {
    /// The drop counter this error belongs to.
    #[must_use]
    pub const fn reason(&self) -> DropReason {
        match self {
            RtpError::TooShort { .. } => DropReason::RtpTooShort,
            RtpError::BadVersion { .. } => DropReason::RtpBadVersion,
            RtpError::BadCsrcCount { .. } => DropReason::RtpBadCsrcCount,
            RtpError::BadExtension { .. } => DropReason::RtpBadExtension,
            RtpError::BadPadding { .. } => DropReason::RtpBadPadding,
        }
    }
}

/// Why a packet could not be written into a caller's buffer (RTP and RTCP builders).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The buffer cannot hold the packet.
    #[error("buffer too small: {needed} bytes needed, {available} available")]
    BufferTooSmall {
        /// Bytes the packet needs.
        needed: usize,
        /// Bytes the buffer has.
        available: usize,
    },
    /// More than 15 CSRCs (RFC 3550 §5.1).
    #[error("too many CSRCs: {count}, at most 15")]
    TooManyCsrcs {
        /// CSRCs given.
        count: usize,
    },
    /// More than 31 report blocks in one SR or RR (RFC 3550 §6.4).
    #[error("too many report blocks: {count}, at most 31")]
    TooManyReportBlocks {
        /// Blocks given.
        count: usize,
    },
}

/// Whether a datagram on a port shared by RTP and RTCP is RTCP (RFC 5761 §4): its second byte,
/// read as marker bit plus payload type, falls in 192–223, i.e. RTCP packet types 192–223 or an
/// RTP payload type of 64–95, a range multiplexing peers must not use for RTP.
#[must_use]
pub fn is_rtcp(datagram: &[u8]) -> bool {
    matches!(datagram.get(1), Some(192..=223))
}

/// A validated, borrowed RTP packet (RFC 3550 §5.1).
///
/// ```
/// use switchboard_proto::rtp::{RtpHeaderWriter, RtpPacket, PayloadType, RtpTimestamp, Ssrc};
/// let mut buf = [0u8; 64];
/// let len = RtpHeaderWriter::new(PayloadType::PCMU, 7, RtpTimestamp(160), Ssrc(0x1234))
///     .write_packet(b"hello", &mut buf)
///     .unwrap();
/// let pkt = RtpPacket::parse(&buf[..len]).unwrap();
/// assert_eq!(pkt.sequence_number(), 7);
/// assert_eq!(pkt.payload(), b"hello");
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    bytes: &'a [u8],
    header_len: usize,
    payload_end: usize,
}

impl fmt::Debug for RtpPacket<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RtpPacket")
            .field("pt", &self.payload_type().get())
            .field("seq", &self.sequence_number())
            .field("ts", &self.timestamp().0)
            .field("ssrc", &self.ssrc())
            .field("marker", &self.marker())
            .field("payload_len", &self.payload().len())
            .finish()
    }
}

/// Where the header ends and the payload ends, after validating the layout.
fn layout(buf: &[u8]) -> Result<(usize, usize), RtpError> {
    let len = buf.len();
    if len < RTP_HEADER_LEN {
        return Err(RtpError::TooShort { len });
    }
    let b0 = buf[0];
    let version = b0 >> 6;
    if version != RTP_VERSION {
        return Err(RtpError::BadVersion { version });
    }
    let count = b0 & 0x0f;
    let mut header_len = RTP_HEADER_LEN + 4 * usize::from(count);
    if header_len > len {
        return Err(RtpError::BadCsrcCount { count, len });
    }
    if b0 & 0x10 != 0 {
        // RFC 3550 §5.3.1: 16-bit profile field, 16-bit length in 32-bit words, then data.
        let ext_head = header_len + 4;
        if ext_head > len {
            return Err(RtpError::BadExtension {
                needed: ext_head,
                len,
            });
        }
        let words = usize::from(u16::from_be_bytes([
            buf[header_len + 2],
            buf[header_len + 3],
        ]));
        let needed = ext_head + 4 * words;
        if needed > len {
            return Err(RtpError::BadExtension { needed, len });
        }
        header_len = needed;
    }
    let mut payload_end = len;
    if b0 & 0x20 != 0 {
        // The last byte counts the padding, itself included; it must be at least 1 and fit in
        // what follows the header.
        let padding = buf[len - 1];
        let available = len - header_len;
        if padding == 0 || usize::from(padding) > available {
            return Err(RtpError::BadPadding { padding, available });
        }
        payload_end = len - usize::from(padding);
    }
    Ok((header_len, payload_end))
}

impl<'a> RtpPacket<'a> {
    /// Validate `buf` as one RTP packet (RFC 3550 §5.1, §5.3.1).
    pub fn parse(buf: &'a [u8]) -> Result<Self, RtpError> {
        let (header_len, payload_end) = layout(buf)?;
        Ok(RtpPacket {
            bytes: buf,
            header_len,
            payload_end,
        })
    }

    /// The whole datagram, header and padding included.
    #[must_use]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Version field (always 2 once parsed).
    #[must_use]
    pub fn version(&self) -> u8 {
        self.bytes[0] >> 6
    }

    /// Padding bit: the packet ends with [`Self::padding_len`] padding bytes.
    #[must_use]
    pub fn has_padding(&self) -> bool {
        self.bytes[0] & 0x20 != 0
    }

    /// Number of padding bytes at the end, the count byte included; 0 without padding.
    #[must_use]
    pub fn padding_len(&self) -> usize {
        self.bytes.len() - self.payload_end
    }

    /// Extension bit: a header extension follows the CSRC list (RFC 3550 §5.3.1).
    #[must_use]
    pub fn has_extension(&self) -> bool {
        self.bytes[0] & 0x10 != 0
    }

    /// The header extension, if the extension bit is set.
    #[must_use]
    pub fn extension(&self) -> Option<RtpExtension<'a>> {
        if !self.has_extension() {
            return None;
        }
        let start = RTP_HEADER_LEN + 4 * self.csrc_count();
        let bytes = self.bytes;
        Some(RtpExtension {
            profile: u16::from_be_bytes([bytes[start], bytes[start + 1]]),
            data: &bytes[start + 4..self.header_len],
        })
    }

    /// Marker bit (profile-defined; RFC 3551 uses it for the first packet of a talkspurt).
    #[must_use]
    pub fn marker(&self) -> bool {
        self.bytes[1] & 0x80 != 0
    }

    /// Payload type.
    #[must_use]
    pub fn payload_type(&self) -> PayloadType {
        PayloadType::from_masked(self.bytes[1])
    }

    /// 16-bit sequence number as on the wire.
    #[must_use]
    pub fn sequence_number(&self) -> u16 {
        u16::from_be_bytes([self.bytes[2], self.bytes[3]])
    }

    /// Media timestamp.
    #[must_use]
    pub fn timestamp(&self) -> RtpTimestamp {
        RtpTimestamp(read_u32(self.bytes, 4))
    }

    /// Synchronization source.
    #[must_use]
    pub fn ssrc(&self) -> Ssrc {
        Ssrc(read_u32(self.bytes, 8))
    }

    /// Number of CSRC identifiers.
    #[must_use]
    pub fn csrc_count(&self) -> usize {
        usize::from(self.bytes[0] & 0x0f)
    }

    /// Contributing sources.
    pub fn csrcs(&self) -> impl ExactSizeIterator<Item = Ssrc> + 'a {
        let end = RTP_HEADER_LEN + 4 * self.csrc_count();
        self.bytes[RTP_HEADER_LEN..end]
            .chunks_exact(4)
            .map(|c| Ssrc(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
    }

    /// Header length: fixed header, CSRCs and extension.
    #[must_use]
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// The payload, without header and padding.
    #[must_use]
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[self.header_len..self.payload_end]
    }
}

/// A header extension (RFC 3550 §5.3.1): the profile-defined 16 bits and the data words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpExtension<'a> {
    /// The "defined by profile" field (e.g. 0xBEDE for RFC 8285 one-byte headers).
    pub profile: u16,
    /// Extension data, a multiple of four bytes.
    pub data: &'a [u8],
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A validated RTP packet in a mutable buffer, for header rewrites in place.
#[derive(Debug)]
pub struct RtpPacketMut<'a> {
    bytes: &'a mut [u8],
    header_len: usize,
    payload_end: usize,
}

impl<'a> RtpPacketMut<'a> {
    /// Validate `buf` as one RTP packet, as [`RtpPacket::parse`] does.
    pub fn parse(buf: &'a mut [u8]) -> Result<Self, RtpError> {
        let (header_len, payload_end) = layout(buf)?;
        Ok(RtpPacketMut {
            bytes: buf,
            header_len,
            payload_end,
        })
    }

    /// A read-only view of the same packet.
    #[must_use]
    pub fn as_packet(&self) -> RtpPacket<'_> {
        RtpPacket {
            bytes: self.bytes,
            header_len: self.header_len,
            payload_end: self.payload_end,
        }
    }

    /// Set the marker bit.
    pub fn set_marker(&mut self, marker: bool) {
        self.bytes[1] = (self.bytes[1] & 0x7f) | (u8::from(marker) << 7);
    }

    /// Set the payload type, keeping the marker bit.
    pub fn set_payload_type(&mut self, pt: PayloadType) {
        self.bytes[1] = (self.bytes[1] & 0x80) | pt.get();
    }

    /// Set the 16-bit sequence number.
    pub fn set_sequence_number(&mut self, seq: u16) {
        self.bytes[2..4].copy_from_slice(&seq.to_be_bytes());
    }

    /// Set the media timestamp.
    pub fn set_timestamp(&mut self, ts: RtpTimestamp) {
        self.bytes[4..8].copy_from_slice(&ts.0.to_be_bytes());
    }

    /// Set the synchronization source.
    pub fn set_ssrc(&mut self, ssrc: Ssrc) {
        self.bytes[8..12].copy_from_slice(&ssrc.0.to_be_bytes());
    }

    /// The payload, mutable, without header and padding.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[self.header_len..self.payload_end]
    }
}

/// Builds an RTP header (RFC 3550 §5.1) into a caller's buffer; no extension, no padding.
#[derive(Debug, Clone, Copy)]
pub struct RtpHeaderWriter<'c> {
    payload_type: PayloadType,
    marker: bool,
    sequence_number: u16,
    timestamp: RtpTimestamp,
    ssrc: Ssrc,
    csrcs: &'c [Ssrc],
}

impl<'c> RtpHeaderWriter<'c> {
    /// A header without marker and CSRCs.
    #[must_use]
    pub const fn new(
        payload_type: PayloadType,
        sequence_number: u16,
        timestamp: RtpTimestamp,
        ssrc: Ssrc,
    ) -> Self {
        RtpHeaderWriter {
            payload_type,
            marker: false,
            sequence_number,
            timestamp,
            ssrc,
            csrcs: &[],
        }
    }

    /// Set the marker bit.
    #[must_use]
    pub const fn marker(mut self, marker: bool) -> Self {
        self.marker = marker;
        self
    }

    /// Add contributing sources (at most 15).
    #[must_use]
    pub const fn csrcs(mut self, csrcs: &'c [Ssrc]) -> Self {
        self.csrcs = csrcs;
        self
    }

    /// Header length this writer produces.
    #[must_use]
    pub const fn header_len(&self) -> usize {
        RTP_HEADER_LEN + 4 * self.csrcs.len()
    }

    /// Write the header at the start of `buf`; returns its length.
    pub fn write(&self, buf: &mut [u8]) -> Result<usize, WriteError> {
        let count = self.csrcs.len();
        if count > MAX_CSRCS {
            return Err(WriteError::TooManyCsrcs { count });
        }
        let needed = self.header_len();
        let Some(out) = buf.get_mut(..needed) else {
            return Err(WriteError::BufferTooSmall {
                needed,
                available: buf.len(),
            });
        };
        // count <= 15 was checked above, so it fits the four CC bits.
        out[0] = (RTP_VERSION << 6) | (count as u8);
        out[1] = (u8::from(self.marker) << 7) | self.payload_type.get();
        out[2..4].copy_from_slice(&self.sequence_number.to_be_bytes());
        out[4..8].copy_from_slice(&self.timestamp.0.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.0.to_be_bytes());
        for (chunk, csrc) in out[RTP_HEADER_LEN..].chunks_exact_mut(4).zip(self.csrcs) {
            chunk.copy_from_slice(&csrc.0.to_be_bytes());
        }
        Ok(needed)
    }

    /// Write the header followed by `payload`; returns the packet length.
    pub fn write_packet(&self, payload: &[u8], buf: &mut [u8]) -> Result<usize, WriteError> {
        let needed = self.header_len() + payload.len();
        if needed > buf.len() {
            return Err(WriteError::BufferTooSmall {
                needed,
                available: buf.len(),
            });
        }
        let header_len = self.write(buf)?;
        buf[header_len..needed].copy_from_slice(payload);
        Ok(needed)
    }
}

/// Extends 16-bit sequence numbers into a monotonic [`SeqNo`], tolerating wraps and reordering
/// (RFC 3550 Appendix A.1 keeps the same cycle count).
///
/// A sequence number is placed in whichever cycle puts it within 2^15 of the highest one seen so
/// far: forward jumps below 2^15 advance the highest value (counting a cycle on wrap), anything
/// else is taken as a late packet. The first packet is placed in cycle 1 so that a late packet
/// from just before a wrap near the start still lands below it; only differences and order of the
/// results carry meaning.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeqUnwrapper {
    highest: Option<u64>,
}

impl SeqUnwrapper {
    /// An unwrapper that has seen nothing.
    #[must_use]
    pub const fn new() -> Self {
        SeqUnwrapper { highest: None }
    }

    /// Extend `seq`, updating the highest value seen when it moves forward.
    pub fn extend(&mut self, seq: u16) -> SeqNo {
        let Some(highest) = self.highest else {
            let first = (1 << 16) | u64::from(seq);
            self.highest = Some(first);
            return SeqNo(first);
        };
        // Two's-complement distance from the highest value's low 16 bits, in -2^15..2^15.
        let delta = i64::from(seq.wrapping_sub((highest & 0xffff) as u16) as i16);
        let ext = highest.saturating_add_signed(delta);
        if ext > highest {
            self.highest = Some(ext);
        }
        SeqNo(ext)
    }

    /// The highest extended sequence number seen, if any.
    #[must_use]
    pub const fn highest(&self) -> Option<SeqNo> {
        match self.highest {
            Some(h) => Some(SeqNo(h)),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u16) -> Vec<u8> {
        let mut buf = vec![0u8; 12 + 160];
        RtpHeaderWriter::new(
            PayloadType::PCMU,
            seq,
            RtpTimestamp(1000),
            Ssrc(0xdead_beef),
        )
        .write(&mut buf)
        .unwrap();
        buf
    }

    #[test]
    fn rtp_parse_fixed_header() {
        let mut buf = packet(0x1234);
        buf[1] |= 0x80;
        let p = RtpPacket::parse(&buf).unwrap();
        assert_eq!(p.version(), 2);
        assert!(p.marker());
        assert!(!p.has_padding());
        assert!(!p.has_extension());
        assert_eq!(p.payload_type(), PayloadType::PCMU);
        assert_eq!(p.sequence_number(), 0x1234);
        assert_eq!(p.timestamp(), RtpTimestamp(1000));
        assert_eq!(p.ssrc(), Ssrc(0xdead_beef));
        assert_eq!(p.csrcs().count(), 0);
        assert_eq!(p.payload().len(), 160);
        assert_eq!(p.header_len(), 12);
        assert!(p.extension().is_none());
    }

    #[test]
    fn rtp_parse_csrcs_extension_padding() {
        let csrcs = [Ssrc(1), Ssrc(2)];
        let mut buf = [0u8; 64];
        let n = RtpHeaderWriter::new(PayloadType::new(96).unwrap(), 1, RtpTimestamp(2), Ssrc(3))
            .csrcs(&csrcs)
            .write(&mut buf)
            .unwrap();
        assert_eq!(n, 20);
        // Extension: profile 0xBEDE, one word of data.
        buf[0] |= 0x10;
        buf[20..24].copy_from_slice(&[0xbe, 0xde, 0, 1]);
        buf[24..28].copy_from_slice(&[1, 2, 3, 4]);
        // Payload of 5 bytes then 3 bytes of padding.
        buf[28..33].copy_from_slice(b"abcde");
        buf[0] |= 0x20;
        buf[35] = 3;
        let p = RtpPacket::parse(&buf[..36]).unwrap();
        assert_eq!(p.csrcs().collect::<Vec<_>>(), csrcs);
        let ext = p.extension().unwrap();
        assert_eq!(ext.profile, 0xbede);
        assert_eq!(ext.data, &[1, 2, 3, 4]);
        assert_eq!(p.header_len(), 28);
        assert_eq!(p.payload(), b"abcde");
        assert_eq!(p.padding_len(), 3);
    }

    #[test]
    fn rtp_errors_by_reason() {
        assert_eq!(
            RtpPacket::parse(&[0x80; 11]).unwrap_err(),
            RtpError::TooShort { len: 11 }
        );
        let mut buf = packet(1);
        buf[0] = 0x40;
        assert_eq!(
            RtpPacket::parse(&buf).unwrap_err().reason(),
            DropReason::RtpBadVersion
        );
        let mut buf = packet(1);
        buf.truncate(20);
        buf[0] = 0x80 | 3;
        assert!(matches!(
            RtpPacket::parse(&buf),
            Err(RtpError::BadCsrcCount { count: 3, len: 20 })
        ));
        buf[0] = 0x90;
        buf[14..16].copy_from_slice(&2u16.to_be_bytes());
        assert_eq!(
            RtpPacket::parse(&buf).unwrap_err().reason(),
            DropReason::RtpBadExtension
        );
        let mut buf = packet(1);
        buf.truncate(14);
        buf[0] = 0x90;
        assert!(matches!(
            RtpPacket::parse(&buf),
            Err(RtpError::BadExtension {
                needed: 16,
                len: 14
            })
        ));
        let mut buf = packet(1);
        buf[0] = 0xa0;
        let last = buf.len() - 1;
        buf[last] = 0;
        assert_eq!(
            RtpPacket::parse(&buf).unwrap_err().reason(),
            DropReason::RtpBadPadding
        );
        buf[last] = 161;
        assert!(RtpPacket::parse(&buf).is_err());
        buf[last] = 160;
        assert_eq!(RtpPacket::parse(&buf).unwrap().payload().len(), 0);
        // Padding bit on a header-only packet: no room for the count byte.
        let mut buf = packet(1);
        buf.truncate(12);
        buf[0] = 0xa0;
        assert!(RtpPacket::parse(&buf).is_err());
    }

    #[test]
    fn rtp_mut_rewrites_in_place() {
        let mut buf = packet(10);
        let mut p = RtpPacketMut::parse(&mut buf).unwrap();
        p.set_marker(true);
        p.set_payload_type(PayloadType::PCMA);
        p.set_sequence_number(65535);
        p.set_timestamp(RtpTimestamp(u32::MAX));
        p.set_ssrc(Ssrc(42));
        p.payload_mut()[0] = 0xff;
        let v = p.as_packet();
        assert!(v.marker());
        assert_eq!(v.payload_type(), PayloadType::PCMA);
        p.set_marker(false);
        let v = RtpPacket::parse(&buf).unwrap();
        assert!(!v.marker());
        assert_eq!(v.payload_type(), PayloadType::PCMA);
        assert_eq!(v.sequence_number(), 65535);
        assert_eq!(v.timestamp(), RtpTimestamp(u32::MAX));
        assert_eq!(v.ssrc(), Ssrc(42));
        assert_eq!(v.payload()[0], 0xff);
    }

    #[test]
    fn rtp_writer_errors() {
        let mut small = [0u8; 11];
        let w = RtpHeaderWriter::new(PayloadType::PCMU, 0, RtpTimestamp(0), Ssrc(0));
        assert_eq!(
            w.write(&mut small),
            Err(WriteError::BufferTooSmall {
                needed: 12,
                available: 11
            })
        );
        let mut buf = [0u8; 20];
        assert!(w.write_packet(&[0; 9], &mut buf).is_err());
        assert_eq!(w.write_packet(&[7; 8], &mut buf), Ok(20));
        let many = [Ssrc(0); 16];
        let mut big = [0u8; 200];
        assert_eq!(
            w.csrcs(&many).write(&mut big),
            Err(WriteError::TooManyCsrcs { count: 16 })
        );
        assert_eq!(PayloadType::new(128), None);
    }

    #[test]
    fn rtcp_demux_by_second_byte() {
        assert!(is_rtcp(&[0x80, 200, 0, 6]));
        assert!(is_rtcp(&[0x81, 201]));
        assert!(is_rtcp(&[0x80, 223]));
        assert!(!is_rtcp(&[0x80, 224]));
        assert!(!is_rtcp(&[0x80, 0]));
        assert!(!is_rtcp(&[0x80, 0x80 | 96]));
        assert!(!is_rtcp(&[0x80, 191]));
        assert!(!is_rtcp(&[0x80]));
        assert!(!is_rtcp(&[]));
    }

    #[test]
    fn rtp_seq_unwrapper_wraps_and_reorders() {
        let mut u = SeqUnwrapper::new();
        let base = u.extend(65534).0;
        assert_eq!(u.extend(65535).0, base + 1);
        assert_eq!(u.extend(1).0, base + 3);
        assert_eq!(u.extend(0).0, base + 2);
        assert_eq!(u.highest(), Some(SeqNo(base + 3)));
        assert_eq!(u.extend(65533).0, base - 1);
        assert_eq!(u.extend(2).0, base + 4);
        assert_eq!(SeqNo(base + 4).wire(), 2);
        assert_eq!(SeqNo(base + 4).cycles(), 2);
    }

    proptest::proptest! {
        #[test]
        fn rtp_seq_unwrapper_matches_true_sequence(
            start in proptest::prelude::any::<u16>(),
            steps in proptest::collection::vec(-100i64..300, 1..200),
        ) {
            // A true extended sequence that moves forward by < 2^15 and back by < 2^15.
            let mut u = SeqUnwrapper::new();
            let mut truth = i64::from(start) + (1 << 20);
            let first = u.extend(start).0 as i64;
            let offset = first - truth;
            let mut highest = truth;
            for s in steps {
                truth = (truth + s).max(highest - 1000);
                highest = highest.max(truth);
                let got = u.extend((truth & 0xffff) as u16).0 as i64;
                proptest::prop_assert_eq!(got - offset, truth);
            }
        }

        #[test]
        fn rtp_parse_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            if let Ok(p) = RtpPacket::parse(&data) {
                proptest::prop_assert!(p.header_len() + p.payload().len() + p.padding_len() == data.len());
                let _ = p.csrcs().count();
                let _ = p.extension();
            }
            let mut copy = data.clone();
            let _ = RtpPacketMut::parse(&mut copy);
        }
    }
}
