//! A deterministic simulated network around one [`Relay`], in virtual time.
//!
//! - [`Rng`]: splitmix64, seeded, so every run of a scenario sees the same network.
//! - [`LinkConfig`]: per (source IP, destination IP) pair: base delay, uniform extra delay
//!   (which also reorders packets once it exceeds the packet interval), loss and duplication.
//! - [`Sim`]: the relay, its sockets, the network queue and RTP senders; [`Sim::run_until`]
//!   moves virtual time from event to event, feeding the relay, sending its transmits through
//!   the network, calling `handle_timeout` when due and recording everything for the checks.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use switchboard_proto::relay::{Component, LegId, Relay, RelayEvent, RelayOutput};
use switchboard_proto::rtp::{PayloadType, RtpHeaderWriter, RtpTimestamp, Ssrc};
use switchboard_proto::time::Micros;

/// splitmix64.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub fn bytes(&mut self, out: &mut [u8]) {
        for b in out {
            *b = self.next_u64() as u8;
        }
    }
}

/// One direction between two hosts.
#[derive(Debug, Clone, Copy)]
pub struct LinkConfig {
    pub delay: Duration,
    /// Extra delay, uniform in [0, jitter].
    pub jitter: Duration,
    pub loss: f64,
    pub duplicate: f64,
}

impl LinkConfig {
    pub fn fixed(delay_ms: u64) -> Self {
        LinkConfig {
            delay: Duration::from_millis(delay_ms),
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
        }
    }
}

/// What happened to each datagram on a link.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkCounters {
    pub sent: u64,
    pub lost: u64,
    pub duplicated: u64,
}

/// A datagram arriving somewhere.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub at: Micros,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub data: Vec<u8>,
}

/// A relay socket.
#[derive(Debug, Clone, Copy)]
pub struct RelaySocket {
    pub addr: SocketAddr,
    pub leg: LegId,
    pub component: Component,
}

/// Sends G.711-sized RTP (160-byte payload, 20 ms, timestamps +160) from `src` to `dst`.
#[derive(Debug, Clone)]
pub struct RtpSender {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub ssrc: Ssrc,
    pub next: Micros,
    pub stop: Micros,
    pub interval: Duration,
    pub seq: u16,
    pub timestamp: u32,
    /// Every packet sent, in order.
    pub sent: Vec<(Micros, Vec<u8>)>,
}

impl RtpSender {
    pub fn new(src: SocketAddr, dst: SocketAddr, ssrc: u32, start: Micros, stop: Micros) -> Self {
        RtpSender {
            src,
            dst,
            ssrc: Ssrc(ssrc),
            next: start,
            stop,
            interval: Duration::from_millis(20),
            seq: (ssrc as u16).wrapping_mul(7919),
            timestamp: ssrc.wrapping_mul(31),
            sent: Vec::new(),
        }
    }

    fn due(&self) -> Option<Micros> {
        (self.next < self.stop).then_some(self.next)
    }

    fn emit(&mut self, rng: &mut Rng) -> Vec<u8> {
        let mut buf = vec![0u8; 172];
        rng.bytes(&mut buf[12..]);
        RtpHeaderWriter::new(
            PayloadType::PCMU,
            self.seq,
            RtpTimestamp(self.timestamp),
            self.ssrc,
        )
        .marker(self.sent.is_empty())
        .write(&mut buf)
        .unwrap();
        self.sent.push((self.next, buf.clone()));
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(160);
        self.next = self.next + self.interval;
        buf
    }
}

/// The simulation.
#[derive(Debug)]
pub struct Sim {
    pub now: Micros,
    pub relay: Relay,
    pub rng: Rng,
    pub sockets: Vec<RelaySocket>,
    pub links: HashMap<(IpAddr, IpAddr), LinkConfig>,
    pub default_link: LinkConfig,
    pub link_counters: HashMap<(IpAddr, IpAddr), LinkCounters>,
    pub senders: Vec<RtpSender>,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    in_flight: HashMap<u64, (SocketAddr, SocketAddr, Vec<u8>)>,
    order: u64,
    /// Datagrams that reached a relay socket, with the relay's verdict.
    pub at_relay: Vec<(Arrival, RelayOutput)>,
    /// Datagrams that reached anything else (endpoints).
    pub delivered: Vec<Arrival>,
    pub events: Vec<(Micros, RelayEvent)>,
}

impl Sim {
    pub fn new(relay: Relay, seed: u64) -> Self {
        Sim {
            now: Micros::ZERO,
            relay,
            rng: Rng::new(seed),
            sockets: Vec::new(),
            links: HashMap::new(),
            default_link: LinkConfig::fixed(1),
            link_counters: HashMap::new(),
            senders: Vec::new(),
            queue: BinaryHeap::new(),
            in_flight: HashMap::new(),
            order: 0,
            at_relay: Vec::new(),
            delivered: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Register the RTP socket (and RTCP on port + 1) of a leg.
    pub fn add_leg_sockets(&mut self, leg: LegId, rtp: SocketAddr) {
        self.sockets.push(RelaySocket {
            addr: rtp,
            leg,
            component: Component::Rtp,
        });
        let rtcp = SocketAddr::new(rtp.ip(), rtp.port() + 1);
        self.sockets.push(RelaySocket {
            addr: rtcp,
            leg,
            component: Component::Rtcp,
        });
    }

    pub fn set_link(&mut self, from: IpAddr, to: IpAddr, cfg: LinkConfig) {
        self.links.insert((from, to), cfg);
    }

    pub fn socket_of(&self, leg: LegId, component: Component) -> SocketAddr {
        self.sockets
            .iter()
            .find(|s| s.leg == leg && s.component == component)
            .expect("registered socket")
            .addr
    }

    /// Put a datagram on the network at the current time.
    pub fn send(&mut self, src: SocketAddr, dst: SocketAddr, data: Vec<u8>) {
        let key = (src.ip(), dst.ip());
        let cfg = *self.links.get(&key).unwrap_or(&self.default_link);
        let counters = self.link_counters.entry(key).or_default();
        counters.sent += 1;
        if self.rng.chance(cfg.loss) {
            counters.lost += 1;
            return;
        }
        let copies = if self.rng.chance(cfg.duplicate) {
            counters.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let extra = self.rng.below(cfg.jitter.as_micros() as u64 + 1);
            let at = self.now.0 + cfg.delay.as_micros() as u64 + extra;
            self.order += 1;
            self.queue.push(Reverse((at, self.order)));
            self.in_flight.insert(self.order, (src, dst, data.clone()));
        }
    }

    /// Advance virtual time to `end`, processing every event before it.
    pub fn run_until(&mut self, end: Micros) {
        loop {
            let net = self.queue.peek().map(|Reverse((t, _))| Micros(*t));
            let send = self
                .senders
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.due().map(|t| (t, i)))
                .min();
            let timeout = self.relay.poll_timeout();
            let next = [net, send.map(|(t, _)| t), timeout]
                .into_iter()
                .flatten()
                .min();
            let Some(t) = next.filter(|&t| t < end) else {
                break;
            };
            self.now = t;
            if net == Some(t) {
                let Some(Reverse((_, order))) = self.queue.pop() else {
                    unreachable!()
                };
                let (src, dst, data) = self.in_flight.remove(&order).unwrap();
                self.arrive(Arrival {
                    at: t,
                    src,
                    dst,
                    data,
                });
            } else if let Some((_, i)) = send.filter(|&(st, _)| st == t) {
                let data = self.senders[i].emit(&mut self.rng);
                let (src, dst) = (self.senders[i].src, self.senders[i].dst);
                self.send(src, dst, data);
            } else if let Some(e) = self.relay.handle_timeout(t) {
                self.events.push((t, e));
            }
            while let Some(e) = self.relay.poll_event() {
                self.events.push((self.now, e));
            }
        }
        self.now = end;
    }

    fn arrive(&mut self, arrival: Arrival) {
        let Some(sock) = self.sockets.iter().find(|s| s.addr == arrival.dst).copied() else {
            self.delivered.push(arrival);
            return;
        };
        let out = self.relay.handle_packet(
            arrival.at,
            sock.leg,
            sock.component,
            arrival.src,
            &arrival.data,
        );
        for t in out.transmits() {
            let from = self.socket_of(t.from_leg, t.component);
            self.send(from, t.dst, arrival.data.clone());
        }
        self.at_relay.push((arrival, out));
    }

    /// Datagrams delivered to `dst`.
    pub fn delivered_to(&self, dst: SocketAddr) -> impl Iterator<Item = &Arrival> {
        self.delivered.iter().filter(move |a| a.dst == dst)
    }

    /// Datagrams that reached the relay socket `dst`.
    pub fn relay_arrivals(&self, dst: SocketAddr) -> impl Iterator<Item = &(Arrival, RelayOutput)> {
        self.at_relay.iter().filter(move |(a, _)| a.dst == dst)
    }
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}
