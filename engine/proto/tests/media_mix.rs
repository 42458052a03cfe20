//! The media call's mixer driven with synthetic RTP: every party sends a tone at its own
//! frequency, what each leg receives is decoded with the codecs crate and measured with a
//! Goertzel filter.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;

use switchboard_codecs::codec::{CodecKind, CodecSpec, Decoder, Encoder};
use switchboard_codecs::dtmf::DtmfDetector;
use switchboard_codecs::g711;
use switchboard_codecs::telephone_event::{DtmfSender, TelephoneEvent, char_from_event};
use switchboard_codecs::tone::{Cadence, ToneGenerator, ToneLevel};
use switchboard_proto::media::play::ToneSpec;
use switchboard_proto::media::{
    DtmfSource, MediaCall, MediaCallConfig, MediaEvent, MediaLegConfig, OutputSeed, PlayEnd,
    PlayId, PlaySource, PlayTarget,
};
use switchboard_proto::relay::LegId;
use switchboard_proto::rtp::{PayloadType, RtpHeaderWriter, RtpPacket, RtpTimestamp, Ssrc};
use switchboard_proto::stats::DropReason;
use switchboard_proto::time::Micros;

const CUSTOMER_HZ: f32 = 500.0;
const AGENT_HZ: f32 = 1100.0;
const SUPERVISOR_HZ: f32 = 1700.0;

fn leg(n: u32) -> LegId {
    LegId::from_raw(n)
}

fn spec(kind: CodecKind) -> CodecSpec {
    CodecSpec::new(kind)
}

fn cfg(kind: CodecKind) -> MediaLegConfig {
    MediaLegConfig {
        recv: vec![spec(kind)],
        send: spec(kind),
        recv_events: None,
        send_events: None,
        ptime_ms: 20,
    }
}

fn cfg_events(kind: CodecKind) -> MediaLegConfig {
    MediaLegConfig {
        recv_events: Some(101),
        send_events: Some(101),
        ..cfg(kind)
    }
}

/// A party sending one codec's RTP: a tone (or silence, or DTMF) every 20 ms.
struct Sender {
    spec: CodecSpec,
    encoder: Encoder,
    tone: Option<ToneGenerator>,
    seq: u16,
    ts: u32,
    ssrc: u32,
}

impl Sender {
    fn new(spec: CodecSpec, hz: Option<f32>, ssrc: u32) -> Self {
        Self::with_level(spec, hz, ssrc, -10.0)
    }

    fn with_level(spec: CodecSpec, hz: Option<f32>, ssrc: u32, level: f32) -> Self {
        let encoder = Encoder::new(&spec, 20).unwrap();
        let rate = spec.audio_rate();
        Sender {
            spec,
            encoder,
            tone: hz.map(|hz| ToneGenerator::sine(rate, hz, ToneLevel::Dbm0(level)).unwrap()),
            seq: 1000,
            ts: 5000,
            ssrc,
        }
    }

    fn packet_from(&mut self, pcm: &[i16]) -> Vec<u8> {
        let mut payload = vec![0u8; self.encoder.max_payload_bytes()];
        let n = self.encoder.encode(pcm, &mut payload).unwrap();
        let mut buf = vec![0u8; 12 + n];
        let h = RtpHeaderWriter::new(
            PayloadType::new(self.spec.payload_type).unwrap(),
            self.seq,
            RtpTimestamp(self.ts),
            Ssrc(self.ssrc),
        );
        let len = h.write_packet(&payload[..n], &mut buf).unwrap();
        buf.truncate(len);
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(self.spec.clock_ticks(20));
        buf
    }

    fn packet(&mut self) -> Vec<u8> {
        let n = self.spec.samples_per_frame(20);
        let mut pcm = vec![0i16; n];
        if let Some(t) = self.tone.as_mut() {
            t.fill(&mut pcm);
        }
        self.packet_from(&pcm)
    }
}

/// What one leg received.
#[derive(Default)]
struct Received {
    packets: Vec<Vec<u8>>,
}

impl Received {
    /// Decoded audio of the packets with the send codec's payload type, from packet `from`.
    fn pcm(&self, spec: &CodecSpec, from: usize) -> Vec<i16> {
        let mut dec = Decoder::new(spec).unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0i16; spec.audio_rate() as usize / 5];
        for p in &self.packets {
            let pkt = RtpPacket::parse(p).unwrap();
            if pkt.payload_type().get() != spec.payload_type {
                continue;
            }
            let n = dec.decode(pkt.payload(), &mut buf).unwrap();
            out.extend_from_slice(&buf[..n]);
        }
        let skip = (from * spec.samples_per_frame(20)).min(out.len());
        out.split_off(skip)
    }
}

/// Power of `hz` in `x` (Goertzel), as dB relative to a full-scale sine (≈ 0 dB).
fn tone_db(x: &[i16], hz: f32, rate: u32) -> f64 {
    if x.is_empty() {
        return -200.0;
    }
    let w = 2.0 * std::f64::consts::PI * f64::from(hz) / f64::from(rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s = f64::from(v) + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let amp = 2.0 * power.sqrt() / x.len() as f64;
    20.0 * (amp / 32768.0).max(1e-10).log10()
}

struct Net {
    call: MediaCall,
    now: Micros,
    senders: HashMap<LegId, Sender>,
    received: HashMap<LegId, Received>,
}

impl Net {
    fn new(config: MediaCallConfig) -> Self {
        Net {
            call: MediaCall::new(config),
            now: Micros::from_secs(10),
            senders: HashMap::new(),
            received: HashMap::new(),
        }
    }

    fn add(&mut self, id: LegId, config: MediaLegConfig, hz: Option<f32>) {
        let s = Sender::new(config.recv[0], hz, 0x1000 + id.to_raw());
        self.call.add_leg(self.now, id, config, None).unwrap();
        self.senders.insert(id, s);
    }

    /// Runs `frames` frames: every sender sends one packet, then the call ticks.
    fn run(&mut self, frames: usize) {
        for _ in 0..frames {
            let mut ids: Vec<LegId> = self.senders.keys().copied().collect();
            ids.sort();
            for id in ids {
                let s = self.senders.get_mut(&id).unwrap();
                if s.tone.is_some() {
                    let p = s.packet();
                    self.call.push_rtp(self.now, id, &p).unwrap();
                }
            }
            self.tick();
        }
    }

    fn tick(&mut self) {
        let received = &mut self.received;
        self.call.tick(self.now, &mut |l, bytes| {
            received.entry(l).or_default().packets.push(bytes.to_vec());
        });
        self.now = Micros(self.now.0 + 20_000);
    }

    fn clear(&mut self) {
        self.received.clear();
    }

    fn heard(&self, id: LegId, spec: &CodecSpec, skip_frames: usize) -> Vec<i16> {
        self.received
            .get(&id)
            .map(|r| r.pcm(spec, skip_frames))
            .unwrap_or_default()
    }

    fn events(&mut self) -> Vec<MediaEvent> {
        std::iter::from_fn(|| self.call.poll_event()).collect()
    }
}

/// Asserts that `pcm` holds each of `allowed` and none of `forbidden` (20 dB below the
/// weakest allowed tone and below −45 dBFS).
fn assert_hears(who: &str, pcm: &[i16], rate: u32, allowed: &[f32], forbidden: &[f32]) {
    assert!(
        pcm.len() >= rate as usize / 5,
        "{who}: too little audio ({})",
        pcm.len()
    );
    let weakest = allowed
        .iter()
        .map(|&hz| tone_db(pcm, hz, rate))
        .fold(f64::INFINITY, f64::min);
    for &hz in allowed {
        let db = tone_db(pcm, hz, rate);
        assert!(db > -30.0, "{who}: {hz} Hz missing ({db:.1} dB)");
    }
    for &hz in forbidden {
        let db = tone_db(pcm, hz, rate);
        assert!(db < -45.0, "{who}: {hz} Hz present ({db:.1} dB)");
        if weakest.is_finite() {
            assert!(
                weakest - db >= 20.0,
                "{who}: {hz} Hz only {:.1} dB down",
                weakest - db
            );
        }
    }
}

const C: u32 = 1;
const A: u32 = 2;
const S: u32 = 3;

#[derive(Debug, Clone, Copy)]
enum Mode {
    Listen,
    Whisper,
    Barge,
    TalkToCustomer,
}

fn apply_mode(call: &mut MediaCall, mode: Mode) {
    let (c, a, s) = (leg(C), leg(A), leg(S));
    call.set_hears(s, &[c, a]).unwrap();
    match mode {
        Mode::Listen => {
            call.set_hears(a, &[c]).unwrap();
            call.set_hears(c, &[a]).unwrap();
        }
        Mode::Whisper => {
            call.set_hears(a, &[c, s]).unwrap();
            call.set_hears(c, &[a]).unwrap();
        }
        Mode::Barge => {
            call.set_hears(a, &[c, s]).unwrap();
            call.set_hears(c, &[a, s]).unwrap();
        }
        Mode::TalkToCustomer => {
            call.set_hears(a, &[c]).unwrap();
            call.set_hears(c, &[a, s]).unwrap();
        }
    }
}

/// (customer hears, agent hears) extra tones of each mode; the supervisor always hears both.
fn expected(mode: Mode) -> (Vec<f32>, Vec<f32>) {
    match mode {
        Mode::Listen => (vec![AGENT_HZ], vec![CUSTOMER_HZ]),
        Mode::Whisper => (vec![AGENT_HZ], vec![CUSTOMER_HZ, SUPERVISOR_HZ]),
        Mode::Barge => (
            vec![AGENT_HZ, SUPERVISOR_HZ],
            vec![CUSTOMER_HZ, SUPERVISOR_HZ],
        ),
        Mode::TalkToCustomer => (vec![AGENT_HZ, SUPERVISOR_HZ], vec![CUSTOMER_HZ]),
    }
}

fn all_but(allowed: &[f32], own: f32) -> Vec<f32> {
    [CUSTOMER_HZ, AGENT_HZ, SUPERVISOR_HZ]
        .into_iter()
        .filter(|f| !allowed.contains(f) && *f != own)
        .collect()
}

fn check_modes(kinds: [CodecKind; 3]) {
    let mut net = Net::new(MediaCallConfig::default());
    net.add(leg(C), cfg(kinds[0]), Some(CUSTOMER_HZ));
    net.add(leg(A), cfg(kinds[1]), Some(AGENT_HZ));
    net.add(leg(S), cfg(kinds[2]), Some(SUPERVISOR_HZ));
    // Every mode in turn, on the same call: a flag flip, no re-bridge.
    for mode in [
        Mode::Listen,
        Mode::Whisper,
        Mode::Barge,
        Mode::TalkToCustomer,
        Mode::Listen,
    ] {
        apply_mode(&mut net.call, mode);
        net.clear();
        net.run(40);
        let (c_hears, a_hears) = expected(mode);
        let sc = spec(kinds[0]);
        let sa = spec(kinds[1]);
        let ss = spec(kinds[2]);
        let m = format!("{mode:?}");
        assert_hears(
            &format!("{m} customer"),
            &net.heard(leg(C), &sc, 15),
            sc.audio_rate(),
            &c_hears,
            &all_but(&c_hears, CUSTOMER_HZ),
        );
        assert_hears(
            &format!("{m} agent"),
            &net.heard(leg(A), &sa, 15),
            sa.audio_rate(),
            &a_hears,
            &all_but(&a_hears, AGENT_HZ),
        );
        assert_hears(
            &format!("{m} supervisor"),
            &net.heard(leg(S), &ss, 15),
            ss.audio_rate(),
            &[CUSTOMER_HZ, AGENT_HZ],
            &[],
        );
    }
}

#[test]
fn supervision_modes_as_hears_rows() {
    check_modes([CodecKind::Pcmu; 3]);
}

#[test]
fn supervision_modes_with_mixed_codecs() {
    check_modes([CodecKind::Pcmu, CodecKind::Opus, CodecKind::Pcma]);
    let mut call = MediaCall::new(MediaCallConfig::default());
    call.add_leg(Micros::ZERO, leg(1), cfg(CodecKind::Pcmu), None)
        .unwrap();
    assert_eq!(call.mix_rate(), 8000);
    call.add_leg(Micros::ZERO, leg(2), cfg(CodecKind::Opus), None)
        .unwrap();
    assert_eq!(call.mix_rate(), 16000);
    call.remove_leg(leg(2)).unwrap();
    assert_eq!(call.mix_rate(), 8000);
}

#[test]
fn pcmu_to_pcma_is_bit_exact() {
    let mut call = MediaCall::new(MediaCallConfig::default());
    let (a, b) = (leg(1), leg(2));
    call.add_leg(Micros::ZERO, a, cfg(CodecKind::Pcmu), None)
        .unwrap();
    call.add_leg(Micros::ZERO, b, cfg(CodecKind::Pcma), None)
        .unwrap();
    call.set_hears(b, &[a]).unwrap();
    call.set_hears(a, &[b]).unwrap();
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut now = Micros::from_secs(1);
    for i in 0..100u32 {
        let payload: Vec<u8> = (0..160)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                // Avoid the codes of (near) silence so that the stream is never taken for
                // a silent frame.
                (rng as u8) & 0xEF
            })
            .collect();
        let mut buf = vec![0u8; 172];
        RtpHeaderWriter::new(PayloadType::PCMU, i as u16, RtpTimestamp(i * 160), Ssrc(7))
            .write_packet(&payload, &mut buf)
            .unwrap();
        call.push_rtp(now, a, &buf).unwrap();
        sent.push(payload);
        call.tick(now, &mut |l, bytes| {
            if l == b {
                got.push(RtpPacket::parse(bytes).unwrap().payload().to_vec());
            }
        });
        now = Micros(now.0 + 20_000);
    }
    let expect: Vec<Vec<u8>> = sent
        .iter()
        .map(|p| {
            p.iter()
                .map(|&c| g711::alaw_encode(g711::ulaw_decode(c)))
                .collect()
        })
        .collect();
    let start = got
        .iter()
        .position(|p| *p == expect[0])
        .expect("first frame not found bit-exact");
    let n = got.len() - start;
    assert!(n > 80, "only {n} frames after the delay");
    for k in 0..n {
        assert_eq!(got[start + k], expect[k], "frame {k}");
    }
}

#[test]
fn silent_agent_hears_whisper() {
    let mut net = Net::new(MediaCallConfig::default());
    net.add(leg(C), cfg(CodecKind::Pcmu), None);
    net.add(leg(A), cfg(CodecKind::Pcmu), None);
    net.add(leg(S), cfg(CodecKind::Pcmu), Some(SUPERVISOR_HZ));
    apply_mode(&mut net.call, Mode::Whisper);
    net.run(40);
    let sp = spec(CodecKind::Pcmu);
    assert_eq!(net.received[&leg(A)].packets.len(), 40);
    assert_hears(
        "agent",
        &net.heard(leg(A), &sp, 10),
        8000,
        &[SUPERVISOR_HZ],
        &[],
    );
    assert_hears(
        "customer",
        &net.heard(leg(C), &sp, 10),
        8000,
        &[],
        &[SUPERVISOR_HZ],
    );
}

#[test]
fn mute_deaf_and_gain() {
    let sp = spec(CodecKind::Pcmu);
    let mut net = Net::new(MediaCallConfig::default());
    net.add(leg(C), cfg(CodecKind::Pcmu), Some(CUSTOMER_HZ));
    net.add(leg(A), cfg(CodecKind::Pcmu), Some(AGENT_HZ));
    net.call.set_hears(leg(A), &[leg(C)]).unwrap();
    net.call.set_hears(leg(C), &[leg(A)]).unwrap();
    net.run(30);
    let before = tone_db(&net.heard(leg(A), &sp, 10), CUSTOMER_HZ, 8000);
    assert!(before > -25.0, "{before}");

    net.call.set_gain_db(leg(C), -20.0).unwrap();
    net.clear();
    net.run(30);
    let after = tone_db(&net.heard(leg(A), &sp, 10), CUSTOMER_HZ, 8000);
    assert!((before - after - 20.0).abs() < 1.5, "{before} → {after}");
    net.call.set_gain_db(leg(C), 0.0).unwrap();

    net.call.set_mute(leg(C), true).unwrap();
    net.clear();
    net.run(30);
    assert_hears(
        "agent, customer muted",
        &net.heard(leg(A), &sp, 10),
        8000,
        &[],
        &[CUSTOMER_HZ],
    );
    assert_hears(
        "customer",
        &net.heard(leg(C), &sp, 10),
        8000,
        &[AGENT_HZ],
        &[],
    );
    net.call.set_mute(leg(C), false).unwrap();

    net.call.set_deaf(leg(A), true).unwrap();
    net.clear();
    net.run(30);
    // Still one packet per frame, silence inside.
    assert_eq!(net.received[&leg(A)].packets.len(), 30);
    assert_hears(
        "deaf agent",
        &net.heard(leg(A), &sp, 10),
        8000,
        &[],
        &[CUSTOMER_HZ],
    );
    assert_hears(
        "customer",
        &net.heard(leg(C), &sp, 10),
        8000,
        &[AGENT_HZ],
        &[],
    );
    // A prompt to a deaf leg still plays.
    net.call
        .play_start(
            PlayId(1),
            PlayTarget::Leg(leg(A)),
            PlaySource::Tone(ToneSpec::Sine {
                hz: 800.0,
                level_dbm0: -10.0,
            }),
            0,
            false,
        )
        .unwrap();
    net.clear();
    net.run(20);
    assert_hears(
        "deaf agent, prompt",
        &net.heard(leg(A), &sp, 2),
        8000,
        &[800.0],
        &[CUSTOMER_HZ],
    );

    assert!(net.call.set_gain_db(leg(C), 20.5).is_err());
    assert!(net.call.set_gain_db(leg(C), -40.5).is_err());
    assert!(net.call.set_gain_db(leg(C), f32::NAN).is_err());
    assert!(net.call.set_gain_db(leg(99), 0.0).is_err());
}

#[test]
fn large_room_mixes_only_the_loudest() {
    let sp = spec(CodecKind::Pcmu);
    let mut net = Net::new(MediaCallConfig::default());
    let talkers = [
        (400.0, -8.0),
        (900.0, -10.0),
        (1300.0, -12.0),
        (2100.0, -30.0),
    ];
    for i in 0..12u32 {
        let id = leg(i + 1);
        net.call
            .add_leg(net.now, id, cfg(CodecKind::Pcmu), None)
            .unwrap();
        let s = match talkers.get(i as usize) {
            Some(&(hz, lvl)) => Sender::with_level(sp, Some(hz), 100 + i, lvl),
            None => Sender::new(sp, None, 100 + i),
        };
        net.senders.insert(id, s);
    }
    let all: Vec<LegId> = (1..=12).map(leg).collect();
    for &id in &all {
        net.call.set_hears(id, &all).unwrap();
    }
    net.run(40);
    assert_eq!(net.call.stats().talkers_mixed, 3);
    let listener = net.heard(leg(12), &sp, 10);
    assert_hears("listener", &listener, 8000, &[400.0, 900.0, 1300.0], &[]);
    assert!(tone_db(&listener, 2100.0, 8000) < -50.0);
    // A talker hears the other two loud ones, not itself.
    let t1 = net.heard(leg(1), &sp, 10);
    assert_hears("talker 1", &t1, 8000, &[900.0, 1300.0], &[400.0]);
    // Silent listeners share one encoding: 3 talkers + 1 shared.
    let st = net.call.stats();
    assert!(st.encodes < 12, "{st:?}");
    assert_eq!(st.encodes, 4, "{st:?}");
}

#[test]
fn silent_members_share_one_encoding() {
    let mut net = Net::new(MediaCallConfig::default());
    for i in 0..10u32 {
        let hz = (i == 0).then_some(700.0);
        net.add(leg(i + 1), cfg(CodecKind::Pcmu), hz);
    }
    let all: Vec<LegId> = (1..=10).map(leg).collect();
    for &id in &all {
        net.call.set_hears(id, &all).unwrap();
    }
    net.run(20);
    let st = net.call.stats();
    assert_eq!(st.members, 10);
    assert_eq!(st.encodes, 2, "{st:?}");
    // Each leg still has its own stream.
    let ssrcs: std::collections::HashSet<u32> = net
        .received
        .values()
        .map(|r| RtpPacket::parse(&r.packets[0]).unwrap().ssrc().0)
        .collect();
    assert_eq!(ssrcs.len(), 10);
    // And the shared payload is what they all hear.
    let sp = spec(CodecKind::Pcmu);
    for i in 2..=10 {
        assert_hears("member", &net.heard(leg(i), &sp, 10), 8000, &[700.0], &[]);
    }
    // Opus listeners (stateful) share too once grouped on a silent start.
    let mut net = Net::new(MediaCallConfig::default());
    for i in 0..6u32 {
        let hz = (i == 0).then_some(700.0);
        net.add(leg(i + 1), cfg(CodecKind::Opus), hz);
    }
    let all: Vec<LegId> = (1..=6).map(leg).collect();
    for &id in &all {
        net.call.set_hears(id, &all).unwrap();
    }
    net.run(30);
    assert_eq!(net.call.stats().encodes, 2, "{:?}", net.call.stats());
    let so = spec(CodecKind::Opus);
    for i in 2..=6 {
        assert_hears(
            "opus member",
            &net.heard(leg(i), &so, 10),
            48000,
            &[700.0],
            &[],
        );
    }
}

fn event_packet(seq: u16, ts: u32, ev: TelephoneEvent, marker: bool) -> Vec<u8> {
    let mut buf = vec![0u8; 16];
    RtpHeaderWriter::new(
        PayloadType::new(101).unwrap(),
        seq,
        RtpTimestamp(ts),
        Ssrc(77),
    )
    .marker(marker)
    .write_packet(&ev.to_bytes().unwrap(), &mut buf)
    .unwrap();
    buf
}

/// Digits in RFC 4733 packets a leg received (one per distinct event timestamp with E bit).
fn received_events(r: &Received) -> Vec<char> {
    let mut out = Vec::new();
    let mut last_ts = None;
    for p in &r.packets {
        let pkt = RtpPacket::parse(p).unwrap();
        if pkt.payload_type().get() != 101 {
            continue;
        }
        let ev = TelephoneEvent::parse(pkt.payload()).unwrap();
        if ev.end && last_ts != Some(pkt.timestamp().0) {
            last_ts = Some(pkt.timestamp().0);
            out.push(char_from_event(ev.event).unwrap());
        }
    }
    out
}

fn inband_digits(pcm: &[i16], rate: u32) -> String {
    let mut d = DtmfDetector::new(rate).unwrap();
    let mut s = String::new();
    for chunk in pcm.chunks(160) {
        if let Some(x) = d.process_frame(chunk) {
            s.push(x.digit);
        }
    }
    s
}

#[test]
fn rfc4733_passes_through_and_converts_to_inband() {
    let sp = spec(CodecKind::Pcmu);
    let mut net = Net::new(MediaCallConfig::default());
    // 1: sends events; 2: takes events; 3: no events.
    net.add(leg(1), cfg_events(CodecKind::Pcmu), None);
    net.add(leg(2), cfg_events(CodecKind::Pcmu), None);
    net.add(leg(3), cfg(CodecKind::Pcmu), None);
    let all = [leg(1), leg(2), leg(3)];
    for id in all {
        net.call.set_hears(id, &all).unwrap();
    }
    net.run(5);
    // Leg 1 sends '5' for 160 ms, with three end packets.
    let mut sender = DtmfSender::new(160).unwrap();
    sender.start_digit('5', 1280, 10).unwrap();
    let mut seq = 1;
    let mut frame = 0u32;
    while !sender.is_idle() {
        while let Some(p) = sender.poll_due(frame * 160) {
            let pkt = event_packet(seq, 88_000 + p.timestamp_offset, p.event, p.marker);
            seq += 1;
            net.call.push_rtp(net.now, leg(1), &pkt).unwrap();
        }
        frame += 1;
        net.tick();
    }
    net.run(30);
    let evs = net.events();
    let dtmf: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            MediaEvent::Dtmf {
                leg,
                digit,
                duration_ms,
                source,
            } => Some((*leg, *digit, *duration_ms, *source)),
            _ => None,
        })
        .collect();
    assert_eq!(dtmf, vec![(leg(1), '5', 160, DtmfSource::Rfc4733)]);
    assert_eq!(received_events(&net.received[&leg(2)]), vec!['5']);
    assert_eq!(inband_digits(&net.heard(leg(3), &sp, 0), 8000), "5");
    // The sender does not get its own digit back.
    assert!(received_events(&net.received[&leg(1)]).is_empty());

    // Back: leg 3 plays an in-band '7'; detected → event, and leg 2 gets it as RFC 4733.
    net.clear();
    let mut tone = ToneGenerator::dtmf(8000, '7', Cadence::once(&[(120, 100)]).unwrap()).unwrap();
    let mut s3 = Sender::new(sp, None, 9);
    for _ in 0..40 {
        let mut pcm = vec![0i16; 160];
        tone.fill(&mut pcm);
        let p = s3.packet_from(&pcm);
        net.call.push_rtp(net.now, leg(3), &p).unwrap();
        net.tick();
    }
    let evs = net.events();
    let digits: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            MediaEvent::Dtmf {
                leg, digit, source, ..
            } => Some((*leg, *digit, *source)),
            _ => None,
        })
        .collect();
    assert_eq!(digits, vec![(leg(3), '7', DtmfSource::InBand)]);
    assert_eq!(received_events(&net.received[&leg(2)]), vec!['7']);

    // Blocked: reported but not passed on.
    net.clear();
    net.call.set_dtmf_blocked(leg(1), true).unwrap();
    let ev = TelephoneEvent {
        event: 9,
        end: true,
        volume: 10,
        duration: 800,
    };
    for k in 0..3 {
        assert_eq!(
            net.call
                .push_rtp(net.now, leg(1), &event_packet(100 + k, 200_000, ev, k == 0)),
            Err(DropReason::DtmfBlocked)
        );
    }
    net.run(20);
    let n = net
        .events()
        .iter()
        .filter(|e| matches!(e, MediaEvent::Dtmf { digit: '9', .. }))
        .count();
    assert_eq!(n, 1, "repeated end packets give one digit");
    assert!(received_events(&net.received[&leg(2)]).is_empty());
}

#[test]
fn rfc4733_digit_ends_after_timeout() {
    let mut net = Net::new(MediaCallConfig::default());
    net.add(leg(1), cfg_events(CodecKind::Pcmu), None);
    let ev = TelephoneEvent {
        event: 11,
        end: false,
        volume: 10,
        duration: 400,
    };
    net.call
        .push_rtp(net.now, leg(1), &event_packet(1, 1000, ev, true))
        .unwrap();
    net.run(3);
    assert!(net.events().is_empty());
    net.run(5);
    let evs = net.events();
    assert!(
        evs.iter().any(|e| matches!(
            e,
            MediaEvent::Dtmf {
                digit: '#',
                duration_ms: 50,
                ..
            }
        )),
        "{evs:?}"
    );
}

#[test]
fn send_dtmf_queues_digits() {
    let mut net = Net::new(MediaCallConfig::default());
    net.add(leg(1), cfg_events(CodecKind::Pcmu), None);
    net.add(leg(2), cfg(CodecKind::Pcmu), None);
    for d in ['1', '2', '3'] {
        net.call.send_dtmf(leg(1), d, 100, -10).unwrap();
        net.call.send_dtmf(leg(2), d, 100, -10).unwrap();
    }
    assert!(net.call.send_dtmf(leg(1), 'x', 100, -10).is_err());
    assert!(net.call.send_dtmf(leg(1), '1', 0, -10).is_err());
    assert!(net.call.send_dtmf(leg(1), '1', 100, 5).is_err());
    assert!(net.call.send_dtmf(leg(9), '1', 100, -10).is_err());
    net.run(60);
    assert_eq!(received_events(&net.received[&leg(1)]), vec!['1', '2', '3']);
    // Sequence numbers stay contiguous across audio and events; one stream.
    let seqs: Vec<u16> = net.received[&leg(1)]
        .packets
        .iter()
        .map(|p| RtpPacket::parse(p).unwrap().sequence_number())
        .collect();
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0].wrapping_add(1));
    }
    let sp = spec(CodecKind::Pcmu);
    assert_eq!(inband_digits(&net.heard(leg(2), &sp, 0), 8000), "123");
}

fn done_events(evs: &[MediaEvent]) -> Vec<(PlayId, PlayEnd)> {
    evs.iter()
        .filter_map(|e| match e {
            MediaEvent::PlayDone { id, reason } => Some((*id, *reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn prompts_finish_repeat_stop_and_preempt() {
    let sp = spec(CodecKind::Pcmu);
    let mut net = Net::new(MediaCallConfig::default());
    net.add(leg(1), cfg(CodecKind::Pcmu), None);
    net.add(leg(2), cfg_events(CodecKind::Opus), None);
    // 200 ms at 16 kHz, resampled to the mix rate (16 kHz here) once.
    let mut g = ToneGenerator::sine(16000, 600.0, ToneLevel::Dbm0(-10.0)).unwrap();
    let mut samples = vec![0i16; 3200];
    g.fill(&mut samples);
    let pcm = PlaySource::Pcm {
        samples: Arc::from(samples),
        rate: 16000,
    };
    net.call
        .play_start(PlayId(1), PlayTarget::Leg(leg(1)), pcm.clone(), 2, false)
        .unwrap();
    net.run(19);
    assert!(done_events(&net.events()).is_empty());
    net.run(2);
    assert_eq!(
        done_events(&net.events()),
        vec![(PlayId(1), PlayEnd::Finished)]
    );
    assert_hears(
        "prompt",
        &net.heard(leg(1), &sp, 2)[..2400],
        8000,
        &[600.0],
        &[],
    );
    assert!(!net.call.is_playing(PlayId(1)));

    // Until stopped; a new prompt to the same target pre-empts it.
    net.call
        .play_start(PlayId(2), PlayTarget::Call, pcm.clone(), 0, false)
        .unwrap();
    net.run(50);
    assert!(done_events(&net.events()).is_empty());
    net.call
        .play_start(
            PlayId(3),
            PlayTarget::Call,
            PlaySource::Tone(ToneSpec::Busy),
            0,
            true,
        )
        .unwrap();
    assert_eq!(
        done_events(&net.events()),
        vec![(PlayId(2), PlayEnd::Stopped)]
    );
    // A digit stops a stop-on-DTMF prompt.
    let ev = TelephoneEvent {
        event: 1,
        end: true,
        volume: 10,
        duration: 800,
    };
    net.call
        .push_rtp(net.now, leg(2), &event_packet(1, 5000, ev, true))
        .unwrap();
    net.run(1);
    assert_eq!(done_events(&net.events()), vec![(PlayId(3), PlayEnd::Dtmf)]);

    // play_stop, unknown target, removal.
    net.call
        .play_start(PlayId(4), PlayTarget::Leg(leg(2)), pcm.clone(), 0, false)
        .unwrap();
    assert!(
        net.call
            .play_start(PlayId(5), PlayTarget::Leg(leg(9)), pcm.clone(), 0, false)
            .is_err()
    );
    assert_eq!(net.call.play_stop(Some(PlayId(77)), None), 0);
    net.call.remove_leg(leg(2)).unwrap();
    assert_eq!(
        done_events(&net.events()),
        vec![(PlayId(4), PlayEnd::LegGone)]
    );
    net.call
        .play_start(PlayId(6), PlayTarget::Leg(leg(1)), pcm, 0, false)
        .unwrap();
    assert_eq!(net.call.play_stop(None, Some(PlayTarget::Leg(leg(1)))), 1);
    assert_eq!(
        done_events(&net.events()),
        vec![(PlayId(6), PlayEnd::Stopped)]
    );
}

#[test]
fn output_continues_a_seed() {
    let mut call = MediaCall::new(MediaCallConfig::default());
    let seed = OutputSeed {
        ssrc: 0xdead_beef,
        seq: 65535,
        timestamp: 1_000_000,
        clock_rate: 8000,
        at: Micros::from_secs(5),
    };
    let now = Micros(5_100_000);
    call.add_leg(now, leg(1), cfg(CodecKind::Pcmu), Some(seed))
        .unwrap();
    call.add_leg(now, leg(2), cfg(CodecKind::Pcmu), None)
        .unwrap();
    let mut got = Vec::new();
    call.tick(now, &mut |l, b| {
        if l == leg(1) {
            got.push(b.to_vec());
        }
    });
    call.tick(Micros(now.0 + 20_000), &mut |l, b| {
        if l == leg(1) {
            got.push(b.to_vec());
        }
    });
    let p0 = RtpPacket::parse(&got[0]).unwrap();
    let p1 = RtpPacket::parse(&got[1]).unwrap();
    assert_eq!(p0.ssrc().0, 0xdead_beef);
    assert_eq!(p0.sequence_number(), 0);
    assert_eq!(p0.timestamp().0, 1_000_000 + 800);
    assert!(p0.marker());
    assert!(!p1.marker());
    assert_eq!(p1.sequence_number(), 1);
    assert_eq!(p1.timestamp().0, 1_000_000 + 960);
    let out = call.remove_leg(leg(1)).unwrap();
    assert_eq!(out.ssrc, 0xdead_beef);
    assert_eq!(out.seq, 1);
    assert_eq!(out.timestamp, 1_000_960);
    // Fresh streams differ per leg and are deterministic.
    let s2 = call.output_seed(leg(2)).unwrap();
    let mut again = MediaCall::new(MediaCallConfig::default());
    again
        .add_leg(now, leg(2), cfg(CodecKind::Pcmu), None)
        .unwrap();
    assert_eq!(again.output_seed(leg(2)).unwrap().ssrc, s2.ssrc);
    assert_ne!(s2.ssrc, 0xdead_beef);
}

#[test]
fn one_packet_per_ptime() {
    for (kind, ptime) in [
        (CodecKind::Pcmu, 20u32),
        (CodecKind::Pcma, 40),
        (CodecKind::Pcmu, 60),
        (CodecKind::G722, 40),
        (CodecKind::Opus, 60),
    ] {
        let mut net = Net::new(MediaCallConfig::default());
        let mut c = cfg(kind);
        c.ptime_ms = ptime;
        net.add(leg(1), c, None);
        net.add(leg(2), cfg(CodecKind::Pcmu), Some(CUSTOMER_HZ));
        net.call.set_hears(leg(1), &[leg(2)]).unwrap();
        net.run(60);
        let r = &net.received[&leg(1)];
        assert_eq!(r.packets.len() as u32, 60 * 20 / ptime, "{kind:?} {ptime}");
        let sp = spec(kind);
        let ticks = sp.clock_ticks(ptime);
        let pk: Vec<_> = r
            .packets
            .iter()
            .map(|p| RtpPacket::parse(p).unwrap())
            .collect();
        assert!(pk[0].marker());
        for w in pk.windows(2) {
            assert_eq!(
                w[1].sequence_number(),
                w[0].sequence_number().wrapping_add(1)
            );
            assert_eq!(w[1].timestamp().0, w[0].timestamp().0.wrapping_add(ticks));
            assert_eq!(w[1].payload_type().get(), sp.payload_type);
            assert_eq!(w[1].version(), 2);
        }
        assert_hears(
            &format!("{kind:?}/{ptime}"),
            &net.heard(leg(1), &sp, 30),
            sp.audio_rate(),
            &[CUSTOMER_HZ],
            &[],
        );
    }
}

#[test]
fn hostile_input_never_panics() {
    let mut call = MediaCall::new(MediaCallConfig::default());
    let mut c = cfg_events(CodecKind::Pcmu);
    c.recv.push(spec(CodecKind::Opus));
    call.add_leg(Micros::ZERO, leg(1), c, None).unwrap();
    call.add_leg(Micros::ZERO, leg(2), cfg(CodecKind::G722), None)
        .unwrap();
    assert!(
        call.add_leg(Micros::ZERO, leg(1), cfg(CodecKind::Pcmu), None)
            .is_err()
    );
    let mut bad = cfg(CodecKind::Pcmu);
    bad.ptime_ms = 30;
    assert!(
        call.add_leg(Micros::ZERO, leg(3), bad.clone(), None)
            .is_err()
    );
    bad.ptime_ms = 20;
    bad.send = spec(CodecKind::TelephoneEvent);
    assert!(call.add_leg(Micros::ZERO, leg(3), bad, None).is_err());
    assert!(call.push_rtp(Micros::ZERO, leg(9), &[0x80; 20]).is_err());
    assert!(call.push_rtp(Micros::ZERO, leg(1), &[1, 2, 3]).is_err());
    // Unknown payload type.
    let mut buf = vec![0u8; 20];
    RtpHeaderWriter::new(PayloadType::new(33).unwrap(), 1, RtpTimestamp(1), Ssrc(1))
        .write_packet(&[0; 8], &mut buf)
        .unwrap();
    assert!(call.push_rtp(Micros::ZERO, leg(1), &buf).is_err());
    assert!(call.set_hears(leg(9), &[leg(1)]).is_err());
    call.set_hears(leg(1), &[leg(1), leg(2), leg(9), leg(2)])
        .unwrap();
    assert_eq!(call.hears(leg(1)), vec![leg(2)]);
    call.set_hears(leg(2), &[leg(1)]).unwrap();
    assert!(
        call.play_start(
            PlayId(1),
            PlayTarget::Call,
            PlaySource::Pcm {
                samples: Arc::from(vec![1i16; 10]),
                rate: 11025,
            },
            1,
            false,
        )
        .is_err()
    );
    assert!(
        call.play_start(
            PlayId(1),
            PlayTarget::Call,
            PlaySource::Tone(ToneSpec::Sine {
                hz: 90_000.0,
                level_dbm0: 0.0
            }),
            1,
            false,
        )
        .is_err()
    );
    call.play_start(
        PlayId(2),
        PlayTarget::Call,
        PlaySource::Pcm {
            samples: Arc::from(Vec::<i16>::new()),
            rate: 8000,
        },
        1,
        false,
    )
    .unwrap();
    // Random datagrams, mutated valid ones, events with garbage.
    let mut rng = 42u64;
    let mut next = || {
        rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (rng >> 33) as u32
    };
    let mut now = Micros::from_secs(1);
    for i in 0..3000u32 {
        let len = (next() % 300) as usize;
        let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if d.len() >= 12 && i % 2 == 0 {
            d[0] = 0x80;
            d[1] = [0u8, 101, 111, 9, 0x80 | 101][(next() % 5) as usize];
        }
        let target = leg(1 + next() % 3);
        let _ = call.push_rtp(now, target, &d);
        if i % 3 == 0 {
            call.tick(now, &mut |_, b| assert!(b.len() >= 12));
            now = Micros(now.0 + 20_000);
        }
        if i % 500 == 0 {
            let _ = call.update_leg(now, leg(2), cfg(CodecKind::Pcma));
        }
    }
    while call.poll_event().is_some() {}
    assert_eq!(call.len(), 2);
    call.remove_leg(leg(1)).unwrap();
    call.remove_leg(leg(2)).unwrap();
    assert!(call.remove_leg(leg(2)).is_none());
    assert!(call.is_empty());
    call.tick(now, &mut |_, _| panic!("nobody to send to"));
}

#[test]
fn member_limit() {
    let mut call = MediaCall::new(MediaCallConfig {
        max_members: 2,
        ..MediaCallConfig::default()
    });
    call.add_leg(Micros::ZERO, leg(1), cfg(CodecKind::Pcmu), None)
        .unwrap();
    call.add_leg(Micros::ZERO, leg(2), cfg(CodecKind::Pcmu), None)
        .unwrap();
    assert!(
        call.add_leg(Micros::ZERO, leg(3), cfg(CodecKind::Pcmu), None)
            .is_err()
    );
    assert_eq!(call.len(), 2);
}

/// Run with `cargo test --release -p switchboard-proto --test media_mix -- --ignored --nocapture`.
#[test]
#[ignore = "timing, prints a measure"]
#[allow(
    clippy::disallowed_methods,
    reason = "a wall-clock measure, outside the sans-IO code"
)]
fn measure_tick_cost() {
    for (members, talkers, kind) in [
        (3usize, 3usize, CodecKind::Pcmu),
        (3, 3, CodecKind::Opus),
        (50, 3, CodecKind::Pcmu),
        (500, 5, CodecKind::Pcmu),
    ] {
        let mut net = Net::new(MediaCallConfig::default());
        for i in 0..members as u32 {
            let hz = ((i as usize) < talkers).then_some(300.0 + 200.0 * i as f32);
            net.add(leg(i + 1), cfg(kind), hz);
        }
        let all: Vec<LegId> = (1..=members as u32).map(leg).collect();
        for &id in &all {
            net.call.set_hears(id, &all).unwrap();
        }
        net.run(10);
        let frames = 200;
        let t = std::time::Instant::now();
        let mut sent = 0usize;
        for _ in 0..frames {
            let mut ids: Vec<LegId> = net.senders.keys().copied().collect();
            ids.sort();
            for id in ids {
                let s = net.senders.get_mut(&id).unwrap();
                if s.tone.is_some() {
                    let p = s.packet();
                    net.call.push_rtp(net.now, id, &p).unwrap();
                }
            }
            net.call.tick(net.now, &mut |_, b| sent += b.len());
            net.now = Micros(net.now.0 + 20_000);
        }
        let per = t.elapsed() / frames;
        println!(
            "{members} members, {talkers} talkers, {kind:?}: {per:?} per frame ({} encodes, {sent} bytes)",
            net.call.stats().encodes
        );
    }
}

#[test]
fn talking_events_follow_voice_activity() {
    let mut net = Net::new(MediaCallConfig::default());
    net.add(leg(1), cfg(CodecKind::Pcmu), Some(CUSTOMER_HZ));
    net.add(leg(2), cfg(CodecKind::Pcmu), None);
    net.run(20);
    let talking: Vec<_> = net
        .events()
        .into_iter()
        .filter(|e| matches!(e, MediaEvent::Talking { .. }))
        .collect();
    assert_eq!(
        talking,
        vec![MediaEvent::Talking {
            leg: leg(1),
            talking: true
        }]
    );
    assert!(net.call.is_talking(leg(1)));
    // The party stops sending: silence, then the hang-over ends the talk spurt.
    net.senders.get_mut(&leg(1)).unwrap().tone = None;
    net.run(40);
    let talking: Vec<_> = net
        .events()
        .into_iter()
        .filter(|e| matches!(e, MediaEvent::Talking { .. }))
        .collect();
    assert_eq!(
        talking,
        vec![MediaEvent::Talking {
            leg: leg(1),
            talking: false
        }]
    );
}

#[test]
fn mix_rate_follows_the_members_mid_call() {
    let mut net = Net::new(MediaCallConfig::default());
    net.add(leg(C), cfg(CodecKind::Pcmu), Some(CUSTOMER_HZ));
    net.add(leg(A), cfg(CodecKind::Pcma), Some(AGENT_HZ));
    net.call.set_hears(leg(C), &[leg(A)]).unwrap();
    net.call.set_hears(leg(A), &[leg(C)]).unwrap();
    net.run(20);
    assert_eq!(net.call.mix_rate(), 8000);
    // A wideband supervisor joins in whisper mode: the call goes to 16 kHz.
    net.add(leg(S), cfg(CodecKind::G722), Some(SUPERVISOR_HZ));
    apply_mode(&mut net.call, Mode::Whisper);
    assert_eq!(net.call.mix_rate(), 16000);
    net.clear();
    net.run(40);
    let (sc, sa, ss) = (
        spec(CodecKind::Pcmu),
        spec(CodecKind::Pcma),
        spec(CodecKind::G722),
    );
    assert_hears(
        "customer",
        &net.heard(leg(C), &sc, 15),
        8000,
        &[AGENT_HZ],
        &[SUPERVISOR_HZ],
    );
    assert_hears(
        "agent",
        &net.heard(leg(A), &sa, 15),
        8000,
        &[CUSTOMER_HZ, SUPERVISOR_HZ],
        &[],
    );
    assert_hears(
        "supervisor",
        &net.heard(leg(S), &ss, 15),
        16000,
        &[CUSTOMER_HZ, AGENT_HZ],
        &[],
    );
    // Streams went on without a break in sequence numbers.
    for l in [leg(C), leg(A)] {
        let seqs: Vec<u16> = net.received[&l]
            .packets
            .iter()
            .map(|p| RtpPacket::parse(p).unwrap().sequence_number())
            .collect();
        for w in seqs.windows(2) {
            assert_eq!(w[1], w[0].wrapping_add(1));
        }
    }
    // The supervisor leaves: back to 8 kHz, still mixing.
    net.call.remove_leg(leg(S)).unwrap();
    net.senders.remove(&leg(S));
    assert_eq!(net.call.mix_rate(), 8000);
    assert_eq!(net.call.hears(leg(A)), vec![leg(C)]);
    net.clear();
    net.run(30);
    assert_hears(
        "agent after",
        &net.heard(leg(A), &sa, 10),
        8000,
        &[CUSTOMER_HZ],
        &[SUPERVISOR_HZ],
    );
    // A leg changes codec: the stream keeps its SSRC.
    let ssrc = net.call.output_seed(leg(A)).unwrap().ssrc;
    net.call
        .update_leg(net.now, leg(A), cfg(CodecKind::Opus))
        .unwrap();
    assert_eq!(net.call.mix_rate(), 16000);
    net.senders.insert(
        leg(A),
        Sender::new(spec(CodecKind::Opus), Some(AGENT_HZ), 0x55),
    );
    net.clear();
    net.run(30);
    let r = &net.received[&leg(A)];
    assert_eq!(RtpPacket::parse(&r.packets[0]).unwrap().ssrc().0, ssrc);
    assert_hears(
        "agent on opus",
        &net.heard(leg(A), &spec(CodecKind::Opus), 10),
        48000,
        &[CUSTOMER_HZ],
        &[],
    );
    assert_hears(
        "customer",
        &net.heard(leg(C), &sc, 15),
        8000,
        &[AGENT_HZ],
        &[],
    );
}

#[test]
fn rfc4733_late_and_restarted_streams() {
    let mut net = Net::new(MediaCallConfig::default());
    net.add(leg(1), cfg_events(CodecKind::Pcmu), None);
    let ev = |event: u8, end: bool, duration: u16| TelephoneEvent {
        event,
        end,
        volume: 10,
        duration,
    };
    let mut seq = 0u16;
    let mut push = |net: &mut Net, ts: u32, e: TelephoneEvent| {
        seq += 1;
        net.call
            .push_rtp(net.now, leg(1), &event_packet(seq, ts, e, false))
            .unwrap();
    };
    push(&mut net, 10_000, ev(1, false, 160));
    net.run(1);
    push(&mut net, 10_000, ev(1, true, 640));
    push(&mut net, 10_000, ev(1, true, 640));
    net.run(1);
    push(&mut net, 12_000, ev(2, false, 160));
    // A late update of the first digit while the second is active.
    push(&mut net, 10_000, ev(1, false, 320));
    net.run(1);
    push(&mut net, 12_000, ev(2, true, 800));
    // A late end of the first digit after the second ended.
    push(&mut net, 10_000, ev(1, true, 640));
    net.run(10);
    // A new stream whose timestamps start lower, a while later.
    net.run(150);
    push(&mut net, 500, ev(3, true, 400));
    net.run(1);
    let digits: Vec<(char, u32)> = net
        .events()
        .iter()
        .filter_map(|e| match e {
            MediaEvent::Dtmf {
                digit, duration_ms, ..
            } => Some((*digit, *duration_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(digits, vec![('1', 80), ('2', 100), ('3', 50)]);
}
