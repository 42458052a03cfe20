//! Parties for media tests: each one sends its own tone as real RTP every 20 ms from a
//! loopback socket, receives and decodes whatever the engine sends it, and measures the
//! tones in what it heard with a Goertzel filter.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use switchboard_codecs::codec::{CodecKind, CodecSpec, Decoder, Encoder};

/// Everything one party received, decoded.
#[derive(Debug, Default)]
pub struct Heard {
    /// Decoded samples at `rate`, with the arrival time of the packet they came in.
    pub audio: Vec<(Instant, Vec<i16>)>,
    /// RTP headers received: (ssrc, seq, timestamp, payload type).
    pub headers: Vec<(u32, u16, u32, u8)>,
    /// RFC 4733 event payloads received (payload type, payload).
    pub events: Vec<(u8, Vec<u8>)>,
    /// Packets that could not be decoded.
    pub undecodable: u64,
}

/// One party of a call.
pub struct Party {
    pub name: &'static str,
    pub socket: UdpSocket,
    pub spec: CodecSpec,
    pub tone_hz: f32,
    pub heard: Arc<Mutex<Heard>>,
    /// Where it sends (the engine's port for it); set before `start`.
    pub target: Arc<Mutex<Option<SocketAddr>>>,
    /// Sending on/off.
    pub talking: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The decoder's output rate.
    pub rate: u32,
}

/// The `codecs` entry naming a spec in native requests.
pub fn codec_name(spec: &CodecSpec) -> String {
    match spec.kind {
        CodecKind::Opus => "opus".into(),
        CodecKind::G722 => "G722".into(),
        CodecKind::Pcma => "PCMA".into(),
        _ => "PCMU".into(),
    }
}

impl Party {
    /// A party speaking `codec` (PCMU, PCMA, G722, opus) with a tone at `tone_hz`.
    pub fn new(name: &'static str, codec: &str, tone_hz: f32) -> Party {
        let kind = CodecKind::from_encoding_name(codec).expect("codec");
        let spec = CodecSpec::new(kind);
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rate = Decoder::new(&spec).unwrap().audio_rate();
        Party {
            name,
            socket,
            spec,
            tone_hz,
            heard: Arc::default(),
            target: Arc::default(),
            talking: Arc::new(AtomicBool::new(true)),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
            rate,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    pub fn set_target(&self, to: SocketAddr) {
        *self.target.lock().unwrap() = Some(to);
    }

    /// Starts sending (when a target is set and `talking`) and receiving.
    pub fn start(&mut self) {
        let socket = self.socket.try_clone().unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(2)))
            .unwrap();
        let spec = self.spec;
        let tone = self.tone_hz;
        let heard = self.heard.clone();
        let target = self.target.clone();
        let talking = self.talking.clone();
        let stop = self.stop.clone();
        let ssrc = 0x1000_0000 ^ ((tone as u32) * 7919);
        self.thread = Some(std::thread::spawn(move || {
            let mut enc = Encoder::new(&spec, 20).unwrap();
            let mut dec = Decoder::new(&spec).unwrap();
            let n = enc.frame().samples;
            let rate = enc.audio_rate() as f32;
            let rtp_step = spec.clock_rate * 20 / 1000;
            let mut phase = 0f32;
            let mut seq: u16 = 1000;
            let mut ts: u32 = 5000;
            let mut pcm = vec![0i16; n];
            let mut payload = vec![0u8; 4000];
            let mut out = vec![0i16; 5760];
            let mut buf = [0u8; 2048];
            let start = Instant::now();
            let mut frame = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let due = start + Duration::from_millis(20 * frame);
                if Instant::now() >= due {
                    frame += 1;
                    let to = *target.lock().unwrap();
                    if let (Some(to), true) = (to, talking.load(Ordering::Relaxed)) {
                        for s in pcm.iter_mut() {
                            *s = (6000.0 * phase.sin()) as i16;
                            phase += std::f32::consts::TAU * tone / rate;
                            if phase > std::f32::consts::TAU {
                                phase -= std::f32::consts::TAU;
                            }
                        }
                        let len = enc.encode(&pcm, &mut payload).unwrap();
                        let mut pkt = Vec::with_capacity(12 + len);
                        pkt.extend_from_slice(&[0x80, spec.payload_type & 0x7f]);
                        pkt.extend_from_slice(&seq.to_be_bytes());
                        pkt.extend_from_slice(&ts.to_be_bytes());
                        pkt.extend_from_slice(&ssrc.to_be_bytes());
                        pkt.extend_from_slice(&payload[..len]);
                        let _ = socket.send_to(&pkt, to);
                    }
                    seq = seq.wrapping_add(1);
                    ts = ts.wrapping_add(rtp_step);
                }
                while let Ok((len, _)) = socket.recv_from(&mut buf) {
                    let p = &buf[..len];
                    if len < 12 || p[0] >> 6 != 2 {
                        continue;
                    }
                    let pt = p[1] & 0x7f;
                    if (72..=79).contains(&pt) {
                        continue; // RTCP
                    }
                    let cc = usize::from(p[0] & 0x0f);
                    let hl = 12 + 4 * cc;
                    if len < hl {
                        continue;
                    }
                    let ssrc = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
                    let seq = u16::from_be_bytes([p[2], p[3]]);
                    let ts = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
                    let mut h = heard.lock().unwrap();
                    h.headers.push((ssrc, seq, ts, pt));
                    if pt != spec.payload_type {
                        h.events.push((pt, p[hl..].to_vec()));
                        continue;
                    }
                    match dec.decode(&p[hl..], &mut out) {
                        Ok(k) => h.audio.push((Instant::now(), out[..k].to_vec())),
                        Err(_) => h.undecodable += 1,
                    }
                }
            }
        }));
    }

    /// Forgets everything received so far.
    pub fn clear(&self) {
        let mut h = self.heard.lock().unwrap();
        h.audio.clear();
        h.headers.clear();
        h.events.clear();
    }

    /// The audio received within the last `window`, concatenated.
    pub fn recent_audio(&self, window: Duration) -> Vec<i16> {
        let h = self.heard.lock().unwrap();
        let since = Instant::now() - window;
        h.audio
            .iter()
            .filter(|(t, _)| *t >= since)
            .flat_map(|(_, s)| s.iter().copied())
            .collect()
    }

    /// Power (dB relative to a full-scale sine) of each frequency in what the party heard
    /// during the last `window`.
    pub fn levels(&self, window: Duration, freqs: &[f32]) -> Vec<f64> {
        let audio = self.recent_audio(window);
        freqs
            .iter()
            .map(|&f| tone_level_db(&audio, self.rate, f))
            .collect()
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Party {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Level of `freq` in `pcm` in dB relative to a full-scale sine (−∞ → −200), by Goertzel.
pub fn tone_level_db(pcm: &[i16], rate: u32, freq: f32) -> f64 {
    if pcm.is_empty() {
        return -200.0;
    }
    let w = 2.0 * std::f64::consts::PI * f64::from(freq) / f64::from(rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in pcm {
        let s0 = f64::from(x) / 32768.0 + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let n = pcm.len() as f64;
    let amp = 2.0 * power.max(0.0).sqrt() / n;
    if amp <= 0.0 {
        -200.0
    } else {
        20.0 * amp.log10()
    }
}

/// Asserts that `party` heard, within the last `window`, every tone of `allowed` clearly and
/// every tone of `forbidden` at least 20 dB below the weakest allowed one (and below −40 dB
/// absolute when nothing is allowed).
pub fn assert_hears(
    party: &Party,
    window: Duration,
    allowed: &[(&str, f32)],
    forbidden: &[(&str, f32)],
    context: &str,
) {
    let all: Vec<f32> = allowed.iter().chain(forbidden).map(|(_, f)| *f).collect();
    let levels = party.levels(window, &all);
    let (a, f) = levels.split_at(allowed.len());
    let report = || {
        let names: Vec<String> = allowed
            .iter()
            .chain(forbidden)
            .zip(&levels)
            .map(|((n, hz), l)| format!("{n} {hz} Hz: {l:.1} dB"))
            .collect();
        format!("{context}: {} heard [{}]", party.name, names.join(", "))
    };
    let weakest = a.iter().copied().fold(f64::INFINITY, f64::min);
    for l in a {
        assert!(*l > -40.0, "{} — an allowed tone is missing", report());
    }
    let ceiling = if allowed.is_empty() {
        -40.0
    } else {
        weakest - 20.0
    };
    for l in f {
        assert!(*l < ceiling, "{} — a forbidden tone is audible", report());
    }
}
