//! The per-frame paths of the signal modules do not allocate: an instrumented global
//! allocator (`stats_alloc`) watches DTMF detection, tone generation, frame energy, voice
//! activity and the RFC 4733 sender, receiver and parser after set-up.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::time::{Duration, Instant};

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use switchboard_codecs::dtmf::{DtmfDetector, DtmfEvent};
use switchboard_codecs::telephone_event::{DigitEvent, DtmfReceiver, DtmfSender, TelephoneEvent};
use switchboard_codecs::tone::{Cadence, ToneGenerator};
use switchboard_codecs::vad::{VadConfig, VoiceActivity, energy_dbov};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Runs `work` and checks it made no allocation.
///
/// The allocator counts every thread, and the test harness's own thread can allocate while
/// a test starts; so a run that saw allocations is retried, and the check fails only if
/// three runs in a row allocated (an allocating per-frame path allocates on every run).
fn assert_no_alloc(what: &str, mut work: impl FnMut()) {
    let mut seen = Vec::new();
    for _ in 0..3 {
        let region = Region::new(GLOBAL);
        work();
        let stats = region.change();
        if (stats.allocations, stats.reallocations) == (0, 0) {
            return;
        }
        seen.push((stats.allocations, stats.reallocations));
    }
    panic!("{what} allocated on the per-frame path: (allocations, reallocations) = {seen:?}");
}

/// One test only: a second test running in parallel would allocate inside this one's
/// regions.
#[test]
fn dtmf_tone_vad_and_telephone_event_paths_do_not_allocate() {
    signal_frames();
    telephone_events();
}

fn signal_frames() {
    for rate in [8000u32, 16000, 48000] {
        let mut frame = vec![0i16; rate as usize / 50];
        let cadence = Cadence::repeating(&[(60, 40)]).unwrap();
        let mut tone = ToneGenerator::dtmf(rate, '8', cadence).unwrap();
        let mut ringback = ToneGenerator::ringback(rate).unwrap();
        let mut detector = DtmfDetector::new(rate).unwrap();
        let mut vad = VoiceActivity::new(VadConfig::new(rate)).unwrap();
        let mut begins = 0;

        assert_no_alloc("dtmf/tone/vad", || {
            for i in 0..100 {
                tone.fill(&mut frame);
                if i % 2 == 0 {
                    detector.process(&frame, |e| {
                        if let DtmfEvent::Begin(_) = e {
                            begins += 1;
                        }
                    });
                } else if detector.process_frame(&frame).is_some() {
                    begins += 1;
                }
                let _ = energy_dbov(&frame);
                let _ = vad.process(&frame);
                ringback.fill(&mut frame);
            }
        });
        assert!(begins >= 10, "rate {rate}: {begins} digits");
    }
}

fn telephone_events() {
    let mut sender = DtmfSender::new(160).unwrap();
    let mut receiver = DtmfReceiver::default();
    let t0 = Instant::now();
    let mut payload = [0u8; 4];
    let mut seq = 0u16;
    let mut round = 0u32;
    let mut ends = 0;

    assert_no_alloc("telephone_event", || {
        round += 1;
        for digit in 0..20u8 {
            let start_ts = round * 100_000 + u32::from(digit) * 4000;
            sender.start(digit % 16, 960, 10).unwrap();
            while let Some(p) = sender.poll_packet() {
                seq = seq.wrapping_add(1);
                p.event.write(&mut payload).unwrap();
                let parsed = TelephoneEvent::parse(&payload).unwrap();
                let now = t0 + Duration::from_millis(u64::from(start_ts + p.send_offset) / 8);
                let ts = start_ts + p.timestamp_offset;
                receiver.handle_event(now, seq, ts, parsed);
                receiver.handle_payload(now, seq, ts, &p.payload).unwrap();
                while let Some(e) = receiver.poll_event() {
                    ends += usize::from(matches!(e, DigitEvent::End { .. }));
                }
            }
        }
    });
    assert!(ends >= 20 && ends % 20 == 0, "{ends} digits ended");
}
