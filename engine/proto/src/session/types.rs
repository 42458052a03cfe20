//! The interfaces between the NG call state and the engine: port allocation, media commands,
//! statistics.

use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

use crate::ng::AddressFamily;
use crate::sdp::Direction;

/// Wall-clock time in microseconds since the Unix epoch, passed in by the runtime (NG replies
/// report wall-clock seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixMicros(pub u64);

impl UnixMicros {
    /// Whole seconds.
    #[must_use]
    pub fn secs(self) -> u64 {
        self.0 / 1_000_000
    }

    /// The microseconds within the second.
    #[must_use]
    pub fn subsec_micros(self) -> u64 {
        self.0 % 1_000_000
    }
}

/// One allocated RTP/RTCP port pair on a local address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocalPair {
    /// The address advertised in SDP for this pair (the interface's, or its advertised alias).
    pub address: IpAddr,
    /// Even RTP port.
    pub rtp_port: u16,
    /// RTCP port (normally `rtp_port + 1`).
    pub rtcp_port: u16,
    /// The media worker that owns the pair's sockets.
    pub worker: usize,
}

impl LocalPair {
    /// The address family of the pair.
    #[must_use]
    pub fn family(&self) -> AddressFamily {
        AddressFamily::of(&self.address)
    }
}

/// Why no port pair could be allocated.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PortError {
    /// Every pair is in use or in quarantine.
    #[error("no free port pair")]
    Exhausted,
    /// The `direction` option named an interface that does not exist.
    #[error("unknown interface {0:?}")]
    UnknownInterface(String),
}

/// Port usage of one interface, for the `statistics` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceUsage {
    /// Logical interface name.
    pub name: String,
    /// Its address.
    pub address: IpAddr,
    /// Lowest port of the range.
    pub min: u16,
    /// Highest port of the range.
    pub max: u16,
    /// Ports in use.
    pub used: u32,
    /// Ports free.
    pub free: u32,
    /// Last port handed out.
    pub last: u16,
}

/// Port allocation, implemented by the engine. Calls come from
/// [`Sessions`](super::Sessions) while it handles a request; a pair is released exactly once,
/// through [`release_pair`](Self::release_pair), when its media or call goes away (also when a
/// request fails half-way: nothing leaks).
pub trait PortAllocator {
    /// Allocates a pair for `call_id` in `family` on the logical `interface` (`None`: the
    /// default). An engine without that family may return a pair of the other one. All pairs of
    /// one call should belong to the same worker.
    fn allocate_pair(
        &mut self,
        call_id: &str,
        family: AddressFamily,
        interface: Option<&str>,
    ) -> Result<LocalPair, PortError>;

    /// Gives a pair back.
    fn release_pair(&mut self, call_id: &str, pair: &LocalPair);

    /// The address advertised for `family` on `interface`, used for SDP lines when no pair is
    /// allocated (every stream rejected).
    fn address(&self, family: AddressFamily, interface: Option<&str>) -> Option<IpAddr>;

    /// Port usage per interface, for `statistics`.
    fn usage(&self) -> Vec<InterfaceUsage> {
        Vec::new()
    }
}

/// Where a party sends from and expects media: taken from its SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RemoteEndpoint {
    /// RTP address and port.
    pub rtp: SocketAddr,
    /// RTCP address and port (the RTP one with rtcp-mux).
    pub rtcp: SocketAddr,
}

/// One party's side of a relayed media stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSide {
    /// The party's NG tag (empty while the callee is not known yet).
    pub tag: String,
    /// The relay ports this party talks to: packets from it arrive here, packets to it leave
    /// from here (symmetric RTP).
    pub local: LocalPair,
    /// The party's address from its SDP; `None` until it sent SDP, or while on hold (`0.0.0.0`
    /// or port 0). With learning enabled the engine replaces it with the source of the first
    /// packets.
    pub remote: Option<RemoteEndpoint>,
    /// RTCP shares the RTP port with this party.
    pub rtcp_mux: bool,
    /// `strict source`: drop packets not from `remote` (or the learned address).
    pub strict_source: bool,
    /// Learn the party's address from its packets (`symmetric`, the default); false with
    /// `asymmetric`.
    pub learn_address: bool,
    /// `media handover`: let the learned address change mid-call.
    pub media_handover: bool,
    /// The party's SDP direction (`sendonly`: it only sends).
    pub direction: Direction,
    /// Payload types the party negotiated (empty for non-RTP media).
    pub payload_types: Vec<u8>,
}

/// Whether the stream carries RTP or opaque datagrams (e.g. `udptl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayKind {
    /// RTP with RTCP.
    Rtp,
    /// Any other datagrams, relayed unchanged on the RTP port pair.
    Opaque,
}

/// A bidirectional relay between two parties for one media section: packets received on
/// `sides[0].local` go out from `sides[1].local` to `sides[1]`'s address, and the other way
/// round. A relay is identified by its two local pairs; a later `SetRelay` with the same pairs
/// updates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySpec {
    /// The NG call-id.
    pub call_id: String,
    /// 1-based index of the media section.
    pub media_index: usize,
    /// RTP or opaque.
    pub kind: RelayKind,
    /// The two parties, the one that created the media first.
    pub sides: [StreamSide; 2],
    /// `Some` when the engine must decode and re-encode (the sides' codecs differ, or
    /// `always transcode`): what each side sends and must receive. `None`: relay packet for
    /// packet.
    pub transcode: Option<Box<[SideCodecs; 2]>>,
}

/// The codecs of one side of a transcoded stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideCodecs {
    /// Audio formats the party may send to the engine (from its SDP), in its order.
    pub recv: Vec<crate::sdp::Codec>,
    /// The format the engine sends to the party.
    pub send: crate::sdp::Codec,
    /// The `telephone-event` payload type the party sends, if negotiated.
    pub recv_events: Option<u8>,
    /// The `telephone-event` payload type to send digits to the party with; `None`: the
    /// party gets in-band tones.
    pub send_events: Option<u8>,
    /// Packet time of the engine's output to the party (`ptime` option or the party's
    /// `a=ptime`), ms.
    pub ptime_ms: Option<u32>,
}

/// A prompt named by an NG `play media` request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PromptSource {
    /// A WAV file on the engine's machine (`file`).
    File(String),
    /// The bytes of a WAV file (`blob`).
    Blob(Vec<u8>),
}

/// What the media plane must do after a request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MediaCommand {
    /// Create the relay or update it (remote addresses, rtcp-mux, flags).
    SetRelay(Box<RelaySpec>),
    /// Stop relaying one media section and close these pairs (already released to the
    /// allocator).
    RemoveRelay {
        /// The NG call-id.
        call_id: String,
        /// 1-based index of the media section.
        media_index: usize,
        /// The pairs to close.
        pairs: Vec<LocalPair>,
    },
    /// The call is gone: close every pair of it (already released to the allocator).
    DeleteCall {
        /// The NG call-id.
        call_id: String,
        /// The pairs to close.
        pairs: Vec<LocalPair>,
    },
    /// Start, stop or pause recording the call, or update its recording metadata
    /// (`start recording`, `stop recording`, `pause recording`, the `record call` option and
    /// `metadata` of offer and answer). Comes after the relay commands of the same request.
    Recording {
        /// The NG call-id.
        call_id: String,
        /// What to do.
        action: RecordingAction,
        /// The request's `metadata`, as given.
        metadata: Option<String>,
    },
    /// `subscribe request`: a new party (`subscriber.tag` is the generated to-tag) that hears
    /// the parties `sources` (tags) and sends nothing they hear (listen). Its remote side
    /// arrives with [`MediaCommand::SubscribeAnswer`].
    Subscribe {
        /// The NG call-id.
        call_id: String,
        /// The subscriber's side (its local pair is allocated; `remote` is `None`).
        subscriber: StreamSide,
        /// Tags of the parties it hears.
        sources: Vec<String>,
        /// The codecs offered to the subscriber (the first is what the engine sends).
        codecs: SideCodecs,
    },
    /// `subscribe answer`: the subscriber's SDP.
    SubscribeAnswer {
        /// The NG call-id.
        call_id: String,
        /// The subscriber's side with its remote address.
        subscriber: StreamSide,
        /// The codec it accepted.
        codecs: SideCodecs,
    },
    /// `unsubscribe`: the subscriber leaves; its pair is already released.
    Unsubscribe {
        /// The NG call-id.
        call_id: String,
        /// The subscriber's tag.
        tag: String,
        /// Its pairs to close.
        pairs: Vec<LocalPair>,
    },
    /// `connect`: media from party `from` is heard by party `to` (and the other way round
    /// with `bidirectional`), on top of what they hear already: whisper and barge.
    Connect {
        /// The NG call-id.
        call_id: String,
        /// Tag of the party whose audio is added.
        from: String,
        /// Tag of the party that hears it.
        to: String,
        /// Both ways.
        bidirectional: bool,
    },
    /// `play media`: play a prompt to the selected parties (empty: every party).
    PlayMedia {
        /// The NG call-id.
        call_id: String,
        /// Tags of the parties that hear it.
        tags: Vec<String>,
        /// The prompt.
        source: PromptSource,
        /// How many times to play it (`repeat-times`, at least 1).
        repeat: u32,
    },
    /// `stop media`: stop prompts to the selected parties (empty: every party).
    StopMedia {
        /// The NG call-id.
        call_id: String,
        /// Tags.
        tags: Vec<String>,
    },
    /// `play DTMF`: the selected parties *generate* the digit (as rtpengine defines it): it
    /// is sent to every party that hears them (their peers), not to them.
    PlayDtmf {
        /// The NG call-id.
        call_id: String,
        /// Tags of the generating parties (empty: every party).
        tags: Vec<String>,
        /// The digit.
        digit: char,
        /// Duration, ms.
        duration_ms: u32,
        /// Level in dBm0 (negative, e.g. -10), for in-band tones.
        volume_dbm0: i8,
    },
    /// `block DTMF` / `unblock DTMF`: drop (or pass again) digits from the selected parties.
    BlockDtmf {
        /// The NG call-id.
        call_id: String,
        /// Tags (empty: every party).
        tags: Vec<String>,
        /// Block or unblock.
        blocked: bool,
    },
}

/// What an NG request asks of the call's recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordingAction {
    /// Record the call (or resume a paused recording): `start recording`, `record call: yes`.
    Start,
    /// Stop recording: `stop recording`.
    Stop,
    /// Pause: the recording goes on with silence (`pause recording`).
    Pause,
    /// Only new metadata for the call's recordings.
    Metadata,
}

/// One party of a call as recording sees it: its tag, the relay ports its audio arrives on
/// (the first audio media section) and the codecs it negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingLeg {
    /// NG tag (empty while the callee is unknown).
    pub tag: String,
    /// NG label, if any.
    pub label: Option<String>,
    /// The pair the party sends its audio to.
    pub local: LocalPair,
    /// The party's codecs, as in its SDP.
    pub codecs: Vec<crate::sdp::Codec>,
    /// The party that made the call's first offer (the caller).
    pub caller: bool,
}

/// Counters of one stream, as the media plane sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamStats {
    /// Packets received.
    pub packets: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Packets dropped as malformed or unexpected.
    pub errors: u64,
    /// When the last packet arrived.
    pub last_packet: Option<UnixMicros>,
    /// The address learned from the packets, if any.
    pub learned: Option<SocketAddr>,
}

/// Engine-wide media counters, for `statistics`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GlobalStats {
    /// Packets relayed since start.
    pub packets: u64,
    /// Bytes relayed since start.
    pub bytes: u64,
    /// Packets dropped since start.
    pub errors: u64,
    /// Current packets per second.
    pub packet_rate: u64,
    /// Current bytes per second.
    pub byte_rate: u64,
    /// Current errors per second.
    pub error_rate: u64,
    /// Streams that carried no packets either way at their end.
    pub zero_way_streams: u64,
    /// Streams that carried packets one way only at their end.
    pub one_way_streams: u64,
}

/// Where `query`, `delete` and `statistics` replies get media counters from; implemented by
/// the engine (for example over a snapshot the workers publish). Streams are identified by the
/// call and the local address and port they are received on.
pub trait StatsSource {
    /// Counters of the stream received on `local` for `call_id`.
    fn stream(&self, call_id: &str, local: SocketAddr) -> Option<StreamStats>;

    /// Engine-wide counters.
    fn global(&self) -> GlobalStats {
        GlobalStats::default()
    }
}

/// A [`StatsSource`] without data: every counter reads zero.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoStats;

impl StatsSource for NoStats {
    fn stream(&self, _call_id: &str, _local: SocketAddr) -> Option<StreamStats> {
        None
    }
}

/// A [`StatsSource`] over a map the engine fills (for example from counters pushed by workers).
#[derive(Debug, Clone, Default)]
pub struct StatsSnapshot {
    /// Per-stream counters by (call-id, local address).
    pub streams: std::collections::HashMap<(String, SocketAddr), StreamStats>,
    /// Engine-wide counters.
    pub global: GlobalStats,
}

impl StatsSource for StatsSnapshot {
    fn stream(&self, call_id: &str, local: SocketAddr) -> Option<StreamStats> {
        self.streams.get(&(call_id.to_owned(), local)).copied()
    }

    fn global(&self) -> GlobalStats {
        self.global
    }
}

/// Why a call ended, for `statistics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// `delete` (after its delay).
    Deleted,
    /// No media for the configured timeout.
    Timeout,
    /// Only silence / no media after the final timeout.
    FinalTimeout,
    /// Offer never answered in time.
    OfferTimeout,
    /// Removed by the operator or on shutdown.
    Forced,
}

/// A simple in-memory [`PortAllocator`] over one port range: never-used pairs first, in order,
/// then released pairs, lowest first. For tests, benchmarks and tools; the engine has its own
/// per-worker allocator with quarantine.
#[derive(Debug, Clone)]
pub struct RangePorts {
    ipv4: Option<IpAddr>,
    ipv6: Option<IpAddr>,
    min: u16,
    max: u16,
    next: u16,
    free: std::collections::BTreeSet<u16>,
    used: std::collections::HashSet<u16>,
    last: u16,
}

impl RangePorts {
    /// Pairs from `[min, max]` (the first even port up) on the given addresses; at least one
    /// address must be given for allocations to succeed.
    #[must_use]
    pub fn new(ipv4: Option<IpAddr>, ipv6: Option<IpAddr>, min: u16, max: u16) -> Self {
        let first = min.saturating_add(min % 2);
        RangePorts {
            ipv4,
            ipv6,
            min,
            max,
            next: first,
            free: std::collections::BTreeSet::new(),
            used: std::collections::HashSet::new(),
            last: 0,
        }
    }

    /// Pairs currently allocated.
    #[must_use]
    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

impl PortAllocator for RangePorts {
    fn allocate_pair(
        &mut self,
        _call_id: &str,
        family: AddressFamily,
        interface: Option<&str>,
    ) -> Result<LocalPair, PortError> {
        let address = self
            .address(family, interface)
            .ok_or(PortError::Exhausted)?;
        let port = if self.next < self.max && self.next != 0 {
            let p = self.next;
            self.next = self.next.checked_add(2).unwrap_or(0);
            p
        } else if let Some(p) = self.free.pop_first() {
            p
        } else {
            return Err(PortError::Exhausted);
        };
        self.used.insert(port);
        self.last = port;
        Ok(LocalPair {
            address,
            rtp_port: port,
            rtcp_port: port + 1,
            worker: 0,
        })
    }

    fn release_pair(&mut self, _call_id: &str, pair: &LocalPair) {
        if self.used.remove(&pair.rtp_port) {
            self.free.insert(pair.rtp_port);
        }
    }

    fn address(&self, family: AddressFamily, _interface: Option<&str>) -> Option<IpAddr> {
        match family {
            AddressFamily::Ip4 => self.ipv4.or(self.ipv6),
            AddressFamily::Ip6 => self.ipv6.or(self.ipv4),
        }
    }

    fn usage(&self) -> Vec<InterfaceUsage> {
        let total = u32::from(self.max.saturating_sub(self.min)) + 1;
        let used = u32::try_from(self.used.len() * 2).unwrap_or(u32::MAX);
        self.ipv4
            .iter()
            .chain(&self.ipv6)
            .map(|a| InterfaceUsage {
                name: "default".to_owned(),
                address: *a,
                min: self.min,
                max: self.max,
                used,
                free: total.saturating_sub(used),
                last: self.last,
            })
            .collect()
    }
}
