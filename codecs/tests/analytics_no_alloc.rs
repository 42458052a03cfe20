//! Conversation analytics does not allocate per frame: an instrumented global allocator
//! (`stats_alloc`) watches `ConversationAnalytics::process`, `summary`, the pitch tracker and
//! the agitation estimator after set-up.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use switchboard_codecs::analytics::{
    Agitation, AnalyticsConfig, ConversationAnalytics, PitchTracker,
};
use switchboard_codecs::tone::{ToneGenerator, ToneLevel};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Runs `work` and checks it made no allocation; retried as in `dtmf_no_alloc.rs` because the
/// allocator counts every thread.
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

/// One test only: a second test running in parallel would allocate inside this one's regions.
#[test]
fn analytics_per_frame_paths_do_not_allocate() {
    for rate in [8000u32, 16000] {
        let n = (rate / 50) as usize;
        let mut caller = vec![0i16; n * 250];
        let mut agent = vec![0i16; n * 250];
        ToneGenerator::sine(rate, 180.0, ToneLevel::Dbov(-20.0))
            .unwrap()
            .fill(&mut caller[..n * 120]);
        ToneGenerator::sine(rate, 120.0, ToneLevel::Dbov(-25.0))
            .unwrap()
            .fill(&mut agent[n * 100..]);
        let mut analytics = ConversationAnalytics::new(AnalyticsConfig {
            report_interval_ms: 1000,
            ..AnalyticsConfig::new(rate)
        })
        .unwrap();
        let mut pitch = PitchTracker::new(rate).unwrap();
        let mut agitation = Agitation::new();
        let mut reports = 0;
        assert_no_alloc("analytics", || {
            for f in 0..250 {
                let frames = [&caller[f * n..(f + 1) * n], &agent[f * n..(f + 1) * n]];
                if analytics.process(&frames).is_some() {
                    reports += 1;
                }
                let p = pitch.process(frames[0]);
                agitation.update(-20.0, p.f0_hz);
            }
            let s = analytics.summary();
            assert!(s.parties()[0].talk_ms > 0);
        });
        assert!(reports >= 5);
        assert!(agitation.score().is_some());
    }
}
