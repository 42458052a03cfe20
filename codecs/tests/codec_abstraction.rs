//! Every codec through the `codec` abstraction: SDP-derived specs, enum-dispatched
//! encoders and decoders, concealment, errors, and parser robustness on arbitrary input.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use switchboard_codecs::codec::{Codec, CodecError, CodecKind, CodecSpec, Decoder, Encoder, Fmtp};
use switchboard_codecs::g711;
use switchboard_codecs::g722::G722Encoder;
use switchboard_codecs::opus::OpusError;

fn tone(freq: f64, amp: f64, rate: u32, n: usize, start: usize) -> Vec<i16> {
    (start..start + n)
        .map(|i| {
            (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin()) as i16
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

/// Encodes and decodes `frames` 20 ms frames of a 1 kHz tone; returns input and output.
fn round_trip(spec: &CodecSpec, frames: usize) -> (Vec<i16>, Vec<i16>) {
    let mut enc = Encoder::new(spec, 20).unwrap();
    let mut dec = Decoder::new(spec).unwrap();
    let n = enc.frame().samples;
    assert_eq!(n, spec.samples_per_frame(20));
    assert_eq!(n, dec.samples_per_frame(20));
    let mut payload = vec![0u8; enc.max_payload_bytes()];
    let mut frame = vec![0i16; n];
    let (mut input, mut output) = (Vec::new(), Vec::new());
    for f in 0..frames {
        let pcm = tone(1000.0, 8000.0, enc.audio_rate(), n, f * n);
        let len = enc.encode(&pcm, &mut payload).unwrap();
        assert_eq!(dec.decode(&payload[..len], &mut frame).unwrap(), n);
        input.extend_from_slice(&pcm);
        output.extend_from_slice(&frame);
    }
    (input, output)
}

#[test]
fn codec_g711_through_the_abstraction_matches_the_module() {
    for (text, kind) in [
        ("0 PCMU/8000", CodecKind::Pcmu),
        ("8 PCMA/8000", CodecKind::Pcma),
    ] {
        let spec = CodecSpec::parse_rtpmap(text).unwrap();
        let mut enc = Encoder::new(&spec, 20).unwrap();
        assert_eq!(
            (enc.kind(), enc.frame().samples, enc.max_payload_bytes()),
            (kind, 160, 160)
        );
        let pcm = tone(1000.0, 8000.0, 8000, 160, 0);
        let mut ours = [0u8; 160];
        assert_eq!(enc.encode(&pcm, &mut ours).unwrap(), 160);
        let mut direct = [0u8; 160];
        match kind {
            CodecKind::Pcmu => g711::ulaw_encode_slice(&pcm, &mut direct),
            _ => g711::alaw_encode_slice(&pcm, &mut direct),
        }
        assert_eq!(ours, direct);
        let (input, output) = round_trip(&spec, 5);
        let snr = snr_db(&input, &output);
        assert!(snr > 30.0, "{kind:?}: {snr:.1} dB");
    }
}

#[test]
fn codec_g722_through_the_abstraction() {
    let spec = CodecSpec::from_static_payload_type(9).unwrap();
    assert_eq!(
        (spec.clock_rate, spec.audio_rate(), spec.clock_ticks(20)),
        (8000, 16000, 160)
    );
    let mut enc = Encoder::new(&spec, 20).unwrap();
    assert_eq!((enc.frame().samples, enc.max_payload_bytes()), (320, 160));
    let pcm = tone(1000.0, 8000.0, 16000, 320, 0);
    let mut ours = [0u8; 160];
    assert_eq!(enc.encode(&pcm, &mut ours).unwrap(), 160);
    let mut direct = [0u8; 160];
    G722Encoder::new().encode(&pcm, &mut direct);
    assert_eq!(ours, direct);

    let (input, output) = round_trip(&spec, 10);
    // The codec delays by 22 samples; skip the start-up.
    let snr = snr_db(&input[640..input.len() - 22], &output[662..]);
    assert!(snr > 20.0, "G.722: {snr:.1} dB");
}

#[test]
fn codec_l16_through_the_abstraction_is_lossless() {
    for text in [
        "97 L16/8000",
        "97 L16/16000",
        "98 l16/48000",
        "99 L16/44100",
    ] {
        let spec = CodecSpec::parse_rtpmap(text).unwrap();
        let (input, output) = round_trip(&spec, 3);
        assert_eq!(input, output, "{text}");
    }
    let mut enc = Encoder::new(&CodecSpec::parse_rtpmap("97 L16/16000").unwrap(), 20).unwrap();
    let mut payload = [0u8; 640];
    assert_eq!(enc.encode(&[0x0102; 320], &mut payload).unwrap(), 640);
    assert_eq!(&payload[..2], &[0x01, 0x02], "network byte order");
}

#[test]
fn codec_opus_through_the_abstraction() {
    let spec = CodecSpec::parse_rtpmap("96 opus/48000/2").unwrap();
    let (input, output) = round_trip(&spec, 10);
    assert_eq!(input.len(), 9600);
    let tail = &output[output.len() - 1920..];
    let power = tail.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / 1920.0;
    assert!((power / 32e6).log10().abs() < 0.3, "tone power {power:.0}");

    // The engine may run Opus at 16 kHz even though the RTP clock is 48 kHz.
    let mut enc = Encoder::with_audio_rate(&spec, 20, 16000).unwrap();
    let mut dec = Decoder::with_audio_rate(&spec, 16000).unwrap();
    assert_eq!((enc.frame().samples, dec.audio_rate()), (320, 16000));
    assert_eq!(spec.clock_ticks(20), 960);
    let mut payload = vec![0u8; enc.max_payload_bytes()];
    let mut pcm = [0i16; 320];
    let len = enc
        .encode(&tone(440.0, 5000.0, 16000, 320, 0), &mut payload)
        .unwrap();
    assert_eq!(dec.decode(&payload[..len], &mut pcm).unwrap(), 320);
    // Concealment and FEC produce the requested length.
    assert_eq!(dec.conceal(&mut pcm).unwrap(), 320);
    assert_eq!(dec.decode_fec(&payload[..len], &mut pcm).unwrap(), 320);
    // Garbage is an error, not a panic.
    assert_eq!(
        dec.decode(&[0x03, 0x00], &mut pcm),
        Err(CodecError::Opus(OpusError::InvalidPacket))
    );
    enc.reset().unwrap();
    dec.reset().unwrap();
}

#[test]
fn codec_opus_fmtp_sets_the_encoder() {
    let mut spec = CodecSpec::parse_rtpmap("111 opus/48000/2").unwrap();
    spec.apply_fmtp("111 useinbandfec=1; usedtx=1; maxaveragebitrate=20000")
        .unwrap();
    let mut enc = Encoder::new(&spec, 20).unwrap();
    let config = *enc.as_opus_mut().unwrap().config();
    assert!(config.fec && config.dtx);
    assert!(config.packet_loss_pct > 0);
    assert_eq!(config.bitrate, 20000);

    spec.apply_fmtp("111 useinbandfec=0").unwrap();
    let mut enc = Encoder::new(&spec, 20).unwrap();
    let config = *enc.as_opus_mut().unwrap().config();
    assert!(!config.fec && !config.dtx);
    assert_eq!(config.bitrate, 32000);
    enc.as_opus_mut().unwrap().set_bitrate(24000).unwrap();
    assert!(
        Encoder::new(&CodecSpec::new(CodecKind::Pcmu), 20)
            .unwrap()
            .as_opus_mut()
            .is_none()
    );
}

#[test]
fn codec_concealment_is_left_to_the_caller_for_sample_codecs() {
    for kind in [
        CodecKind::Pcmu,
        CodecKind::Pcma,
        CodecKind::G722,
        CodecKind::L16,
    ] {
        let spec = CodecSpec::new(kind);
        let mut dec = Decoder::new(&spec).unwrap();
        let mut out = vec![7i16; spec.samples_per_frame(20)];
        assert_eq!(dec.conceal(&mut out).unwrap(), 0, "{kind:?}");
        assert_eq!(
            dec.decode_fec(&[0xff; 10], &mut out).unwrap(),
            0,
            "{kind:?}"
        );
        assert!(
            out.iter().all(|&s| s == 7),
            "{kind:?} wrote into the buffer"
        );
        dec.reset().unwrap();
    }
    let mut dec = Decoder::new(&CodecSpec::new(CodecKind::Opus)).unwrap();
    let mut out = [0i16; 960];
    assert_eq!(dec.conceal(&mut out).unwrap(), 960);
}

#[test]
fn codec_unsupported_setups_are_errors() {
    let te = CodecSpec::parse_rtpmap("101 telephone-event/8000").unwrap();
    assert_eq!(
        Encoder::new(&te, 20).err(),
        Some(CodecError::NotAudio(CodecKind::TelephoneEvent))
    );
    assert_eq!(
        Decoder::new(&te).err(),
        Some(CodecError::NotAudio(CodecKind::TelephoneEvent))
    );
    let cn = CodecSpec::from_static_payload_type(13).unwrap();
    assert_eq!(
        Decoder::new(&cn).err(),
        Some(CodecError::NotAudio(CodecKind::ComfortNoise))
    );

    let pcmu16 = CodecSpec::parse_rtpmap("0 PCMU/16000").unwrap();
    assert!(matches!(
        Encoder::new(&pcmu16, 20),
        Err(CodecError::UnsupportedClockRate { .. })
    ));
    let g722_16 = CodecSpec::parse_rtpmap("9 G722/16000").unwrap();
    assert!(matches!(
        Decoder::new(&g722_16),
        Err(CodecError::UnsupportedClockRate { .. })
    ));
    let opus_8k = CodecSpec::parse_rtpmap("96 opus/8000").unwrap();
    assert!(matches!(
        Decoder::new(&opus_8k),
        Err(CodecError::UnsupportedClockRate { .. })
    ));
    let l16_stereo = CodecSpec::from_static_payload_type(10).unwrap();
    assert!(matches!(
        Encoder::new(&l16_stereo, 20),
        Err(CodecError::UnsupportedChannels { .. })
    ));

    let opus = CodecSpec::new(CodecKind::Opus);
    assert!(matches!(
        Encoder::new(&opus, 30),
        Err(CodecError::InvalidPtime { ptime_ms: 30, .. })
    ));
    assert!(matches!(
        Encoder::new(&opus, 0),
        Err(CodecError::InvalidPtime { .. })
    ));
    assert!(matches!(
        Encoder::with_audio_rate(&opus, 20, 44100),
        Err(CodecError::UnsupportedAudioRate { .. })
    ));
    let pcmu = CodecSpec::new(CodecKind::Pcmu);
    assert!(matches!(
        Encoder::new(&pcmu, 0),
        Err(CodecError::InvalidPtime { .. })
    ));
    assert!(matches!(
        Encoder::new(&pcmu, 500),
        Err(CodecError::InvalidPtime { .. })
    ));
    assert!(matches!(
        Decoder::with_audio_rate(&pcmu, 16000),
        Err(CodecError::UnsupportedAudioRate { .. })
    ));
}

#[test]
fn codec_buffer_and_length_checks() {
    let mut enc = Encoder::new(&CodecSpec::new(CodecKind::Pcmu), 20).unwrap();
    assert_eq!(
        enc.encode(&[0; 160], &mut [0; 100]),
        Err(CodecError::BufferTooSmall {
            needed: 160,
            available: 100
        })
    );
    let mut enc = Encoder::new(&CodecSpec::new(CodecKind::G722), 20).unwrap();
    assert_eq!(
        enc.encode(&[0; 321], &mut [0; 200]),
        Err(CodecError::InvalidFrameLength {
            kind: CodecKind::G722,
            samples: 321
        })
    );
    let mut dec = Decoder::new(&CodecSpec::new(CodecKind::G722)).unwrap();
    assert_eq!(
        dec.decode(&[0; 160], &mut [0; 300]),
        Err(CodecError::BufferTooSmall {
            needed: 320,
            available: 300
        })
    );
    let mut dec = Decoder::new(&CodecSpec::new(CodecKind::L16)).unwrap();
    assert_eq!(
        dec.decode(&[0; 641], &mut [0; 400]),
        Err(CodecError::MalformedPayload {
            kind: CodecKind::L16,
            len: 641
        })
    );
    let mut enc = Encoder::new(&CodecSpec::new(CodecKind::Opus), 20).unwrap();
    assert!(matches!(
        enc.encode(&[0; 100], &mut [0; 1500]),
        Err(CodecError::Opus(_))
    ));
}

#[test]
fn codec_pairs_encoder_and_decoder() {
    for kind in [
        CodecKind::Pcmu,
        CodecKind::Pcma,
        CodecKind::G722,
        CodecKind::Opus,
        CodecKind::L16,
    ] {
        let spec = CodecSpec::new(kind);
        let mut codec = Codec::new(&spec, 20).unwrap();
        assert_eq!(codec.spec().kind, kind);
        let n = codec.encoder().frame().samples;
        let mut payload = vec![0u8; codec.encoder().max_payload_bytes()];
        let len = codec
            .encoder()
            .encode(&tone(500.0, 3000.0, spec.audio_rate(), n, 0), &mut payload)
            .unwrap();
        let mut out = vec![0i16; n];
        assert_eq!(
            codec.decoder().decode(&payload[..len], &mut out).unwrap(),
            n,
            "{kind:?}"
        );
    }
}

/// xorshift32, for reproducible arbitrary input.
struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }
}

#[test]
fn codec_parsers_never_panic_on_arbitrary_text() {
    let seeds = [
        "0 PCMU/8000",
        "96 opus/48000/2",
        "101 telephone-event/8000",
        "a=rtpmap:9 G722/8000",
        "96 useinbandfec=1; maxplaybackrate=16000",
        "101 0-16",
        "a=fmtp:101 0-15,66,70-72",
        "111 minptime=10;useinbandfec=1;sprop-stereo=0;maxaveragebitrate=20000",
    ];
    let alphabet: Vec<char> = "0123456789 /;=-,:aAoOpPuUsSeEtT\t\r\né€\u{0}x"
        .chars()
        .collect();
    let mut rng = Rng(0x2468_ace1);
    let mut parsed = 0usize;
    let mut check = |text: &str| {
        if let Ok(spec) = CodecSpec::parse_rtpmap(text) {
            parsed += 1;
            // Whatever parses must format back to something that parses the same.
            let again = CodecSpec::parse_rtpmap(&spec.rtpmap().to_string()).unwrap();
            assert_eq!(again, spec, "{text:?}");
        }
        if let Ok((pt, fmtp)) = Fmtp::parse(text) {
            parsed += 1;
            if !fmtp.is_empty() {
                let (pt2, again) = Fmtp::parse(&format!("{pt} {fmtp}")).unwrap();
                assert_eq!(
                    (
                        pt2,
                        Fmtp {
                            unknown: fmtp.unknown,
                            ..again
                        }
                    ),
                    (pt, fmtp),
                    "{text:?}"
                );
            }
        }
        let _ = Fmtp::parse_parameters(text);
    };
    // Every prefix and suffix of the valid examples (on character boundaries).
    for seed in seeds {
        for (i, _) in seed.char_indices().chain([(seed.len(), ' ')]) {
            check(&seed[..i]);
            check(&seed[i..]);
        }
    }
    // Random mutations of the examples and random strings over a hostile alphabet.
    for round in 0..20_000 {
        let text: String = if round % 2 == 0 {
            let mut chars: Vec<char> = seeds[round / 2 % seeds.len()].chars().collect();
            for _ in 0..1 + rng.next() % 4 {
                let at = rng.next() as usize % (chars.len() + 1);
                let c = alphabet[rng.next() as usize % alphabet.len()];
                match rng.next() % 3 {
                    0 if at < chars.len() => chars[at] = c,
                    1 if at < chars.len() => {
                        chars.remove(at);
                    }
                    _ => chars.insert(at, c),
                }
            }
            chars.into_iter().collect()
        } else {
            let len = rng.next() as usize % 40;
            (0..len)
                .map(|_| alphabet[rng.next() as usize % alphabet.len()])
                .collect()
        };
        check(&text);
    }
    // Arbitrary bytes, lossily decoded.
    for _ in 0..2000 {
        let len = rng.next() as usize % 64;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        check(&String::from_utf8_lossy(&bytes));
    }
    assert!(
        parsed > 100,
        "the mutations should still parse sometimes ({parsed})"
    );
}

#[test]
fn codec_decoders_never_panic_on_arbitrary_payloads() {
    let mut rng = Rng(0x1357_9bdf);
    for kind in [
        CodecKind::Pcmu,
        CodecKind::Pcma,
        CodecKind::G722,
        CodecKind::Opus,
        CodecKind::L16,
    ] {
        let mut dec = Decoder::new(&CodecSpec::new(kind)).unwrap();
        let mut out = vec![0i16; 5760];
        for _ in 0..300 {
            let len = rng.next() as usize % 400;
            let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let out_len = rng.next() as usize % out.len();
            if let Ok(n) = dec.decode(&payload, &mut out[..out_len]) {
                assert!(n <= out_len);
            }
        }
    }
}
