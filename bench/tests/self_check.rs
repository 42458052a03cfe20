//! The harness checks its own measurement: against loopback fakes that add a known delay
//! (5 ms) and drop a known pattern (every 10th packet), it must report that delay and that
//! loss — for relayed packets (probe in the payload), for transcoded ones (matched by content
//! between G.711 codecs, by sequence number with Opus), for a mixer's output (gaps in its sequence numbers), through `--ramp`, and a
//! native scenario against an engine that lacks an operation must fail at once and clearly.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_bench::cli::{Progress, TargetArgs};
use switchboard_bench::media::Codec;
use switchboard_bench::mix::{self, BargeArgs, ConferenceArgs, MixArgs, TranscodeArgs};
use switchboard_bench::ramp::RampArgs;
use switchboard_bench::relay::{self, RelayArgs, SocketMode};
use switchboard_bench::sdp;
use switchboard_codecs::g711;

const DELAY: Duration = Duration::from_millis(5);

fn quiet() -> Progress {
    Progress {
        enabled: false,
        every: Duration::from_secs(5),
    }
}

fn target(ng: SocketAddr, control: Option<SocketAddr>) -> TargetArgs {
    TargetArgs {
        ng,
        pid: Some(std::process::id()),
        control,
        compare: false,
        ng_b: None,
        control_b: None,
        pid_b: None,
        rounds: 1,
        local_ip: "127.0.0.1".parse().unwrap(),
        name: None,
        name_b: None,
        // The built-in signal keeps the test independent of espeak-ng.
        media: Some(speech_file()),
    }
}

/// A one-second 8 kHz speech-like WAV file, written once per test process.
fn speech_file() -> std::path::PathBuf {
    static FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(write_speech_file).clone()
}

fn write_speech_file() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("sbl-self-check-{}.wav", std::process::id()));
    // Syllables of a gliding tone over low noise: no two frames alike, as in speech.
    let mut noise = 12_345u32;
    let pcm: Vec<i16> = (0..8_000)
        .map(|n| {
            let t = n as f64 / 8_000.0;
            let env = (std::f64::consts::TAU * 4.0 * t).sin().max(0.0);
            let pitch = 150.0 + 40.0 * t;
            noise = noise.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let hiss = f64::from((noise >> 16) % 600) - 300.0;
            (8_000.0 * env * (std::f64::consts::TAU * pitch * t).sin() + hiss) as i16
        })
        .collect();
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + 16_000u32).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16u32.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes());
    bytes.extend_from_slice(&8_000u32.to_le_bytes());
    bytes.extend_from_slice(&16_000u32.to_le_bytes());
    bytes.extend_from_slice(&2u16.to_le_bytes());
    bytes.extend_from_slice(&16u16.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&16_000u32.to_le_bytes());
    for s in pcm {
        bytes.extend_from_slice(&s.to_le_bytes());
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

fn split(datagram: &[u8]) -> (String, Value) {
    let text = std::str::from_utf8(datagram).unwrap();
    let (cookie, body) = text.split_once(' ').unwrap();
    (cookie.to_string(), serde_json::from_str(body).unwrap())
}

fn reply(socket: &UdpSocket, to: SocketAddr, cookie: &str, body: Value) {
    socket
        .send_to(format!("{cookie} {body}").as_bytes(), to)
        .unwrap();
}

/// One direction of a fake call: where packets come in, where they go, how they are changed.
struct Direction {
    from: usize,
    to: usize,
    dest: SocketAddr,
    count: u64,
    /// With transcoding: the payload type written, the output's sequence offset and timestamp.
    out_pt: Option<u8>,
    out_seq: u16,
    out_ts: u32,
}

/// A fake NG relay on loopback that delays every packet by [`DELAY`] and drops every 10th
/// packet of each direction. With `transcode`, it offers that codec to the callee and rewrites
/// the packets as a transcoder would: new payload type and SSRC, the payload converted (G.711
/// exactly; "Opus" as opaque bytes), sequence numbers of its own that keep the input's gaps,
/// timestamps restamped from its own count.
fn fake_relay(
    stop: Arc<AtomicBool>,
    transcode: Option<Codec>,
) -> (SocketAddr, thread::JoinHandle<u64>) {
    let ng = UdpSocket::bind("127.0.0.1:0").unwrap();
    ng.set_nonblocking(true).unwrap();
    let addr = ng.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let mut sockets: Vec<UdpSocket> = Vec::new();
        let mut calls: HashMap<String, (usize, usize, SocketAddr)> = HashMap::new();
        let mut directions: Vec<Direction> = Vec::new();
        let mut queue: VecDeque<(Instant, usize, SocketAddr, Vec<u8>)> = VecDeque::new();
        let mut deleted = 0;
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::Relaxed) {
            while let Ok((len, from)) = ng.recv_from(&mut buf) {
                let (cookie, req) = split(&buf[..len]);
                let call_id = req["call-id"].as_str().unwrap_or_default().to_string();
                match req["command"].as_str().unwrap() {
                    "offer" => {
                        let a = sdp::audio_endpoint(req["sdp"].as_str().unwrap()).unwrap();
                        for _ in 0..2 {
                            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                            s.set_nonblocking(true).unwrap();
                            sockets.push(s);
                        }
                        let (to_a, to_b) = (sockets.len() - 2, sockets.len() - 1);
                        calls.insert(call_id, (to_a, to_b, a));
                        let port = sockets[to_b].local_addr().unwrap().port();
                        let ip = "127.0.0.1".parse().unwrap();
                        let sdp = match transcode {
                            Some(to) => {
                                assert_eq!(req["codec"]["transcode"][0], to.ng_name());
                                sdp::codec_sdp(ip, port, 1, 20, to.payload_type(), to.rtpmap())
                            }
                            None => sdp::audio_sdp(ip, port, 1, 20),
                        };
                        reply(&ng, from, &cookie, json!({"result": "ok", "sdp": sdp}));
                    }
                    "answer" => {
                        let (to_a, to_b, a) = calls[&call_id];
                        let b = sdp::audio_endpoint(req["sdp"].as_str().unwrap()).unwrap();
                        let (pt_ab, pt_ba) = match transcode {
                            Some(to) => (Some(to.payload_type()), Some(0)),
                            None => (None, None),
                        };
                        directions.push(Direction {
                            from: to_a,
                            to: to_b,
                            dest: b,
                            count: 0,
                            out_pt: pt_ab,
                            out_seq: 1_000,
                            out_ts: 77,
                        });
                        directions.push(Direction {
                            from: to_b,
                            to: to_a,
                            dest: a,
                            count: 0,
                            out_pt: pt_ba,
                            out_seq: 60_000,
                            out_ts: 99_999,
                        });
                        let port = sockets[to_a].local_addr().unwrap().port();
                        let sdp = sdp::audio_sdp("127.0.0.1".parse().unwrap(), port, 1, 20);
                        reply(&ng, from, &cookie, json!({"result": "ok", "sdp": sdp}));
                    }
                    "delete" => {
                        deleted += u64::from(calls.remove(&call_id).is_some());
                        reply(&ng, from, &cookie, json!({"result": "ok"}));
                    }
                    _ => reply(&ng, from, &cookie, json!({"result": "error"})),
                }
            }
            for d in &mut directions {
                while let Ok(len) = sockets[d.from].recv(&mut buf) {
                    d.count += 1;
                    if d.count % 10 == 0 {
                        continue;
                    }
                    let mut packet = buf[..len].to_vec();
                    if let Some(pt) = d.out_pt {
                        packet[1] = pt;
                        let seq = u16::from_be_bytes([packet[2], packet[3]]);
                        packet[2..4].copy_from_slice(&seq.wrapping_add(d.out_seq).to_be_bytes());
                        packet[4..8].copy_from_slice(&d.out_ts.to_be_bytes());
                        packet[8..12].copy_from_slice(&0xfeed_beefu32.to_be_bytes());
                        // The payload is re-encoded: the probe is gone.
                        let input = packet[12..].to_vec();
                        let mut pcm = vec![0i16; input.len()];
                        let out = &mut packet[12..];
                        match (pt, transcode) {
                            (8, _) => {
                                g711::ulaw_decode_slice(&input, &mut pcm);
                                g711::alaw_encode_slice(&pcm, out);
                            }
                            (0, Some(Codec::Pcma)) => {
                                g711::alaw_decode_slice(&input, &mut pcm);
                                g711::ulaw_encode_slice(&pcm, out);
                            }
                            _ => out.fill(0xd5),
                        }
                        d.out_ts = d.out_ts.wrapping_add(160);
                    }
                    queue.push_back((Instant::now() + DELAY, d.to, d.dest, packet));
                }
            }
            let now = Instant::now();
            while queue.front().is_some_and(|(due, ..)| *due <= now) {
                let (_, s, dest, packet) = queue.pop_front().unwrap();
                sockets[s].send_to(&packet, dest).unwrap();
            }
            thread::sleep(Duration::from_micros(100));
        }
        deleted
    });
    (addr, handle)
}

fn relay_args(ng: SocketAddr) -> RelayArgs {
    RelayArgs {
        target: target(ng, None),
        calls: 4,
        duration: 1.5,
        rate: 50,
        payload_size: 160,
        ramp_up: 0.2,
        threads: 1,
        sockets: SocketMode::PerCall,
        tick_us: 200,
        ramp: RampArgs::default(),
    }
}

/// Asserts that `latency` (µs percentiles) shows the fake's delay: the fake polls every
/// 100 µs and the machine is shared, so a couple of milliseconds of slack above.
fn assert_delay(p50: u64, p90: u64) {
    assert!((5_000..=7_500).contains(&p50), "p50 {p50} µs");
    assert!((5_000..=9_000).contains(&p90), "p90 {p90} µs");
}

#[test]
fn relay_reports_the_added_delay_and_the_loss() {
    let stop = Arc::new(AtomicBool::new(false));
    let (ng, fake) = fake_relay(stop.clone(), None);
    let report = relay::run(&relay_args(ng), quiet()).unwrap();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(fake.join().unwrap(), 4);
    let f = &report.targets[0].figures;
    assert!(
        (0.095..=0.105).contains(&f.loss_ratio),
        "loss {}",
        f.loss_ratio
    );
    assert_eq!(f.packets.duplicates, 0);
    assert_delay(f.latency_us.p50, f.latency_us.p90);
    // Constant delay: little jitter.
    assert!(f.jitter_us.unwrap() < 2_000.0, "{:?}", f.jitter_us);
    assert!(!report.targets[0].latency_distribution.is_empty());
    let text = report.to_text();
    assert!(text.contains("jitter (µs)"), "{text}");
}

#[test]
fn transcode_reports_the_added_delay_and_the_loss() {
    for to in [Codec::Pcma, Codec::Opus] {
        transcode_check(to);
    }
}

fn transcode_check(to: Codec) {
    let stop = Arc::new(AtomicBool::new(false));
    let (ng, fake) = fake_relay(stop.clone(), Some(to));
    let args = TranscodeArgs {
        common: MixArgs {
            target: target(ng, None),
            calls: 3,
            duration: 1.5,
            ramp_up: 0.2,
            threads: 1,
            tick_us: 200,
            ramp: RampArgs::default(),
        },
        from: Codec::Pcmu,
        to,
    };
    let report = mix::run_transcode(&args, quiet()).unwrap();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(fake.join().unwrap(), 3);
    let f = &report.targets[0].figures;
    assert!(
        (0.09..=0.11).contains(&f.loss_ratio),
        "loss {} {:?}",
        f.loss_ratio,
        f.packets
    );
    assert_eq!(f.packets.invalid, 0);
    assert!(f.latency_us.count > 100, "{to:?}: {:?}", f.latency_us);
    assert_delay(f.latency_us.p50, f.latency_us.p90);
}

#[test]
fn ramp_finds_the_capacity_within_the_thresholds() {
    let stop = Arc::new(AtomicBool::new(false));
    let (ng, fake) = fake_relay(stop.clone(), None);
    let mut args = relay_args(ng);
    args.duration = 0.5;
    args.ramp = RampArgs {
        ramp: true,
        ramp_start: 1,
        ramp_step: 2,
        ramp_max: 3,
        // The fake loses 10 %: within 15 %, so every step passes; p99 5 ms within 50 ms.
        max_loss: 0.15,
        max_p99_ms: 50.0,
    };
    let report = relay::run(&args, quiet()).unwrap();
    assert_eq!(report.ramp.len(), 2);
    assert_eq!(report.capacity[0].calls, Some(3));
    // A p99 threshold under the fake's delay stops the ramp at its first step.
    args.ramp.max_p99_ms = 2.0;
    let report = relay::run(&args, quiet()).unwrap();
    stop.store(true, Ordering::Relaxed);
    fake.join().unwrap();
    assert_eq!(report.capacity[0].calls, None);
    assert!(report.capacity[0].stopped.contains("p99"), "{report:?}");
    assert!(report.to_text().contains("capacity A: none"));
}

/// A fake native engine: `call.create` and `leg.create` allocate sockets; a mixer thread
/// sends every leg 50 frames/s, skipping every 10th sequence number (a known 10 % loss).
/// Operations in `unknown` answer `unknown_op`.
fn fake_engine(
    stop: Arc<AtomicBool>,
    unknown: &'static [&'static str],
) -> (SocketAddr, thread::JoinHandle<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let mut writer = conn.try_clone().unwrap();
        let mut reader = BufReader::new(conn);
        // (socket, remote, next sequence, frames made)
        let mut legs: Vec<(UdpSocket, SocketAddr, u16, u64)> = Vec::new();
        let mut deleted = 0;
        let mut line = String::new();
        let start = Instant::now();
        let mut frames_due = 0u64;
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            match reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) if line.ends_with('\n') => {
                    let req: Value = serde_json::from_str(&line).unwrap();
                    line.clear();
                    let id = req["id"].clone();
                    let op = req["op"].as_str().unwrap();
                    let out = if unknown.contains(&op) {
                        json!({"id": id, "ok": false, "error": {"code": "unknown_op", "message": "no such operation"}})
                    } else {
                        match op {
                            "call.create" => json!({"id": id, "ok": true, "call": req["call"]}),
                            "leg.create" => {
                                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                                s.set_nonblocking(true).unwrap();
                                let local = s.local_addr().unwrap();
                                let remote = req["remote"].as_str().unwrap().parse().unwrap();
                                legs.push((s, remote, 0, 0));
                                json!({"id": id, "ok": true, "leg": format!("leg{}", legs.len()), "local": local.to_string(), "sdp": ""})
                            }
                            "call.delete" => {
                                deleted += 1;
                                json!({"id": id, "ok": true, "call": req["call"]})
                            }
                            _ => json!({"id": id, "ok": true}),
                        }
                    };
                    // An event line first: the client must skip it.
                    writeln!(writer, "{}", json!({"event": "call.created", "call": "x"})).unwrap();
                    writeln!(writer, "{out}").unwrap();
                }
                _ => {}
            }
            // Drain what the parties send; mix nothing, just count time.
            for (s, ..) in &legs {
                while s.recv(&mut buf).is_ok() {}
            }
            let due = start.elapsed().as_millis() as u64 / 20;
            while frames_due < due {
                frames_due += 1;
                for (s, remote, seq, made) in &mut legs {
                    *made += 1;
                    let this = *seq;
                    *seq = seq.wrapping_add(1);
                    if *made % 10 == 0 {
                        continue;
                    }
                    let mut packet = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
                    packet[2..4].copy_from_slice(&this.to_be_bytes());
                    packet[4..8].copy_from_slice(&((*made as u32) * 160).to_be_bytes());
                    packet.extend_from_slice(&[0xff; 160]);
                    let _ = s.send_to(&packet, *remote);
                }
            }
        }
        deleted
    });
    (addr, handle)
}

fn mix_args(control: SocketAddr) -> MixArgs {
    MixArgs {
        target: target("127.0.0.1:9".parse().unwrap(), Some(control)),
        calls: 2,
        duration: 1.0,
        ramp_up: 0.1,
        threads: 1,
        tick_us: 500,
        ramp: RampArgs::default(),
    }
}

#[test]
fn conference_reports_the_mixers_loss_and_cpu_per_mixed_frame() {
    let stop = Arc::new(AtomicBool::new(false));
    let (control, fake) = fake_engine(stop.clone(), &[]);
    let args = ConferenceArgs {
        common: mix_args(control),
        members: 3,
        speakers: 1,
    };
    let report = mix::run_conference(&args, quiet()).unwrap();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(fake.join().unwrap(), 2, "both conferences deleted");
    let f = &report.targets[0].figures;
    assert_eq!(f.mix_members, 6);
    assert!(
        (0.08..=0.12).contains(&f.loss_ratio),
        "loss {} {:?}",
        f.loss_ratio,
        f.packets
    );
    assert!(f.target_cpu_us_per_mixed_frame.is_some());
    assert!(report.to_text().contains("µs/mixed frame"));
}

#[test]
fn barge_against_an_engine_without_monitor_fails_clearly() {
    let stop = Arc::new(AtomicBool::new(false));
    let (control, fake) = fake_engine(stop.clone(), &["monitor.start"]);
    let started = Instant::now();
    let err = mix::run_barge(
        &BargeArgs {
            common: mix_args(control),
        },
        quiet(),
    )
    .unwrap_err();
    stop.store(true, Ordering::Relaxed);
    let text = format!("{err:#}");
    assert!(text.contains("does not support `monitor.start`"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The call created before the failure was deleted.
    assert_eq!(fake.join().unwrap(), 1);
}

#[test]
fn mixing_scenarios_need_a_control_address() {
    let mut common = mix_args("127.0.0.1:9".parse().unwrap());
    common.target.control = None;
    let err = mix::run_conference(
        &ConferenceArgs {
            common,
            members: 3,
            speakers: 1,
        },
        quiet(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--control"), "{err}");
}
