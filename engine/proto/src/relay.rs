//! The sans-IO RTP/RTCP relay of one call: which leg's packet goes where, from which socket,
//! with what statistics. The media worker owns the sockets and the clock; [`Relay`] decides.
//!
//! A call has up to [`MAX_LEGS`] legs. Each leg is one party's media endpoint: a local RTP/RTCP
//! port pair (RTCP on port + 1, or on the RTP port with rtcp-mux, RFC 5761), the remote address
//! from its SDP, and the address learned from its packets. Each leg has a short list of forward
//! targets (up to [`MAX_FORWARD_TARGETS`]): a packet that arrives on leg A is sent out on every
//! target leg B **from B's local socket to B's remote address** (symmetric RTP, RFC 4961), bytes
//! untouched: sequence number, timestamp and SSRC are kept and the caller sends the very buffer it
//! received, unless the transmit carries a [`Rewrite`] (see below).
//!
//! # Mixed legs and stream continuity
//!
//! A leg whose media is decoded and mixed ([`Relay::set_mixed`]) is still parsed, admitted
//! (latching, strict source) and counted here, but its packets are not forwarded:
//! [`Relay::handle_packet`] returns [`RelayOutput::Consume`] and the caller hands RTP to the
//! mixer.
//!
//! So that a leg sees one RTP stream while its call moves between relaying and mixing, the
//! relay remembers, per target leg, the header of the last RTP packet sent to it
//! ([`RelayLeg::last_sent`], an [`OutputSeed`] the mixer continues from). On the way back
//! ([`Relay::continue_stream`]) the relay rewrites what it forwards to that leg: the SSRC of
//! the mixer's stream, sequence numbers and timestamps offset to follow on from the mixer's
//! last packet. Each transmit then carries the [`Rewrite`] to apply to a copy of the packet.
//!
//! # DTMF blocking
//!
//! A leg with a known `telephone-event` payload type ([`Relay::set_telephone_event`]) and DTMF
//! blocked ([`Relay::set_dtmf_blocked`]) has its RFC 4733 event packets dropped as
//! [`DropReason::DtmfBlocked`] (the mixer applies the same rule to mixed legs).
//!
//! # Endpoint learning ([`Latching`])
//!
//! Each component (RTP and, without rtcp-mux, RTCP) of a leg has a remote endpoint:
//!
//! - **[`Latching::Symmetric`]** (default; NG flag `symmetric`): until the leg's first packet on a
//!   component, media for it goes to the SDP address. The first valid packet *latches* its source
//!   as the component's endpoint. Packets from other sources are still forwarded (unless
//!   `strict_source`) but do not move the latch, except when the leg's latched sources have all
//!   been silent for [`RelayConfig::relatch_after`] (default 2 s): then the new source latches
//!   (NAT rebinding, a phone that changed address). A re-INVITE that changes the leg's SDP
//!   address or latching mode ([`Relay::update_leg`]) clears the latches.
//! - **[`Latching::Once`]** (NG `port latching`): the first source latches and is never replaced.
//! - **[`Latching::Asymmetric`]** (NG `asymmetric`): nothing is learned; media always goes to the
//!   SDP address.
//!
//! With `strict_source` (NG `strict source`), packets from anything but the latched source (with
//! `Asymmetric`: the SDP address) are dropped, and a latch is never replaced.
//!
//! Where RTCP for a leg goes without rtcp-mux: the latched RTCP source, else the SDP `a=rtcp`
//! address, else the latched RTP source's port + 1, else the SDP RTP port + 1 (RFC 3550 §11).
//! On the RTP port, a datagram whose second byte is 192–223 is RTCP (RFC 5761 §4), whether or not
//! rtcp-mux was negotiated; it is forwarded as RTCP.
//!
//! # Drive contract
//!
//! - Mutate with [`Relay::handle_packet`] for every datagram received on a leg's socket (send
//!   each [`Transmit`] of the returned [`RelayOutput`] right away), with
//!   [`Relay::handle_timeout`] when the time from [`Relay::poll_timeout`] has come, and with the
//!   control methods (`add_leg`, `update_leg`, `set_peer`, `add_forward`, `set_blocked`,
//!   `set_mixed`, `continue_stream`, `set_telephone_event`, `set_dtmf_blocked`, `remove_leg`)
//!   as signalling arrives.
//! - Then drain [`Relay::poll_event`] until `None` (endpoint latches), and ask
//!   [`Relay::poll_timeout`] again: it is the next time `handle_timeout` must be called, or `None`
//!   once the media timeout has fired (a later packet re-arms it).
//! - Time is the caller's monotonic [`Micros`]; the relay never reads a clock.
//!
//! # Media timeout
//!
//! When no valid packet has arrived from any leg for [`RelayConfig::media_timeout`] (default
//! 60 s; measured from the relay's creation if nothing ever arrived), `handle_timeout` returns
//! [`RelayEvent::MediaTimeout`] once. Malformed packets and packets refused by `strict_source`
//! do not count as activity.
//!
//! # Cost
//!
//! `handle_packet` allocates nothing and takes no lock: legs, targets, counters and the output
//! live in fixed-size storage. The leg table grows (a few slots at a time, up to
//! [`MAX_LEGS`]) only in [`Relay::add_leg`].

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use crate::media::OutputSeed;
use crate::rtcp::{self, NtpTime, RtcpCompound, RtcpPacket};
use crate::rtp::{self, RtpPacket, RtpTimestamp, Ssrc};
use crate::stats::{
    DropCounters, DropReason, PacketCounters, RemoteReport, RtcpReceiveStats, RtpReceiveStats,
    SenderInfo,
};
use crate::time::Micros;

/// Most legs one relay holds at a time (a large conference: every member is a leg).
pub const MAX_LEGS: usize = 1 << SLOT_BITS;
/// Leg slots reserved when a relay is created; the table grows on demand up to [`MAX_LEGS`].
const INITIAL_SLOTS: usize = 4;
/// Most forward targets per leg (a peer, plus listeners such as a supervisor or a recorder).
pub const MAX_FORWARD_TARGETS: usize = 4;
/// Sender reports remembered per leg for round-trip times.
const SR_MEMORY: usize = 4;
/// Events held until drained.
const EVENT_CAPACITY: usize = 8;

const SLOT_BITS: u32 = 10;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;
const GENERATION_MASK: u32 = u32::MAX >> SLOT_BITS;

/// Identifies a leg within its [`Relay`]. Ids of removed legs are never confused with later ones:
/// a reused slot gets a new generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(u32);

impl LegId {
    fn new(slot: usize, generation: u32) -> Self {
        // slot < MAX_LEGS = 1 << SLOT_BITS, so it fits the low SLOT_BITS bits.
        LegId(((generation & GENERATION_MASK) << SLOT_BITS) | (slot as u32 & SLOT_MASK))
    }

    /// The slot index, 0..[`MAX_LEGS`].
    #[must_use]
    pub const fn index(self) -> usize {
        (self.0 & SLOT_MASK) as usize
    }

    /// The raw value, for tables outside the relay.
    #[must_use]
    pub const fn to_raw(self) -> u32 {
        self.0
    }

    /// From a raw value obtained with [`Self::to_raw`].
    #[must_use]
    pub const fn from_raw(raw: u32) -> Self {
        LegId(raw)
    }

    fn generation(self) -> u32 {
        self.0 >> SLOT_BITS
    }
}

/// Which of a leg's two sockets (or, for forwarded traffic, which kind of packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    /// The RTP socket (even port); also RTCP with rtcp-mux.
    Rtp,
    /// The RTCP socket (RTP port + 1).
    Rtcp,
}

impl Component {
    const fn index(self) -> usize {
        match self {
            Component::Rtp => 0,
            Component::Rtcp => 1,
        }
    }
}

/// How a leg learns where to send media ([module docs](self#endpoint-learning-latching)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Latching {
    /// Latch on the first packets; re-latch after the latched source was silent a while.
    #[default]
    Symmetric,
    /// Latch on the first packets, never re-latch (NG `port latching`).
    Once,
    /// Never learn; send to the SDP address (NG `asymmetric`).
    Asymmetric,
}

/// One leg's addresses and policy, from signalling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegConfig {
    /// Local RTP address advertised to this leg's peer in SDP (the socket media to this leg is
    /// sent from).
    pub advertised: SocketAddr,
    /// RTP address from the peer's SDP, if any.
    pub expected_rtp: Option<SocketAddr>,
    /// RTCP address from the peer's SDP (`a=rtcp`), if any.
    pub expected_rtcp: Option<SocketAddr>,
    /// RTCP shares the RTP port (RFC 5761).
    pub rtcp_mux: bool,
    /// Drop packets from any source but the learned (or, with `Asymmetric`, the SDP) one.
    pub strict_source: bool,
    /// How the remote endpoint is learned.
    pub latching: Latching,
    /// RTP clock rate of the leg's codec, for jitter (8000 for G.711).
    pub clock_rate: u32,
}

impl LegConfig {
    /// A leg advertised at `advertised`, with no SDP address yet, no rtcp-mux, not strict,
    /// symmetric latching and an 8000 Hz clock.
    #[must_use]
    pub const fn new(advertised: SocketAddr) -> Self {
        LegConfig {
            advertised,
            expected_rtp: None,
            expected_rtcp: None,
            rtcp_mux: false,
            strict_source: false,
            latching: Latching::Symmetric,
            clock_rate: 8000,
        }
    }
}

/// Relay-wide settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayConfig {
    /// No packet from any leg for this long ends the call (default 60 s).
    pub media_timeout: Duration,
    /// With [`Latching::Symmetric`], a new source replaces the latched one only after the leg's
    /// latched sources have been silent this long (default 2 s).
    pub relatch_after: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            media_timeout: Duration::from_secs(60),
            relatch_after: Duration::from_secs(2),
        }
    }
}

/// Why a control operation on the relay failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// No such leg (never added, or removed).
    #[error("unknown leg {0:?}")]
    UnknownLeg(LegId),
    /// All [`MAX_LEGS`] slots are in use.
    #[error("a call holds at most {MAX_LEGS} legs")]
    TooManyLegs,
    /// The leg already forwards to [`MAX_FORWARD_TARGETS`] legs.
    #[error("leg {0:?} already forwards to {MAX_FORWARD_TARGETS} legs")]
    TooManyTargets(LegId),
    /// A leg cannot forward to itself.
    #[error("leg {0:?} cannot forward to itself")]
    SelfForward(LegId),
}

/// Send the packet: `from_leg`'s local `component` socket to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// The leg whose local socket sends.
    pub from_leg: LegId,
    /// Which of its sockets (RTCP with rtcp-mux goes out on [`Component::Rtp`]).
    pub component: Component,
    /// Where to.
    pub dst: SocketAddr,
    /// RTP header fields to write into a copy of the packet before sending it (the target
    /// leg continues a stream the mixer sent it); `None`: send the bytes unchanged.
    pub rewrite: Option<Rewrite>,
}

impl Transmit {
    /// A transmit of the packet unchanged.
    #[must_use]
    pub const fn new(from_leg: LegId, component: Component, dst: SocketAddr) -> Self {
        Transmit {
            from_leg,
            component,
            dst,
            rewrite: None,
        }
    }
}

const NO_TRANSMIT: Transmit = Transmit::new(
    LegId(u32::MAX),
    Component::Rtp,
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
);

/// The RTP header of one forwarded packet as its target leg must see it: the SSRC of the
/// stream the leg was receiving and the sequence number and timestamp that follow on from it
/// (RFC 3550 §5.1). Apply it to a copy of the received bytes with [`Rewrite::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite {
    /// The SSRC to write.
    pub ssrc: Ssrc,
    /// The sequence number to write.
    pub seq: u16,
    /// The timestamp to write.
    pub timestamp: RtpTimestamp,
}

impl Rewrite {
    /// Writes the sequence number, timestamp and SSRC into an RTP packet's fixed header.
    /// A buffer shorter than the fixed header is left alone.
    pub fn apply(&self, packet: &mut [u8]) {
        if let Some(header) = packet.get_mut(2..12) {
            header[0..2].copy_from_slice(&self.seq.to_be_bytes());
            header[2..6].copy_from_slice(&self.timestamp.0.to_be_bytes());
            header[6..10].copy_from_slice(&self.ssrc.0.to_be_bytes());
        }
    }
}

/// A leg's output stream continues one the mixer sent: what to replace in forwarded RTP.
#[derive(Debug, Clone, Copy)]
struct StreamRewrite {
    ssrc: Ssrc,
    seq_delta: u16,
    ts_delta: u32,
    /// The incoming SSRC the deltas were computed for; another SSRC re-anchors them.
    anchored_on: Option<Ssrc>,
}

/// Up to [`MAX_FORWARD_TARGETS`] transmits of one received packet, stored inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmits {
    kind: Component,
    len: u8,
    items: [Transmit; MAX_FORWARD_TARGETS],
}

impl Transmits {
    fn new(kind: Component) -> Self {
        Transmits {
            kind,
            len: 0,
            items: [NO_TRANSMIT; MAX_FORWARD_TARGETS],
        }
    }

    fn push(&mut self, t: Transmit) {
        if let Some(slot) = self.items.get_mut(usize::from(self.len)) {
            *slot = t;
            self.len += 1;
        }
    }

    /// What is forwarded: RTP or RTCP.
    #[must_use]
    pub fn kind(&self) -> Component {
        self.kind
    }

    /// The transmits.
    #[must_use]
    pub fn as_slice(&self) -> &[Transmit] {
        &self.items[..usize::from(self.len)]
    }

    /// Number of transmits.
    #[must_use]
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether there are none (never, in a [`RelayOutput::Forward`]).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Iterate over the transmits.
    pub fn iter(&self) -> std::slice::Iter<'_, Transmit> {
        self.as_slice().iter()
    }
}

impl<'a> IntoIterator for &'a Transmits {
    type Item = &'a Transmit;
    type IntoIter = std::slice::Iter<'a, Transmit>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// What to do with a received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
// Returned by value once per packet and consumed at once: boxing the transmits would
// allocate per packet, which the relay never does.
#[allow(clippy::large_enum_variant)]
pub enum RelayOutput {
    /// Send the received bytes once per transmit (unchanged, or with the transmit's
    /// [`Rewrite`] applied to a copy).
    Forward(Transmits),
    /// The leg is mixed ([`Relay::set_mixed`]): the datagram, of this kind (RTP or RTCP), was
    /// admitted and counted; hand RTP to the mixer, forward nothing.
    Consume(Component),
    /// Drop the datagram; it has been counted under this reason.
    Drop(DropReason),
}

impl RelayOutput {
    /// The transmits, empty for a drop or a consumed packet.
    #[must_use]
    pub fn transmits(&self) -> &[Transmit] {
        match self {
            RelayOutput::Forward(t) => t.as_slice(),
            RelayOutput::Consume(_) | RelayOutput::Drop(_) => &[],
        }
    }

    /// The drop reason, if dropped.
    #[must_use]
    pub fn drop_reason(&self) -> Option<DropReason> {
        match self {
            RelayOutput::Forward(_) | RelayOutput::Consume(_) => None,
            RelayOutput::Drop(r) => Some(*r),
        }
    }
}

/// Something the caller should know about, drained with [`Relay::poll_event`] or returned by
/// [`Relay::handle_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayEvent {
    /// A leg's remote endpoint for a component was learned or replaced.
    EndpointLatched {
        /// The leg.
        leg: LegId,
        /// Its socket the packet came in on.
        component: Component,
        /// The new endpoint.
        addr: SocketAddr,
        /// The endpoint it replaced, if any.
        previous: Option<SocketAddr>,
    },
    /// No valid packet from any leg for the media timeout.
    MediaTimeout {
        /// When the last valid packet arrived (or the relay was created).
        last_activity: Micros,
    },
}

/// A latch that moved: the new endpoint and the one it replaced.
#[derive(Debug, Clone, Copy)]
struct Relatch {
    addr: SocketAddr,
    previous: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Endpoint {
    latched: Option<SocketAddr>,
    /// Last valid packet from the latched source.
    last_from_latched: Option<Micros>,
}

#[derive(Debug, Clone, Copy)]
struct ForwardedSr {
    ssrc: Ssrc,
    ntp_middle: u32,
    at: Micros,
}

/// One leg of a relayed call: its configuration, learned endpoints and statistics.
#[derive(Debug, Clone)]
pub struct RelayLeg {
    id: LegId,
    config: LegConfig,
    endpoints: [Endpoint; 2],
    targets: [LegId; MAX_FORWARD_TARGETS],
    target_count: u8,
    blocked: bool,
    rtp_stats: RtpReceiveStats,
    rtcp_stats: RtcpReceiveStats,
    drops: DropCounters,
    forwarded: PacketCounters,
    last_packet: Option<Micros>,
    /// Sender reports recently forwarded *to* this leg, for RTT from its report blocks.
    sent_srs: [Option<ForwardedSr>; SR_MEMORY],
    next_sr: u8,
    /// Media from this leg goes to the mixer, not to targets.
    mixed: bool,
    /// The `telephone-event` payload type this leg sends, if known.
    telephone_event: Option<u8>,
    /// Drop this leg's RFC 4733 events instead of forwarding them.
    dtmf_blocked: bool,
    /// Header of the last RTP packet sent to this leg (as the leg saw it).
    last_sent: Option<OutputSeed>,
    /// Forwarded RTP continues a stream the mixer sent to this leg.
    rewrite: Option<StreamRewrite>,
}

impl RelayLeg {
    fn new(id: LegId, config: LegConfig) -> Self {
        RelayLeg {
            id,
            config,
            endpoints: [Endpoint::default(); 2],
            targets: [LegId(u32::MAX); MAX_FORWARD_TARGETS],
            target_count: 0,
            blocked: false,
            rtp_stats: RtpReceiveStats::new(config.clock_rate),
            rtcp_stats: RtcpReceiveStats::default(),
            drops: DropCounters::default(),
            forwarded: PacketCounters::default(),
            last_packet: None,
            sent_srs: [None; SR_MEMORY],
            next_sr: 0,
            mixed: false,
            telephone_event: None,
            dtmf_blocked: false,
            last_sent: None,
            rewrite: None,
        }
    }

    /// This leg's id.
    #[must_use]
    pub fn id(&self) -> LegId {
        self.id
    }

    /// Its configuration.
    #[must_use]
    pub fn config(&self) -> &LegConfig {
        &self.config
    }

    /// Statistics of the RTP this leg sends us.
    #[must_use]
    pub fn rtp_stats(&self) -> &RtpReceiveStats {
        &self.rtp_stats
    }

    /// Statistics of the RTCP this leg sends us: its reports, remote loss, round-trip time.
    #[must_use]
    pub fn rtcp_stats(&self) -> &RtcpReceiveStats {
        &self.rtcp_stats
    }

    /// Packets from this leg dropped instead of forwarded, by reason. A packet delivered to at
    /// least one target is not a drop.
    #[must_use]
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Packets and bytes sent out to this leg (forwarded from others).
    #[must_use]
    pub fn forwarded(&self) -> &PacketCounters {
        &self.forwarded
    }

    /// The source learned on a socket, if any.
    #[must_use]
    pub fn learned(&self, component: Component) -> Option<SocketAddr> {
        self.endpoints[component.index()].latched
    }

    /// Where a packet of `kind` for this leg goes now: from which of its sockets, to which address
    /// (see the [module docs](self#endpoint-learning-latching)).
    #[must_use]
    pub fn destination(&self, kind: Component) -> Option<(Component, SocketAddr)> {
        let cfg = &self.config;
        let learn = cfg.latching != Latching::Asymmetric;
        let rtp_learned = if learn {
            self.endpoints[0].latched
        } else {
            None
        };
        if kind == Component::Rtp || cfg.rtcp_mux {
            return rtp_learned
                .or(cfg.expected_rtp)
                .map(|dst| (Component::Rtp, dst));
        }
        let rtcp_learned = if learn {
            self.endpoints[1].latched
        } else {
            None
        };
        rtcp_learned
            .or(cfg.expected_rtcp)
            .or_else(|| rtp_learned.and_then(next_port))
            .or_else(|| cfg.expected_rtp.and_then(next_port))
            .map(|dst| (Component::Rtcp, dst))
    }

    /// Arrival time of the last valid packet from this leg, either socket.
    #[must_use]
    pub fn last_packet(&self) -> Option<Micros> {
        self.last_packet
    }

    /// Legs this leg's media is forwarded to.
    #[must_use]
    pub fn targets(&self) -> &[LegId] {
        &self.targets[..usize::from(self.target_count)]
    }

    /// Whether media from this leg is blocked.
    #[must_use]
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Whether this leg's media goes to the mixer ([`Relay::set_mixed`]).
    #[must_use]
    pub fn is_mixed(&self) -> bool {
        self.mixed
    }

    /// The `telephone-event` payload type this leg sends, if known.
    #[must_use]
    pub fn telephone_event(&self) -> Option<u8> {
        self.telephone_event
    }

    /// Whether this leg's RFC 4733 events are dropped.
    #[must_use]
    pub fn is_dtmf_blocked(&self) -> bool {
        self.dtmf_blocked
    }

    /// The header of the last RTP packet the relay sent to this leg, as the leg saw it (after
    /// any [`Rewrite`]), or the seed given to [`Relay::continue_stream`]: where a mixer
    /// taking over this leg's output carries on from.
    #[must_use]
    pub fn last_sent(&self) -> Option<OutputSeed> {
        self.last_sent
    }

    /// Whether RTP forwarded to this leg is rewritten to continue a mixer's stream.
    #[must_use]
    pub fn is_rewriting(&self) -> bool {
        self.rewrite.is_some()
    }

    /// MOS estimate of the media this leg sends us, from its loss and jitter and the round-trip
    /// time to it ([`RtpReceiveStats::mos`]).
    #[must_use]
    pub fn mos(&self) -> Option<f64> {
        self.rtp_stats.mos(self.rtcp_stats.rtt())
    }

    /// Expected address a packet on `component` should come from, for strict `Asymmetric` legs.
    fn expected_source(&self, component: Component) -> Option<SocketAddr> {
        match component {
            Component::Rtp => self.config.expected_rtp,
            Component::Rtcp => self
                .config
                .expected_rtcp
                .or_else(|| self.config.expected_rtp.and_then(next_port)),
        }
    }

    /// Last time any latched source of this leg sent a valid packet.
    fn latched_activity(&self) -> Option<Micros> {
        self.endpoints
            .iter()
            .filter_map(|e| e.last_from_latched)
            .max()
    }

    /// Source check and endpoint learning; `Ok(Some(..))` when a latch moved.
    fn admit(
        &mut self,
        now: Micros,
        component: Component,
        src: SocketAddr,
        relatch_after: Duration,
    ) -> Result<Option<Relatch>, DropReason> {
        let strict = self.config.strict_source;
        if self.config.latching == Latching::Asymmetric {
            return match self.expected_source(component) {
                Some(expected) if strict && expected != src => Err(DropReason::StrictSource),
                _ => Ok(None),
            };
        }
        let silent_since = self.latched_activity();
        let ep = &mut self.endpoints[component.index()];
        match ep.latched {
            None => {
                ep.latched = Some(src);
                ep.last_from_latched = Some(now);
                Ok(Some(Relatch {
                    addr: src,
                    previous: None,
                }))
            }
            Some(latched) if latched == src => {
                ep.last_from_latched = Some(now);
                Ok(None)
            }
            Some(latched) => {
                if strict {
                    return Err(DropReason::StrictSource);
                }
                let silent = silent_since.is_none_or(|t| now.saturating_since(t) >= relatch_after);
                if self.config.latching == Latching::Symmetric && silent {
                    ep.latched = Some(src);
                    ep.last_from_latched = Some(now);
                    return Ok(Some(Relatch {
                        addr: src,
                        previous: Some(latched),
                    }));
                }
                Ok(None)
            }
        }
    }

    fn remember_forwarded_sr(&mut self, sr: ForwardedSr) {
        let i = usize::from(self.next_sr) % SR_MEMORY;
        self.sent_srs[i] = Some(sr);
        // SR_MEMORY is small, so the index fits in a u8.
        self.next_sr = ((i + 1) % SR_MEMORY) as u8;
    }

    /// Round-trip time between the relay and this leg from a block it sent about a source whose
    /// SR we forwarded to it: time since we forwarded that SR minus the leg's DLSR.
    fn rtt_from_block(&self, now: Micros, block: &rtcp::ReportBlock) -> Option<Duration> {
        let sr = self
            .sent_srs
            .iter()
            .flatten()
            .find(|s| s.ssrc == block.ssrc && s.ntp_middle == block.last_sr)?;
        let since = rtcp::duration_to_q16(now.saturating_since(sr.at));
        let arrival_middle = block.last_sr.wrapping_add(since);
        block.round_trip_time(NtpTime(u64::from(arrival_middle) << 16))
    }

    /// Read a validated compound from this leg into its RTCP statistics.
    fn record_rtcp(&mut self, now: Micros, compound: RtcpCompound<'_>) {
        self.rtcp_stats
            .record_packet(now, compound.as_bytes().len());
        for packet in compound.packets() {
            let (reporter, blocks) = match packet {
                RtcpPacket::SenderReport(sr) => {
                    self.rtcp_stats.record_sender_report(SenderInfo {
                        received_at: now,
                        ssrc: sr.ssrc(),
                        ntp_middle: sr.ntp_time().middle(),
                        packet_count: sr.packet_count(),
                        octet_count: sr.octet_count(),
                    });
                    (sr.ssrc(), sr.report_blocks())
                }
                RtcpPacket::ReceiverReport(rr) => {
                    self.rtcp_stats.record_receiver_report();
                    (rr.ssrc(), rr.report_blocks())
                }
                _ => continue,
            };
            for block in blocks {
                let rtt = self.rtt_from_block(now, &block);
                self.rtcp_stats.record_report_block(
                    RemoteReport {
                        received_at: now,
                        reporter,
                        block,
                    },
                    rtt,
                );
            }
        }
    }

    /// Notes an RTP packet (sent by a leg with `clock_rate`) going out to this leg at `now`;
    /// returns the header rewrite to apply when this leg continues a mixer's stream.
    fn note_sent(&mut self, now: Micros, p: &RtpPacket<'_>, clock_rate: u32) -> Option<Rewrite> {
        let in_ssrc = p.ssrc();
        let in_seq = p.sequence_number();
        let in_ts = p.timestamp().0;
        let (ssrc, seq, timestamp, rewrite) = match self.rewrite.as_mut() {
            None => (in_ssrc, in_seq, in_ts, None),
            Some(rw) => {
                if rw.anchored_on != Some(in_ssrc) {
                    // Follow on from the last packet this leg saw: the next sequence number,
                    // the timestamp advanced by the time elapsed since.
                    let (seq, ts) = match self.last_sent {
                        Some(last) => {
                            let elapsed = now.saturating_since(last.at);
                            let ticks = elapsed.as_micros() * u128::from(clock_rate) / 1_000_000;
                            // RTP timestamps wrap; only the low 32 bits matter.
                            let ticks = (ticks & u128::from(u32::MAX)) as u32;
                            (last.seq.wrapping_add(1), last.timestamp.wrapping_add(ticks))
                        }
                        None => (in_seq, in_ts),
                    };
                    rw.seq_delta = seq.wrapping_sub(in_seq);
                    rw.ts_delta = ts.wrapping_sub(in_ts);
                    rw.anchored_on = Some(in_ssrc);
                }
                let seq = in_seq.wrapping_add(rw.seq_delta);
                let ts = in_ts.wrapping_add(rw.ts_delta);
                let out = Rewrite {
                    ssrc: rw.ssrc,
                    seq,
                    timestamp: RtpTimestamp(ts),
                };
                (rw.ssrc, seq, ts, Some(out))
            }
        };
        self.last_sent = Some(OutputSeed {
            ssrc: ssrc.0,
            seq,
            timestamp,
            clock_rate,
            at: now,
        });
        rewrite
    }

    fn clear_targets(&mut self) {
        self.target_count = 0;
    }

    fn add_target(&mut self, to: LegId) -> Result<(), RelayError> {
        if self.targets().contains(&to) {
            return Ok(());
        }
        let slot = self
            .targets
            .get_mut(usize::from(self.target_count))
            .ok_or(RelayError::TooManyTargets(self.id))?;
        *slot = to;
        self.target_count += 1;
        Ok(())
    }

    fn remove_target(&mut self, to: LegId) -> bool {
        let n = usize::from(self.target_count);
        let Some(pos) = self.targets[..n].iter().position(|&t| t == to) else {
            return false;
        };
        self.targets.copy_within(pos + 1..n, pos);
        self.target_count -= 1;
        true
    }
}

fn next_port(addr: SocketAddr) -> Option<SocketAddr> {
    let port = addr.port().checked_add(1)?;
    Some(SocketAddr::new(addr.ip(), port))
}

#[derive(Debug, Clone)]
struct Slot {
    generation: u32,
    leg: Option<RelayLeg>,
}

#[derive(Debug, Clone, Copy)]
struct EventQueue {
    items: [Option<RelayEvent>; EVENT_CAPACITY],
    head: u8,
    len: u8,
    overflowed: u64,
}

impl EventQueue {
    const fn new() -> Self {
        EventQueue {
            items: [None; EVENT_CAPACITY],
            head: 0,
            len: 0,
            overflowed: 0,
        }
    }

    fn push(&mut self, e: RelayEvent) {
        let len = usize::from(self.len);
        if len == EVENT_CAPACITY {
            self.overflowed = self.overflowed.saturating_add(1);
            return;
        }
        self.items[(usize::from(self.head) + len) % EVENT_CAPACITY] = Some(e);
        self.len += 1;
    }

    fn pop(&mut self) -> Option<RelayEvent> {
        if self.len == 0 {
            return None;
        }
        let head = usize::from(self.head);
        let e = self.items[head].take();
        // EVENT_CAPACITY is small, so the index fits in a u8.
        self.head = ((head + 1) % EVENT_CAPACITY) as u8;
        self.len -= 1;
        e
    }
}

/// The relay of one call (see the [module docs](self) for learning rules, the drive contract and
/// the media timeout).
///
/// ```
/// use std::net::SocketAddr;
/// use switchboard_proto::relay::{Component, LegConfig, Relay, RelayConfig, RelayOutput};
/// use switchboard_proto::time::Micros;
///
/// let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
/// let mut relay = Relay::new(Micros::ZERO, RelayConfig::default());
/// let mut offer = LegConfig::new(addr("192.0.2.1:30000"));
/// offer.expected_rtp = Some(addr("198.51.100.1:4000"));
/// let a = relay.add_leg(offer).unwrap();
/// let b = relay.add_leg(LegConfig::new(addr("192.0.2.1:30002"))).unwrap();
/// relay.set_peer(a, b).unwrap();
///
/// // B has sent nothing and has no SDP address yet: A's packet cannot go anywhere.
/// let pkt = [0x80, 0, 0, 1, 0, 0, 0, 160, 0, 0, 0, 7];
/// let out = relay.handle_packet(Micros(1000), a, Component::Rtp, addr("198.51.100.1:4000"), &pkt);
/// assert!(matches!(out, RelayOutput::Drop(_)));
///
/// // B's packet goes to A's SDP address, from A's RTP socket; B is now latched.
/// let out = relay.handle_packet(Micros(2000), b, Component::Rtp, addr("203.0.113.9:5000"), &pkt);
/// let t = out.transmits()[0];
/// assert_eq!((t.from_leg, t.component, t.dst), (a, Component::Rtp, addr("198.51.100.1:4000")));
/// while let Some(event) = relay.poll_event() {
///     let _ = event; // EndpointLatched for b
/// }
/// assert_eq!(relay.poll_timeout(), Some(Micros(2000 + 60_000_000)));
/// ```
#[derive(Debug, Clone)]
pub struct Relay {
    config: RelayConfig,
    slots: Vec<Slot>,
    created: Micros,
    last_activity: Micros,
    timed_out: bool,
    drops: DropCounters,
    events: EventQueue,
}

impl Relay {
    /// An empty relay created at `now`.
    #[must_use]
    pub fn new(now: Micros, config: RelayConfig) -> Self {
        Relay {
            config,
            slots: Vec::with_capacity(INITIAL_SLOTS),
            created: now,
            last_activity: now,
            timed_out: false,
            drops: DropCounters::default(),
            events: EventQueue::new(),
        }
    }

    /// The relay's settings.
    #[must_use]
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// When the relay was created.
    #[must_use]
    pub fn created(&self) -> Micros {
        self.created
    }

    /// Arrival of the last valid packet from any leg, or the creation time.
    #[must_use]
    pub fn last_activity(&self) -> Micros {
        self.last_activity
    }

    /// Packets for legs the relay does not have ([`DropReason::UnknownLeg`]).
    #[must_use]
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Events lost because nobody drained [`Self::poll_event`].
    #[must_use]
    pub fn events_overflowed(&self) -> u64 {
        self.events.overflowed
    }

    /// Add a leg (an offer or a subscription). It forwards nowhere until [`Self::set_peer`] or
    /// [`Self::add_forward`].
    pub fn add_leg(&mut self, config: LegConfig) -> Result<LegId, RelayError> {
        let index = match self.slots.iter().position(|s| s.leg.is_none()) {
            Some(i) => i,
            None if self.slots.len() < MAX_LEGS => {
                self.slots.push(Slot {
                    generation: 0,
                    leg: None,
                });
                self.slots.len() - 1
            }
            None => return Err(RelayError::TooManyLegs),
        };
        let slot = &mut self.slots[index];
        let id = LegId::new(index, slot.generation);
        slot.leg = Some(RelayLeg::new(id, config));
        Ok(id)
    }

    /// Replace a leg's configuration (an answer, a re-INVITE). Learned endpoints are cleared when
    /// the SDP address or the latching mode changes; statistics carry on.
    pub fn update_leg(&mut self, id: LegId, config: LegConfig) -> Result<(), RelayError> {
        let leg = self.leg_mut(id).ok_or(RelayError::UnknownLeg(id))?;
        let old = leg.config;
        if old.expected_rtp != config.expected_rtp
            || old.expected_rtcp != config.expected_rtcp
            || old.latching != config.latching
        {
            leg.endpoints = [Endpoint::default(); 2];
        }
        leg.rtp_stats.set_clock_rate(config.clock_rate);
        leg.config = config;
        Ok(())
    }

    /// Remove a leg, and every forward to it; returns it with its final statistics.
    pub fn remove_leg(&mut self, id: LegId) -> Result<RelayLeg, RelayError> {
        let slot = self
            .slots
            .get_mut(id.index())
            .filter(|s| s.generation == id.generation())
            .ok_or(RelayError::UnknownLeg(id))?;
        let leg = slot.leg.take().ok_or(RelayError::UnknownLeg(id))?;
        slot.generation = slot.generation.wrapping_add(1) & GENERATION_MASK;
        for other in self.slots.iter_mut().filter_map(|s| s.leg.as_mut()) {
            other.remove_target(id);
        }
        Ok(leg)
    }

    /// Forward media both ways between `a` and `b`.
    pub fn set_peer(&mut self, a: LegId, b: LegId) -> Result<(), RelayError> {
        let a_had_b = self.leg(a).is_some_and(|l| l.targets().contains(&b));
        self.add_forward(a, b)?;
        if let Err(e) = self.add_forward(b, a) {
            if !a_had_b {
                self.remove_forward(a, b)?;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Forward media from `from` to `to` (one way: a listener receives without being heard).
    pub fn add_forward(&mut self, from: LegId, to: LegId) -> Result<(), RelayError> {
        if from == to {
            return Err(RelayError::SelfForward(from));
        }
        if self.leg(to).is_none() {
            return Err(RelayError::UnknownLeg(to));
        }
        self.leg_mut(from)
            .ok_or(RelayError::UnknownLeg(from))?
            .add_target(to)
    }

    /// Stop forwarding from `from` to `to`; whether it was forwarding.
    pub fn remove_forward(&mut self, from: LegId, to: LegId) -> Result<bool, RelayError> {
        Ok(self
            .leg_mut(from)
            .ok_or(RelayError::UnknownLeg(from))?
            .remove_target(to))
    }

    /// Block or unblock media from a leg (NG `block media`): its packets are still counted, then
    /// dropped as [`DropReason::Blocked`].
    pub fn set_blocked(&mut self, id: LegId, blocked: bool) -> Result<(), RelayError> {
        self.leg_mut(id).ok_or(RelayError::UnknownLeg(id))?.blocked = blocked;
        Ok(())
    }

    /// Put a leg under the mixer (`true`) or back to relaying: a mixed leg's packets are
    /// admitted and counted, then returned as [`RelayOutput::Consume`] instead of forwarded.
    /// Its forward targets are kept (and ignored while mixed).
    pub fn set_mixed(&mut self, id: LegId, mixed: bool) -> Result<(), RelayError> {
        self.leg_mut(id).ok_or(RelayError::UnknownLeg(id))?.mixed = mixed;
        Ok(())
    }

    /// Remove every forward from and to a leg.
    pub fn clear_forwards(&mut self, id: LegId) -> Result<(), RelayError> {
        self.leg_mut(id)
            .ok_or(RelayError::UnknownLeg(id))?
            .clear_targets();
        for other in self.slots.iter_mut().filter_map(|s| s.leg.as_mut()) {
            other.remove_target(id);
        }
        Ok(())
    }

    /// From now on, RTP forwarded to leg `id` continues the stream described by `seed` (what
    /// a mixer sent it last): the seed's SSRC, the next sequence number, timestamps advanced
    /// by the time elapsed. `None` stops rewriting (forwarded packets go out unchanged).
    pub fn continue_stream(
        &mut self,
        id: LegId,
        seed: Option<OutputSeed>,
    ) -> Result<(), RelayError> {
        let leg = self.leg_mut(id).ok_or(RelayError::UnknownLeg(id))?;
        match seed {
            Some(seed) => {
                leg.last_sent = Some(seed);
                leg.rewrite = Some(StreamRewrite {
                    ssrc: Ssrc(seed.ssrc),
                    seq_delta: 0,
                    ts_delta: 0,
                    anchored_on: None,
                });
            }
            None => leg.rewrite = None,
        }
        Ok(())
    }

    /// The `telephone-event` payload type leg `id` sends (RFC 4733), for
    /// [`Self::set_dtmf_blocked`].
    pub fn set_telephone_event(&mut self, id: LegId, pt: Option<u8>) -> Result<(), RelayError> {
        self.leg_mut(id)
            .ok_or(RelayError::UnknownLeg(id))?
            .telephone_event = pt;
        Ok(())
    }

    /// Drop (or forward again) the RFC 4733 event packets leg `id` sends, counted as
    /// [`DropReason::DtmfBlocked`]. Needs the leg's payload type
    /// ([`Self::set_telephone_event`]); mixed legs are left to the mixer.
    pub fn set_dtmf_blocked(&mut self, id: LegId, blocked: bool) -> Result<(), RelayError> {
        self.leg_mut(id)
            .ok_or(RelayError::UnknownLeg(id))?
            .dtmf_blocked = blocked;
        Ok(())
    }

    /// A leg, if it exists.
    #[must_use]
    pub fn leg(&self, id: LegId) -> Option<&RelayLeg> {
        self.slots
            .get(id.index())
            .filter(|s| s.generation == id.generation())
            .and_then(|s| s.leg.as_ref())
    }

    fn leg_mut(&mut self, id: LegId) -> Option<&mut RelayLeg> {
        self.slots
            .get_mut(id.index())
            .filter(|s| s.generation == id.generation())
            .and_then(|s| s.leg.as_mut())
    }

    /// All legs.
    pub fn legs(&self) -> impl Iterator<Item = &RelayLeg> + '_ {
        self.slots.iter().filter_map(|s| s.leg.as_ref())
    }

    /// Decide what to do with a datagram received at `now` on `leg`'s `component` socket from
    /// `src`. On [`RelayOutput::Forward`], send `data` once per transmit (with the transmit's
    /// [`Rewrite`], if any, applied to a copy); on [`RelayOutput::Consume`], give RTP to the
    /// mixer.
    pub fn handle_packet(
        &mut self,
        now: Micros,
        leg: LegId,
        component: Component,
        src: SocketAddr,
        data: &[u8],
    ) -> RelayOutput {
        let relatch_after = self.config.relatch_after;
        let Some(source) = self.leg_mut(leg) else {
            self.drops.record(DropReason::UnknownLeg);
            return RelayOutput::Drop(DropReason::UnknownLeg);
        };

        let kind = if component == Component::Rtp && rtp::is_rtcp(data) {
            Component::Rtcp
        } else {
            component
        };
        let parsed = match kind {
            Component::Rtp => RtpPacket::parse(data).map(Parsed::Rtp).map_err(|e| {
                source.rtp_stats.record_error();
                e.reason()
            }),
            Component::Rtcp => RtcpCompound::parse(data).map(Parsed::Rtcp).map_err(|e| {
                source.rtcp_stats.record_error();
                e.reason()
            }),
        };
        let parsed = match parsed {
            Ok(p) => p,
            Err(reason) => {
                source.drops.record(reason);
                return RelayOutput::Drop(reason);
            }
        };

        let latched = match source.admit(now, component, src, relatch_after) {
            Ok(latched) => latched,
            Err(reason) => {
                source.drops.record(reason);
                return RelayOutput::Drop(reason);
            }
        };
        source.last_packet = Some(now);
        match parsed {
            Parsed::Rtp(p) => source.rtp_stats.record_packet(now, &p, data.len()),
            Parsed::Rtcp(c) => source.record_rtcp(now, c),
        }
        let dtmf_blocked = match parsed {
            Parsed::Rtp(p) => {
                source.dtmf_blocked
                    && !source.mixed
                    && source.telephone_event == Some(p.payload_type().get())
            }
            Parsed::Rtcp(_) => false,
        };
        let verdict = if source.blocked {
            Err(DropReason::Blocked)
        } else if dtmf_blocked {
            Err(DropReason::DtmfBlocked)
        } else if source.mixed {
            Ok(None)
        } else if source.target_count == 0 {
            Err(DropReason::NoPeer)
        } else {
            Ok(Some((source.targets, source.target_count)))
        };
        let source_clock = source.config.clock_rate;
        if let Err(reason) = verdict {
            source.drops.record(reason);
        }
        self.last_activity = now;
        self.timed_out = false;
        if let Some(latch) = latched {
            self.events.push(RelayEvent::EndpointLatched {
                leg,
                component,
                addr: latch.addr,
                previous: latch.previous,
            });
        }
        let (targets, count) = match verdict {
            Ok(Some(t)) => t,
            Ok(None) => return RelayOutput::Consume(kind),
            Err(reason) => return RelayOutput::Drop(reason),
        };

        let mut out = Transmits::new(kind);
        for &to in &targets[..usize::from(count)] {
            let Some(target) = self.leg_mut(to) else {
                continue;
            };
            let Some((from_component, dst)) = target.destination(kind) else {
                continue;
            };
            target.forwarded.record(now, data.len());
            let rewrite = match parsed {
                Parsed::Rtp(p) => target.note_sent(now, &p, source_clock),
                Parsed::Rtcp(c) => {
                    for packet in c.packets() {
                        if let RtcpPacket::SenderReport(sr) = packet {
                            target.remember_forwarded_sr(ForwardedSr {
                                ssrc: sr.ssrc(),
                                ntp_middle: sr.ntp_time().middle(),
                                at: now,
                            });
                        }
                    }
                    None
                }
            };
            out.push(Transmit {
                from_leg: to,
                component: from_component,
                dst,
                rewrite,
            });
        }
        if out.is_empty() {
            if let Some(source) = self.leg_mut(leg) {
                source.drops.record(DropReason::NoDestination);
            }
            return RelayOutput::Drop(DropReason::NoDestination);
        }
        RelayOutput::Forward(out)
    }

    /// The next event (endpoint latches), if any. Drain until `None` after each `handle_*`.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop()
    }

    /// When [`Self::handle_timeout`] must next be called; `None` once the media timeout fired
    /// and no packet arrived since.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Micros> {
        if self.timed_out {
            None
        } else {
            Some(self.last_activity + self.config.media_timeout)
        }
    }

    /// Advance time to `now`: returns [`RelayEvent::MediaTimeout`] once when no valid packet
    /// arrived from any leg for the media timeout.
    #[must_use]
    pub fn handle_timeout(&mut self, now: Micros) -> Option<RelayEvent> {
        let deadline = self.poll_timeout()?;
        if now < deadline {
            return None;
        }
        self.timed_out = true;
        Some(RelayEvent::MediaTimeout {
            last_activity: self.last_activity,
        })
    }
}

#[derive(Clone, Copy)]
enum Parsed<'a> {
    Rtp(RtpPacket<'a>),
    Rtcp(RtcpCompound<'a>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtcp::{ReceiverReportWriter, ReportBlock, SenderReportWriter};
    use crate::rtp::{PayloadType, RtpHeaderWriter, RtpTimestamp};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn rtp(seq: u16) -> Vec<u8> {
        let mut buf = vec![0xd5u8; 172];
        RtpHeaderWriter::new(
            PayloadType::PCMU,
            seq,
            RtpTimestamp(u32::from(seq) * 160),
            Ssrc(1),
        )
        .write(&mut buf)
        .unwrap();
        buf
    }

    fn two_legs(cfg_a: LegConfig, cfg_b: LegConfig) -> (Relay, LegId, LegId) {
        let mut r = Relay::new(Micros::ZERO, RelayConfig::default());
        let a = r.add_leg(cfg_a).unwrap();
        let b = r.add_leg(cfg_b).unwrap();
        r.set_peer(a, b).unwrap();
        (r, a, b)
    }

    fn cfg(local: &str, remote: Option<&str>) -> LegConfig {
        let mut c = LegConfig::new(addr(local));
        c.expected_rtp = remote.map(addr);
        c
    }

    #[test]
    fn relay_forwards_both_ways_symmetric() {
        let (mut r, a, b) = two_legs(
            cfg("10.0.0.1:30000", Some("10.1.0.1:4000")),
            cfg("10.0.0.1:30002", Some("10.2.0.1:5000")),
        );
        let out = r.handle_packet(Micros(1), a, Component::Rtp, addr("10.1.0.1:4000"), &rtp(1));
        let RelayOutput::Forward(t) = out else {
            panic!("{out:?}")
        };
        assert_eq!(t.kind(), Component::Rtp);
        assert_eq!(
            t.as_slice(),
            &[Transmit::new(b, Component::Rtp, addr("10.2.0.1:5000"))]
        );
        // B's media comes from a NAT address: it is latched and used.
        let out = r.handle_packet(Micros(2), b, Component::Rtp, addr("10.9.9.9:6000"), &rtp(1));
        assert_eq!(out.transmits()[0].dst, addr("10.1.0.1:4000"));
        let out = r.handle_packet(Micros(3), a, Component::Rtp, addr("10.1.0.1:4000"), &rtp(2));
        assert_eq!(out.transmits()[0].dst, addr("10.9.9.9:6000"));
        assert_eq!(
            r.leg(b).unwrap().learned(Component::Rtp),
            Some(addr("10.9.9.9:6000"))
        );
        assert_eq!(r.leg(b).unwrap().forwarded().packets, 2);
        assert_eq!(r.leg(a).unwrap().rtp_stats().packets(), 2);
        let events: Vec<_> = std::iter::from_fn(|| r.poll_event()).collect();
        assert_eq!(events.len(), 2);
        assert!(matches!(
            events[1],
            RelayEvent::EndpointLatched { leg, component: Component::Rtp, previous: None, .. } if leg == b
        ));
    }

    #[test]
    fn relay_drops_until_destination_known() {
        let (mut r, a, b) = two_legs(cfg("10.0.0.1:30000", None), cfg("10.0.0.1:30002", None));
        let out = r.handle_packet(Micros(1), a, Component::Rtp, addr("10.1.0.1:4000"), &rtp(1));
        assert_eq!(out, RelayOutput::Drop(DropReason::NoDestination));
        assert_eq!(r.leg(a).unwrap().drops().get(DropReason::NoDestination), 1);
        r.handle_packet(Micros(2), b, Component::Rtp, addr("10.2.0.1:5000"), &rtp(1))
            .transmits()
            .first()
            .expect("A was learned");
        let lone = r.add_leg(cfg("10.0.0.1:30004", None)).unwrap();
        let out = r.handle_packet(Micros(3), lone, Component::Rtp, addr("10.3.0.1:1"), &rtp(1));
        assert_eq!(out, RelayOutput::Drop(DropReason::NoPeer));
    }

    #[test]
    fn relay_malformed_and_unknown_leg() {
        let (mut r, a, _) = two_legs(
            cfg("10.0.0.1:30000", Some("10.1.0.1:4000")),
            cfg("10.0.0.1:30002", Some("10.2.0.1:5000")),
        );
        let out = r.handle_packet(
            Micros(1),
            a,
            Component::Rtp,
            addr("10.1.0.1:4000"),
            &[0x80; 5],
        );
        assert_eq!(out, RelayOutput::Drop(DropReason::RtpTooShort));
        let out = r.handle_packet(
            Micros(1),
            a,
            Component::Rtcp,
            addr("10.1.0.1:4001"),
            &[0x80, 200, 0, 9],
        );
        assert_eq!(out, RelayOutput::Drop(DropReason::RtcpBadLength));
        let leg = r.leg(a).unwrap();
        assert_eq!(leg.rtp_stats().errors(), 1);
        assert_eq!(leg.rtcp_stats().errors(), 1);
        assert_eq!(
            leg.learned(Component::Rtp),
            None,
            "malformed packets do not latch"
        );
        assert_eq!(r.last_activity(), Micros::ZERO, "nor count as activity");
        let ghost = LegId::from_raw(7);
        let out = r.handle_packet(
            Micros(1),
            ghost,
            Component::Rtp,
            addr("10.1.0.1:4000"),
            &rtp(1),
        );
        assert_eq!(out, RelayOutput::Drop(DropReason::UnknownLeg));
        assert_eq!(r.drops().get(DropReason::UnknownLeg), 1);
    }

    #[test]
    fn relay_rtcp_destinations() {
        let mut b_cfg = cfg("10.0.0.1:30002", Some("10.2.0.1:5000"));
        let (mut r, a, b) = two_legs(cfg("10.0.0.1:30000", Some("10.1.0.1:4000")), b_cfg);
        let mut sr = [0u8; 28];
        SenderReportWriter {
            ssrc: Ssrc(1),
            ntp_time: NtpTime(0x0000_1000_0000_0000),
            rtp_timestamp: RtpTimestamp(0),
            packet_count: 0,
            octet_count: 0,
            report_blocks: &[],
        }
        .write(&mut sr)
        .unwrap();
        // RTCP port + 1 by default.
        let out = r.handle_packet(Micros(1), a, Component::Rtcp, addr("10.1.0.1:4001"), &sr);
        assert_eq!(
            out.transmits(),
            &[Transmit::new(b, Component::Rtcp, addr("10.2.0.1:5001"))]
        );
        // a=rtcp wins over port + 1.
        b_cfg.expected_rtcp = Some(addr("10.2.0.1:7000"));
        r.update_leg(b, b_cfg).unwrap();
        let out = r.handle_packet(Micros(2), a, Component::Rtcp, addr("10.1.0.1:4001"), &sr);
        assert_eq!(out.transmits()[0].dst, addr("10.2.0.1:7000"));
        // rtcp-mux: on the RTP socket to the RTP address; RTCP on the RTP port is demultiplexed.
        b_cfg.rtcp_mux = true;
        r.update_leg(b, b_cfg).unwrap();
        let out = r.handle_packet(Micros(3), a, Component::Rtp, addr("10.1.0.1:4000"), &sr);
        let RelayOutput::Forward(t) = out else {
            panic!()
        };
        assert_eq!(t.kind(), Component::Rtcp);
        assert_eq!(
            t.as_slice(),
            &[Transmit::new(b, Component::Rtp, addr("10.2.0.1:5000"))]
        );
        let leg_a = r.leg(a).unwrap();
        assert_eq!(leg_a.rtcp_stats().packets(), 3);
        assert_eq!(leg_a.rtcp_stats().sender_reports(), 3);
        assert_eq!(leg_a.rtp_stats().packets(), 0);
    }

    #[test]
    fn relay_rtt_from_forwarded_sr() {
        let (mut r, a, b) = two_legs(
            cfg("10.0.0.1:30000", Some("10.1.0.1:4000")),
            cfg("10.0.0.1:30002", Some("10.2.0.1:5000")),
        );
        let ntp = NtpTime(0x0000_1234_5678_0000);
        let mut sr = [0u8; 28];
        SenderReportWriter {
            ssrc: Ssrc(0xa),
            ntp_time: ntp,
            rtp_timestamp: RtpTimestamp(0),
            packet_count: 10,
            octet_count: 1600,
            report_blocks: &[],
        }
        .write(&mut sr)
        .unwrap();
        let _ = r.handle_packet(
            Micros(1_000_000),
            a,
            Component::Rtcp,
            addr("10.1.0.1:4001"),
            &sr,
        );
        // B answers 250 ms later, having held the SR for 200 ms: RTT 50 ms.
        let block = ReportBlock {
            ssrc: Ssrc(0xa),
            fraction_lost: 64,
            cumulative_lost: 5,
            extended_highest_seq: 100,
            jitter: 40,
            last_sr: ntp.middle(),
            delay_since_last_sr: rtcp::duration_to_q16(Duration::from_millis(200)),
        };
        let mut rr = [0u8; 32];
        ReceiverReportWriter {
            ssrc: Ssrc(0xb),
            report_blocks: &[block],
        }
        .write(&mut rr)
        .unwrap();
        let _ = r.handle_packet(
            Micros(1_250_000),
            b,
            Component::Rtcp,
            addr("10.2.0.1:5001"),
            &rr,
        );
        let stats = r.leg(b).unwrap().rtcp_stats();
        let rtt = stats.rtt().unwrap();
        assert!(
            rtt.abs_diff(Duration::from_millis(50)) < Duration::from_micros(100),
            "{rtt:?}"
        );
        let remote = stats.remote_report().unwrap();
        assert_eq!(remote.reporter, Ssrc(0xb));
        assert_eq!(remote.block, block);
        assert!((remote.fraction_lost() - 0.25).abs() < 1e-9);
        assert_eq!(
            r.leg(a)
                .unwrap()
                .rtcp_stats()
                .last_sender_report()
                .unwrap()
                .packet_count,
            10
        );
    }

    #[test]
    fn relay_strict_source_and_blocking() {
        let mut a_cfg = cfg("10.0.0.1:30000", Some("10.1.0.1:4000"));
        a_cfg.strict_source = true;
        let (mut r, a, _b) = two_legs(a_cfg, cfg("10.0.0.1:30002", Some("10.2.0.1:5000")));
        assert!(
            r.handle_packet(Micros(1), a, Component::Rtp, addr("10.1.0.1:4000"), &rtp(1))
                .drop_reason()
                .is_none()
        );
        let out = r.handle_packet(Micros(2), a, Component::Rtp, addr("10.6.6.6:4000"), &rtp(2));
        assert_eq!(out, RelayOutput::Drop(DropReason::StrictSource));
        // Strict never re-latches, however long the latched source is silent.
        let out = r.handle_packet(
            Micros::from_secs(30),
            a,
            Component::Rtp,
            addr("10.6.6.6:4000"),
            &rtp(2),
        );
        assert_eq!(out, RelayOutput::Drop(DropReason::StrictSource));
        assert_eq!(r.leg(a).unwrap().rtp_stats().packets(), 1);
        r.set_blocked(a, true).unwrap();
        let out = r.handle_packet(
            Micros::from_secs(31),
            a,
            Component::Rtp,
            addr("10.1.0.1:4000"),
            &rtp(3),
        );
        assert_eq!(out, RelayOutput::Drop(DropReason::Blocked));
        assert_eq!(r.leg(a).unwrap().rtp_stats().packets(), 2);
        assert_eq!(r.last_activity(), Micros::from_secs(31));
        // Strict asymmetric compares with the SDP address even for the first packet.
        let mut c = cfg("10.0.0.1:30004", Some("10.4.0.1:4000"));
        c.strict_source = true;
        c.latching = Latching::Asymmetric;
        let d = r.add_leg(c).unwrap();
        r.add_forward(d, a).unwrap();
        let out = r.handle_packet(
            Micros::from_secs(32),
            d,
            Component::Rtp,
            addr("10.4.0.2:4000"),
            &rtp(1),
        );
        assert_eq!(out, RelayOutput::Drop(DropReason::StrictSource));
    }

    #[test]
    fn relay_leg_table_management() {
        let mut r = Relay::new(Micros::ZERO, RelayConfig::default());
        let ids: Vec<_> = (0..MAX_LEGS)
            .map(|i| {
                r.add_leg(cfg(&format!("10.0.0.1:{}", 30000 + 2 * i), None))
                    .unwrap()
            })
            .collect();
        assert_eq!(
            r.add_leg(cfg("10.0.0.1:40000", None)),
            Err(RelayError::TooManyLegs)
        );
        for &t in &ids[1..=MAX_FORWARD_TARGETS] {
            r.add_forward(ids[0], t).unwrap();
        }
        assert_eq!(
            r.add_forward(ids[0], ids[MAX_FORWARD_TARGETS + 1]),
            Err(RelayError::TooManyTargets(ids[0]))
        );
        assert_eq!(
            r.add_forward(ids[1], ids[1]),
            Err(RelayError::SelfForward(ids[1]))
        );
        // set_peer rolls back when the reverse direction is full.
        assert_eq!(
            r.set_peer(ids[5], ids[0]),
            Err(RelayError::TooManyTargets(ids[0]))
        );
        assert!(r.leg(ids[5]).unwrap().targets().is_empty());
        let removed = r.remove_leg(ids[2]).unwrap();
        assert_eq!(removed.id(), ids[2]);
        assert_eq!(r.leg(ids[0]).unwrap().targets(), &[ids[1], ids[3], ids[4]]);
        assert!(r.leg(ids[2]).is_none());
        let again = r.add_leg(cfg("10.0.0.1:40000", None)).unwrap();
        assert_eq!(again.index(), ids[2].index());
        assert_ne!(again, ids[2]);
        assert!(
            r.leg(ids[2]).is_none(),
            "a stale id does not reach the new leg"
        );
        assert_eq!(
            r.remove_leg(ids[2]).unwrap_err(),
            RelayError::UnknownLeg(ids[2])
        );
        assert_eq!(r.legs().count(), MAX_LEGS);
        assert!(r.remove_forward(ids[0], ids[1]).unwrap());
        assert!(!r.remove_forward(ids[0], ids[1]).unwrap());
    }

    #[test]
    fn relay_media_timeout() {
        let (mut r, a, _) = two_legs(
            cfg("10.0.0.1:30000", Some("10.1.0.1:4000")),
            cfg("10.0.0.1:30002", Some("10.2.0.1:5000")),
        );
        assert_eq!(r.poll_timeout(), Some(Micros::from_secs(60)));
        assert_eq!(r.handle_timeout(Micros::from_secs(59)), None);
        let _ = r.handle_packet(
            Micros::from_secs(10),
            a,
            Component::Rtp,
            addr("10.1.0.1:4000"),
            &rtp(1),
        );
        assert_eq!(r.poll_timeout(), Some(Micros::from_secs(70)));
        assert_eq!(r.handle_timeout(Micros::from_secs(69)), None);
        assert_eq!(
            r.handle_timeout(Micros::from_secs(70)),
            Some(RelayEvent::MediaTimeout {
                last_activity: Micros::from_secs(10)
            })
        );
        assert_eq!(r.poll_timeout(), None);
        assert_eq!(r.handle_timeout(Micros::from_secs(100)), None);
        let _ = r.handle_packet(
            Micros::from_secs(101),
            a,
            Component::Rtp,
            addr("10.1.0.1:4000"),
            &rtp(2),
        );
        assert_eq!(r.poll_timeout(), Some(Micros::from_secs(161)));
    }

    fn rtp_with(pt: u8, seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
        let mut buf = vec![0xd5u8; 172];
        RtpHeaderWriter::new(
            PayloadType::new(pt).unwrap(),
            seq,
            RtpTimestamp(ts),
            Ssrc(ssrc),
        )
        .write(&mut buf)
        .unwrap();
        buf
    }

    #[test]
    fn relay_large_conference_leg_ids() {
        let mut r = Relay::new(Micros::ZERO, RelayConfig::default());
        assert!(
            r.slots.capacity() < MAX_LEGS,
            "the table is not preallocated"
        );
        let ids: Vec<_> = (0..MAX_LEGS)
            .map(|_| r.add_leg(cfg("10.0.0.1:30000", None)).unwrap())
            .collect();
        assert_eq!(MAX_LEGS, 1024);
        assert_eq!(ids[1000].index(), 1000);
        assert_eq!(
            r.add_leg(cfg("10.0.0.1:1", None)),
            Err(RelayError::TooManyLegs)
        );
        r.remove_leg(ids[999]).unwrap();
        let again = r.add_leg(cfg("10.0.0.1:1", None)).unwrap();
        assert_eq!(again.index(), 999);
        assert_ne!(again, ids[999]);
        assert!(r.leg(ids[999]).is_none());
        assert!(r.leg(ids[1023]).is_some());
    }

    #[test]
    fn relay_mixed_leg_is_admitted_counted_and_consumed() {
        let mut a_cfg = cfg("10.0.0.1:30000", Some("10.1.0.1:4000"));
        a_cfg.strict_source = true;
        let (mut r, a, b) = two_legs(a_cfg, cfg("10.0.0.1:30002", Some("10.2.0.1:5000")));
        r.set_mixed(a, true).unwrap();
        assert!(r.leg(a).unwrap().is_mixed());
        let out = r.handle_packet(
            Micros(10),
            a,
            Component::Rtp,
            addr("10.1.0.1:4000"),
            &rtp(1),
        );
        assert_eq!(out, RelayOutput::Consume(Component::Rtp));
        assert!(out.transmits().is_empty() && out.drop_reason().is_none());
        let out = r.handle_packet(
            Micros(11),
            a,
            Component::Rtp,
            addr("10.6.6.6:4000"),
            &rtp(2),
        );
        assert_eq!(out, RelayOutput::Drop(DropReason::StrictSource));
        let rr = [0x80, 201, 0, 1, 0, 0, 0, 1];
        let out = r.handle_packet(Micros(12), a, Component::Rtcp, addr("10.1.0.1:4001"), &rr);
        assert_eq!(out, RelayOutput::Consume(Component::Rtcp));
        let leg = r.leg(a).unwrap();
        assert_eq!(leg.rtp_stats().packets(), 1);
        assert_eq!(leg.rtcp_stats().packets(), 1);
        assert_eq!(leg.learned(Component::Rtp), Some(addr("10.1.0.1:4000")));
        assert_eq!(r.leg(b).unwrap().forwarded().packets, 0);
        assert_eq!(r.last_activity(), Micros(12));
        // Blocked wins over mixing.
        r.set_blocked(a, true).unwrap();
        let out = r.handle_packet(
            Micros(13),
            a,
            Component::Rtp,
            addr("10.1.0.1:4000"),
            &rtp(3),
        );
        assert_eq!(out, RelayOutput::Drop(DropReason::Blocked));
        r.set_blocked(a, false).unwrap();
        r.set_mixed(a, false).unwrap();
        let out = r.handle_packet(
            Micros(14),
            a,
            Component::Rtp,
            addr("10.1.0.1:4000"),
            &rtp(4),
        );
        assert_eq!(out.transmits().len(), 1);
        r.clear_forwards(a).unwrap();
        assert!(r.leg(a).unwrap().targets().is_empty());
        assert!(r.leg(b).unwrap().targets().is_empty());
    }

    #[test]
    fn relay_remembers_last_sent_and_continues_a_stream() {
        let (mut r, a, b) = two_legs(
            cfg("10.0.0.1:30000", Some("10.1.0.1:4000")),
            cfg("10.0.0.1:30002", Some("10.2.0.1:5000")),
        );
        assert_eq!(r.leg(b).unwrap().last_sent(), None);
        let out = r.handle_packet(
            Micros(1_000),
            a,
            Component::Rtp,
            addr("10.1.0.1:4000"),
            &rtp_with(0, 100, 16_000, 0xaaaa),
        );
        assert_eq!(out.transmits()[0].rewrite, None);
        assert_eq!(
            r.leg(b).unwrap().last_sent(),
            Some(OutputSeed {
                ssrc: 0xaaaa,
                seq: 100,
                timestamp: 16_000,
                clock_rate: 8000,
                at: Micros(1_000),
            })
        );
        // B was mixed for a while; the mixer's last packet to it had these fields.
        let seed = OutputSeed {
            ssrc: 0xbbbb,
            seq: 65_535,
            timestamp: u32::MAX - 79,
            clock_rate: 8000,
            at: Micros(2_000_000),
        };
        r.continue_stream(b, Some(seed)).unwrap();
        assert!(r.leg(b).unwrap().is_rewriting());
        assert_eq!(r.leg(b).unwrap().last_sent(), Some(seed));
        // 20 ms later A's stream arrives again: B sees it as the mixer's stream carrying on.
        let out = r.handle_packet(
            Micros(2_020_000),
            a,
            Component::Rtp,
            addr("10.1.0.1:4000"),
            &rtp_with(0, 500, 80_000, 0xaaaa),
        );
        let rw = out.transmits()[0].rewrite.unwrap();
        assert_eq!(
            rw,
            Rewrite {
                ssrc: Ssrc(0xbbbb),
                seq: 0,
                timestamp: RtpTimestamp(80),
            }
        );
        let out = r.handle_packet(
            Micros(2_040_000),
            a,
            Component::Rtp,
            addr("10.1.0.1:4000"),
            &rtp_with(0, 501, 80_160, 0xaaaa),
        );
        let rw = out.transmits()[0].rewrite.unwrap();
        assert_eq!((rw.seq, rw.timestamp), (1, RtpTimestamp(240)));
        let mut pkt = rtp_with(0, 501, 80_160, 0xaaaa);
        rw.apply(&mut pkt);
        let p = RtpPacket::parse(&pkt).unwrap();
        assert_eq!(
            (p.ssrc(), p.sequence_number(), p.timestamp()),
            (Ssrc(0xbbbb), 1, RtpTimestamp(240))
        );
        assert_eq!(p.payload(), &rtp(1)[12..]);
        // What B saw last is what a mixer would continue from.
        let last = r.leg(b).unwrap().last_sent().unwrap();
        assert_eq!((last.ssrc, last.seq, last.timestamp), (0xbbbb, 1, 240));
        // A new SSRC from A re-anchors: B's stream still continues.
        let out = r.handle_packet(
            Micros(2_060_000),
            a,
            Component::Rtp,
            addr("10.1.0.1:4000"),
            &rtp_with(0, 7, 3, 0xcccc),
        );
        let rw = out.transmits()[0].rewrite.unwrap();
        assert_eq!(
            (rw.ssrc, rw.seq, rw.timestamp),
            (Ssrc(0xbbbb), 2, RtpTimestamp(400))
        );
        // A's direction is untouched; a short buffer is left alone.
        let out = r.handle_packet(
            Micros(2_060_001),
            b,
            Component::Rtp,
            addr("10.2.0.1:5000"),
            &rtp(9),
        );
        assert_eq!(out.transmits()[0].rewrite, None);
        let mut short = [1u8; 6];
        rw.apply(&mut short);
        assert_eq!(short, [1u8; 6]);
        r.continue_stream(b, None).unwrap();
        let out = r.handle_packet(
            Micros(2_080_000),
            a,
            Component::Rtp,
            addr("10.1.0.1:4000"),
            &rtp(10),
        );
        assert_eq!(out.transmits()[0].rewrite, None);
    }

    #[test]
    fn relay_blocks_telephone_events() {
        let (mut r, a, b) = two_legs(
            cfg("10.0.0.1:30000", Some("10.1.0.1:4000")),
            cfg("10.0.0.1:30002", Some("10.2.0.1:5000")),
        );
        let src = addr("10.1.0.1:4000");
        r.set_dtmf_blocked(a, true).unwrap();
        // Without a known payload type nothing is recognised as an event.
        let out = r.handle_packet(Micros(1), a, Component::Rtp, src, &rtp_with(101, 1, 0, 1));
        assert_eq!(out.transmits().len(), 1);
        r.set_telephone_event(a, Some(101)).unwrap();
        assert_eq!(r.leg(a).unwrap().telephone_event(), Some(101));
        assert!(r.leg(a).unwrap().is_dtmf_blocked());
        let out = r.handle_packet(Micros(2), a, Component::Rtp, src, &rtp_with(101, 2, 0, 1));
        assert_eq!(out, RelayOutput::Drop(DropReason::DtmfBlocked));
        assert_eq!(r.leg(a).unwrap().drops().get(DropReason::DtmfBlocked), 1);
        // Audio passes; so do events from the other leg.
        let out = r.handle_packet(Micros(3), a, Component::Rtp, src, &rtp_with(0, 3, 160, 1));
        assert_eq!(out.transmits().len(), 1);
        let out = r.handle_packet(
            Micros(4),
            b,
            Component::Rtp,
            addr("10.2.0.1:5000"),
            &rtp_with(101, 1, 0, 2),
        );
        assert_eq!(out.transmits().len(), 1);
        // Mixed legs leave events to the mixer.
        r.set_mixed(a, true).unwrap();
        let out = r.handle_packet(Micros(5), a, Component::Rtp, src, &rtp_with(101, 4, 0, 1));
        assert_eq!(out, RelayOutput::Consume(Component::Rtp));
        r.set_mixed(a, false).unwrap();
        r.set_dtmf_blocked(a, false).unwrap();
        let out = r.handle_packet(Micros(6), a, Component::Rtp, src, &rtp_with(101, 5, 0, 1));
        assert_eq!(out.transmits().len(), 1);
    }

    #[test]
    fn relay_event_queue_overflow() {
        let mut q = EventQueue::new();
        let e = RelayEvent::MediaTimeout {
            last_activity: Micros::ZERO,
        };
        for _ in 0..EVENT_CAPACITY + 2 {
            q.push(e);
        }
        assert_eq!(q.overflowed, 2);
        for _ in 0..EVENT_CAPACITY {
            assert_eq!(q.pop(), Some(e));
        }
        assert_eq!(q.pop(), None);
        q.push(e);
        assert_eq!(q.pop(), Some(e));
    }
}
