//! Behaviour of the libopus wrapper: tone round trips at every rate, DTX, concealment,
//! in-band FEC recovery, malformed packets and invalid settings.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use switchboard_codecs::opus::{
    MAX_PACKET_BYTES, OpusConfig, OpusDecoder, OpusEncoder, OpusError, packet_samples,
};

const RATES: [u32; 5] = [8000, 12000, 16000, 24000, 48000];

fn config(rate: u32) -> OpusConfig {
    OpusConfig {
        sample_rate: rate,
        ..OpusConfig::default()
    }
}

fn tone(freq: f64, amp: f64, rate: u32, n: usize, start: usize) -> Vec<i16> {
    (start..start + n)
        .map(|i| {
            (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin()) as i16
        })
        .collect()
}

/// Goertzel power of `x` at `freq`, normalized so a full-length sine of amplitude A gives
/// about A²/2 (the sine's mean power).
fn goertzel(x: &[i16], freq: f64, rate: u32) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / f64::from(rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s0 = f64::from(v) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    2.0 * power / (x.len() as f64 * x.len() as f64)
}

fn mean_power(x: &[i16]) -> f64 {
    x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64
}

/// Encodes `frames` 20 ms frames of `signal(frame_index, samples)` and returns the packets.
fn encode_frames(
    enc: &mut OpusEncoder,
    frames: usize,
    mut signal: impl FnMut(usize, usize) -> Vec<i16>,
) -> Vec<Vec<u8>> {
    let n = enc.sample_rate() as usize / 50;
    (0..frames)
        .map(|f| {
            let pcm = signal(f, n);
            let mut out = [0u8; MAX_PACKET_BYTES];
            let len = enc.encode(&pcm, &mut out).unwrap();
            out[..len].to_vec()
        })
        .collect()
}

#[test]
fn opus_tone_round_trip_keeps_its_frequency_at_every_rate() {
    for rate in RATES {
        let mut enc = OpusEncoder::new(&config(rate)).unwrap();
        let mut dec = OpusDecoder::new(rate).unwrap();
        let n = rate as usize / 50;
        let packets = encode_frames(&mut enc, 25, |f, n| tone(1000.0, 8000.0, rate, n, f * n));
        let mut decoded = Vec::new();
        let mut frame = vec![0i16; n];
        for p in &packets {
            assert_eq!(packet_samples(p, rate).unwrap(), n);
            assert_eq!(dec.decode(p, &mut frame).unwrap(), n);
            decoded.extend_from_slice(&frame);
        }
        // Skip the codec delay and start-up; analyse 200 ms (a whole number of 1 kHz
        // periods, so 1000 Hz sits on a DFT bin).
        let tail = &decoded[decoded.len() - 10 * n..];
        let total = mean_power(tail);
        let at_tone = goertzel(tail, 1000.0, rate);
        let off_tone = [500.0, 700.0, 1500.0, 2000.0, 3000.0]
            .iter()
            .map(|&f| goertzel(tail, f, rate))
            .fold(0.0, f64::max);
        eprintln!(
            "{rate} Hz: tone holds {:.1}% of the power, {:.1} dB above the strongest other bin",
            100.0 * at_tone / total,
            10.0 * (at_tone / off_tone).log10()
        );
        assert!(
            at_tone > 0.8 * total,
            "{rate} Hz: tone is {at_tone:.0} of {total:.0}"
        );
        assert!(
            at_tone > 1000.0 * off_tone,
            "{rate} Hz: tone does not dominate"
        );
        // The level survives too (within 3 dB of 8000²/2).
        let expected = 8000.0f64 * 8000.0 / 2.0;
        assert!(
            (at_tone / expected).log10().abs() < 0.3,
            "{rate} Hz: level {at_tone:.0} vs {expected:.0}"
        );
    }
}

#[test]
fn opus_dtx_makes_tiny_packets_in_silence() {
    let mut enc = OpusEncoder::new(&OpusConfig {
        sample_rate: 16000,
        dtx: true,
        ..OpusConfig::default()
    })
    .unwrap();
    // Speech-level tone, then 2 s of near silence (a little noise, as from a real line).
    let mut state = 1u32;
    let packets = encode_frames(&mut enc, 110, |f, n| {
        if f < 10 {
            tone(300.0, 6000.0, 16000, n, f * n)
        } else {
            (0..n)
                .map(|_| {
                    state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    ((state >> 16) % 5) as i16 - 2
                })
                .collect()
        }
    });
    let speech_max = packets[..10].iter().map(Vec::len).max().unwrap();
    let silent = &packets[40..];
    let tiny = silent.iter().filter(|p| p.len() <= 2).count();
    eprintln!(
        "DTX: speech packets up to {speech_max} bytes; {tiny}/{} silent packets <= 2 bytes",
        silent.len()
    );
    assert!(speech_max > 20);
    assert!(
        tiny * 10 >= silent.len() * 8,
        "only {tiny} of {} packets were DTX",
        silent.len()
    );

    // Without DTX, silence still costs real packets.
    let mut enc = OpusEncoder::new(&config(16000)).unwrap();
    let packets = encode_frames(&mut enc, 50, |_, n| vec![0; n]);
    assert!(packets[20..].iter().all(|p| !p.is_empty()));
}

#[test]
fn opus_concealment_fills_the_requested_length() {
    for rate in RATES {
        let mut enc = OpusEncoder::new(&config(rate)).unwrap();
        let mut dec = OpusDecoder::new(rate).unwrap();
        let n = rate as usize / 50;
        let packets = encode_frames(&mut enc, 5, |f, n| tone(440.0, 8000.0, rate, n, f * n));
        let mut out = vec![0i16; 3 * n];
        for p in &packets {
            dec.decode(p, &mut out[..n]).unwrap();
        }
        // 20 ms, 10 ms, 60 ms and 2.5 ms gaps.
        for len in [n, n / 2, 3 * n, n / 8] {
            assert_eq!(
                dec.decode_lost(&mut out[..len]).unwrap(),
                len,
                "{rate} Hz, {len}"
            );
        }
        // Concealment right after a tone continues it rather than going silent.
        let mut dec = OpusDecoder::new(rate).unwrap();
        for p in &packets {
            dec.decode(p, &mut out[..n]).unwrap();
        }
        assert_eq!(dec.decode_lost(&mut out[..n]).unwrap(), n);
        assert!(
            mean_power(&out[..n]) > 1000.0,
            "{rate} Hz: PLC output is silent"
        );
        // A length that is not a multiple of 2.5 ms is refused.
        assert!(matches!(
            dec.decode_lost(&mut out[..n - 1]),
            Err(OpusError::InvalidFrameSize { .. })
        ));
    }
}

/// A speech-like signal: 160 ms syllables of harmonics on a gliding fundamental,
/// separated by 80 ms pauses, so voice activity is clear and concealment cannot simply
/// extrapolate it.
fn voiced(rate: u32, n: usize, frame: usize) -> Vec<i16> {
    (0..n)
        .map(|i| {
            let t = (frame * n + i) as f64 / f64::from(rate);
            let syllable = (t / 0.24).floor();
            let within = t - syllable * 0.24;
            if within >= 0.16 {
                return 0;
            }
            let f0 = 110.0 + 15.0 * (syllable % 5.0) + 250.0 * within;
            let phase = 2.0 * std::f64::consts::PI * f0 * within;
            let env = (std::f64::consts::PI * within / 0.16).sin();
            let v: f64 = (1..10).map(|h| (phase * h as f64).sin() / h as f64).sum();
            (6000.0 * env * v) as i16
        })
        .collect()
}

fn snr_db(reference: &[i16], x: &[i16]) -> f64 {
    let sig: f64 = reference.iter().map(|&v| f64::from(v).powi(2)).sum();
    let noise: f64 = reference
        .iter()
        .zip(x)
        .map(|(&r, &v)| (f64::from(r) - f64::from(v)).powi(2))
        .sum();
    10.0 * (sig / noise.max(1e-9)).log10()
}

#[test]
fn opus_fec_recovers_a_lost_packet() {
    let rate = 16000;
    let n = 320;
    let lost = 30;
    let mut enc = OpusEncoder::new(&OpusConfig {
        sample_rate: rate,
        bitrate: 32_000,
        fec: true,
        packet_loss_pct: 20,
        ..OpusConfig::default()
    })
    .unwrap();
    let packets = encode_frames(&mut enc, 40, |f, n| voiced(rate, n, f));

    let decode_all = |recover: &dyn Fn(&mut OpusDecoder, &mut [i16]) -> usize| {
        let mut dec = OpusDecoder::new(rate).unwrap();
        let mut out = vec![0i16; n * packets.len()];
        for (i, p) in packets.iter().enumerate() {
            let frame = &mut out[i * n..(i + 1) * n];
            if i == lost {
                assert_eq!(recover(&mut dec, frame), n);
            } else {
                assert_eq!(dec.decode(p, frame).unwrap(), n);
            }
        }
        out
    };
    let reference = decode_all(&|dec, frame| dec.decode(&packets[lost], frame).unwrap());
    let with_fec = decode_all(&|dec, frame| dec.decode_fec(&packets[lost + 1], frame).unwrap());
    let with_plc = decode_all(&|dec, frame| dec.decode_lost(frame).unwrap());

    let span = lost * n..(lost + 1) * n;
    let fec_snr = snr_db(&reference[span.clone()], &with_fec[span.clone()]);
    let plc_snr = snr_db(&reference[span.clone()], &with_plc[span]);
    eprintln!("lost frame vs lossless decode: FEC {fec_snr:.1} dB, PLC {plc_snr:.1} dB");
    assert!(
        fec_snr > plc_snr + 3.0,
        "FEC {fec_snr:.1} dB is no better than PLC {plc_snr:.1} dB"
    );
    assert!(fec_snr > 5.0, "FEC recovery is poor: {fec_snr:.1} dB");

    // Without FEC at the sender, decode_fec falls back to concealment.
    let mut enc = OpusEncoder::new(&OpusConfig {
        sample_rate: rate,
        fec: false,
        ..OpusConfig::default()
    })
    .unwrap();
    let packets = encode_frames(&mut enc, 3, |f, n| voiced(rate, n, f));
    let mut dec = OpusDecoder::new(rate).unwrap();
    let mut frame = vec![0i16; n];
    dec.decode(&packets[0], &mut frame).unwrap();
    assert_eq!(dec.decode_fec(&packets[2], &mut frame).unwrap(), n);
}

#[test]
fn opus_setters_change_the_output() {
    let mut enc = OpusEncoder::new(&config(48000)).unwrap();
    let small = encode_frames(&mut enc, 10, |f, n| voiced(48000, n, f));
    enc.set_bitrate(96_000).unwrap();
    enc.set_complexity(10).unwrap();
    enc.set_fec(false).unwrap();
    enc.set_dtx(true).unwrap();
    enc.set_packet_loss_pct(0).unwrap();
    let big = encode_frames(&mut enc, 10, |f, n| voiced(48000, n, f + 10));
    let avg = |p: &[Vec<u8>]| p[3..].iter().map(Vec::len).sum::<usize>() / (p.len() - 3);
    assert!(
        avg(&big) > 2 * avg(&small),
        "{} vs {}",
        avg(&big),
        avg(&small)
    );
    assert_eq!(enc.config().bitrate, 96_000);
    assert_eq!(enc.config().complexity, 10);
    assert!(!enc.config().fec && enc.config().dtx);
    enc.reset().unwrap();

    assert_eq!(enc.set_bitrate(0), Err(OpusError::InvalidBitrate(0)));
    assert_eq!(
        enc.set_complexity(11),
        Err(OpusError::InvalidComplexity(11))
    );
    assert_eq!(
        enc.set_packet_loss_pct(101),
        Err(OpusError::InvalidPacketLoss(101))
    );
    assert_eq!(enc.config().bitrate, 96_000);
}

#[test]
fn opus_every_frame_duration_encodes() {
    for rate in RATES {
        let mut enc = OpusEncoder::new(&config(rate)).unwrap();
        let mut dec = OpusDecoder::new(rate).unwrap();
        let unit = rate as usize / 400;
        let mut out = [0u8; MAX_PACKET_BYTES];
        let mut pcm = vec![0i16; 24 * unit];
        for units in [1, 2, 4, 8, 16, 24] {
            let samples = units * unit;
            let len = enc
                .encode(&tone(700.0, 5000.0, rate, samples, 0), &mut out)
                .unwrap();
            assert_eq!(dec.decode(&out[..len], &mut pcm).unwrap(), samples);
        }
        for bad in [0, unit - 1, 3 * unit, 12 * unit, 48 * unit] {
            assert_eq!(
                enc.encode(&vec![0; bad], &mut out),
                Err(OpusError::InvalidFrameSize {
                    samples: bad,
                    sample_rate: rate
                })
            );
        }
    }
}

#[test]
fn opus_malformed_packets_are_errors() {
    let mut dec = OpusDecoder::new(48000).unwrap();
    let mut out = [0i16; 5760];
    let mut oversized = vec![0u8; 1300];
    oversized[0] = 0x78; // code 0: one frame, here longer than 1275 bytes
    let bad: [&[u8]; 5] = [
        &[0x03],                   // code 3 without its frame-count byte
        &[0x03, 0x00],             // code 3 with zero frames
        &[0x01, 0x00, 0x00, 0x00], // code 1 with an odd payload
        &[0x02, 0xff],             // code 2 with a truncated length
        &oversized,
    ];
    for p in bad {
        assert_eq!(
            dec.decode(p, &mut out),
            Err(OpusError::InvalidPacket),
            "{:02x?}",
            &p[..2.min(p.len())]
        );
        assert_eq!(packet_samples(p, 48000), Err(OpusError::InvalidPacket));
    }
    assert_eq!(dec.decode(&[], &mut out), Err(OpusError::EmptyPacket));
    assert_eq!(
        dec.decode_fec(&[], &mut out[..960]),
        Err(OpusError::EmptyPacket)
    );

    // A valid 20 ms packet into a 10 ms buffer.
    let mut enc = OpusEncoder::new(&config(48000)).unwrap();
    let mut packet = [0u8; MAX_PACKET_BYTES];
    let len = enc
        .encode(&tone(440.0, 5000.0, 48000, 960, 0), &mut packet)
        .unwrap();
    assert_eq!(
        dec.decode(&packet[..len], &mut out[..480]),
        Err(OpusError::BufferTooSmall)
    );
    assert_eq!(
        enc.encode(&[0; 960], &mut []),
        Err(OpusError::BufferTooSmall)
    );

    // Random bytes: an error or some audio, never a panic.
    let mut state = 0xdead_beef_u32;
    let mut errors = 0;
    for round in 0..500 {
        let len = 1 + round % 200;
        let garbage: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect();
        match dec.decode(&garbage, &mut out) {
            Ok(samples) => assert!(samples <= out.len()),
            Err(_) => errors += 1,
        }
    }
    eprintln!("random packets: {errors}/500 rejected, the rest decoded as (noise) audio");
}

#[test]
fn opus_invalid_settings_are_refused() {
    let err = |c: OpusConfig| OpusEncoder::new(&c).err();
    assert_eq!(
        err(config(44100)),
        Some(OpusError::UnsupportedSampleRate(44100))
    );
    assert_eq!(err(config(0)), Some(OpusError::UnsupportedSampleRate(0)));
    assert_eq!(
        err(OpusConfig {
            bitrate: 0,
            ..OpusConfig::default()
        }),
        Some(OpusError::InvalidBitrate(0))
    );
    assert_eq!(
        err(OpusConfig {
            bitrate: 100,
            ..OpusConfig::default()
        }),
        Some(OpusError::InvalidBitrate(100))
    );
    assert_eq!(
        err(OpusConfig {
            complexity: 11,
            ..OpusConfig::default()
        }),
        Some(OpusError::InvalidComplexity(11))
    );
    assert_eq!(
        err(OpusConfig {
            packet_loss_pct: 101,
            ..OpusConfig::default()
        }),
        Some(OpusError::InvalidPacketLoss(101))
    );
    assert!(OpusDecoder::new(44100).is_err());
    assert!(OpusDecoder::new(96000).is_err());
    assert_eq!(
        packet_samples(&[0x78], 44100),
        Err(OpusError::UnsupportedSampleRate(44100))
    );
    // The special bitrates are accepted.
    for bitrate in [
        switchboard_codecs::opus::BITRATE_AUTO,
        switchboard_codecs::opus::BITRATE_MAX,
    ] {
        assert!(
            OpusEncoder::new(&OpusConfig {
                bitrate,
                ..OpusConfig::default()
            })
            .is_ok()
        );
    }
}

#[test]
fn opus_encoder_and_decoder_move_to_worker_threads() {
    let mut enc = OpusEncoder::new(&config(8000)).unwrap();
    let mut dec = OpusDecoder::new(8000).unwrap();
    let handle = std::thread::spawn(move || {
        let mut out = [0u8; MAX_PACKET_BYTES];
        let len = enc
            .encode(&tone(500.0, 4000.0, 8000, 160, 0), &mut out)
            .unwrap();
        let mut pcm = [0i16; 160];
        dec.decode(&out[..len], &mut pcm).unwrap()
    });
    assert_eq!(handle.join().unwrap(), 160);
}
