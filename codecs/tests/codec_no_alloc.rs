//! The per-frame paths of every codec through the `codec` abstraction do not allocate:
//! an instrumented global allocator (`stats_alloc`) watches encode, decode and
//! concealment after set-up. (libopus itself allocates its state once, at creation, and
//! works on the stack per call; that is C memory this allocator does not see.)

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use switchboard_codecs::codec::{CodecKind, CodecSpec, Decoder, Encoder};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn codec_per_frame_paths_do_not_allocate() {
    for kind in [
        CodecKind::Pcmu,
        CodecKind::Pcma,
        CodecKind::G722,
        CodecKind::Opus,
        CodecKind::L16,
    ] {
        let spec = CodecSpec::new(kind);
        let mut enc = Encoder::new(&spec, 20).unwrap();
        let mut dec = Decoder::new(&spec).unwrap();
        let n = enc.frame().samples;
        let pcm: Vec<i16> = (0..n).map(|i| ((i * 37) % 2000) as i16 - 1000).collect();
        let mut payload = vec![0u8; enc.max_payload_bytes()];
        let mut out = vec![0i16; n];

        // The counter is process-wide, so another thread (the test harness) may allocate
        // during a window; an allocating codec would show in every window, so the quietest
        // of three decides.
        let quietest = (0..3)
            .map(|_| {
                let region = Region::new(GLOBAL);
                for _ in 0..50 {
                    let len = enc.encode(&pcm, &mut payload).unwrap();
                    dec.decode(&payload[..len], &mut out).unwrap();
                    dec.conceal(&mut out).unwrap();
                }
                let stats = region.change();
                stats.allocations + stats.reallocations
            })
            .min()
            .unwrap();
        assert_eq!(quietest, 0, "{kind:?} allocated on the per-frame path");
    }
}
