//! Conversation analytics on synthetic conversations: tone schedules with known timing, and
//! calm versus agitated speech synthesised with espeak-ng (resampled with sox).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use switchboard_codecs::analytics::{
    AGENT, AnalyticsConfig, AnalyticsSummary, CALLER, ConversationAnalytics, FRAME_MS,
};
use switchboard_codecs::tone::{ToneGenerator, ToneLevel};
use switchboard_codecs::wav::WavReader;

/// Tolerance on every timing figure, in ms.
const TOLERANCE_MS: i64 = 40;

struct Noise(u64);

impl Noise {
    fn sample(&mut self, sigma: f64) -> i16 {
        let mut sum = 0.0;
        for _ in 0..12 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            sum += (self.0 >> 11) as f64 / (1u64 << 53) as f64;
        }
        ((sum - 6.0) * sigma).round() as i16
    }
}

/// One party's audio: a tone switched on during `on` (ms intervals), over low noise.
fn render(rate: u32, hz: f32, on: &[(u64, u64)], total_ms: u64, seed: u64) -> Vec<i16> {
    let n = (total_ms * u64::from(rate) / 1000) as usize;
    let mut tone = vec![0i16; n];
    ToneGenerator::sine(rate, hz, ToneLevel::Dbov(-22.0))
        .unwrap()
        .fill(&mut tone);
    let sigma = 32768.0 * 10f64.powf(-65.0 / 20.0);
    let mut noise = Noise(seed);
    (0..n)
        .map(|i| {
            let ms = i as u64 * 1000 / u64::from(rate);
            let lit = on.iter().any(|&(a, b)| ms >= a && ms < b);
            let t = if lit { tone[i] } else { 0 };
            t.saturating_add(noise.sample(sigma))
        })
        .collect()
}

/// Per-ms talk state of one party: its intervals with gaps up to `bridge` ms bridged.
fn talk_timeline(on: &[(u64, u64)], total_ms: u64, bridge: u64) -> Vec<bool> {
    let mut t = vec![false; total_ms as usize];
    for (i, &(a, b)) in on.iter().enumerate() {
        t[a as usize..b as usize].fill(true);
        if let Some(&(next, _)) = on.get(i + 1)
            && next - b <= bridge
        {
            t[b as usize..next as usize].fill(true);
        }
    }
    t
}

fn run(analytics: &mut ConversationAnalytics, parties: &[Vec<i16>], rate: u32) -> usize {
    let frame = (rate * FRAME_MS / 1000) as usize;
    let frames = parties[0].len() / frame;
    let mut reports = 0;
    for f in 0..frames {
        let slices: Vec<&[i16]> = parties
            .iter()
            .map(|p| &p[f * frame..(f + 1) * frame])
            .collect();
        if analytics.process(&slices).is_some() {
            reports += 1;
        }
    }
    reports
}

fn close(name: &str, got: u64, want: u64) {
    let diff = got as i64 - want as i64;
    eprintln!("{name}: got {got} ms, want {want} ms ({diff:+})");
    assert!(
        diff.abs() <= TOLERANCE_MS,
        "{name}: got {got} ms, want {want} ms"
    );
}

struct Expected {
    talk: [u64; 2],
    silence: u64,
    overtalk: u64,
    longest: (usize, u64),
    first_agent: u64,
}

fn expected(caller: &[(u64, u64)], agent: &[(u64, u64)], total: u64) -> Expected {
    let c = talk_timeline(caller, total, 300);
    let a = talk_timeline(agent, total, 300);
    let count = |f: &dyn Fn(usize) -> bool| (0..total as usize).filter(|&i| f(i)).count() as u64;
    let longest_run = |t: &[bool]| {
        let (mut best, mut run) = (0u64, 0u64);
        for &x in t {
            run = if x { run + 1 } else { 0 };
            best = best.max(run);
        }
        best
    };
    let (lc, la) = (longest_run(&c), longest_run(&a));
    Expected {
        talk: [count(&|i| c[i]), count(&|i| a[i])],
        silence: count(&|i| !c[i] && !a[i]),
        overtalk: count(&|i| c[i] && a[i]),
        longest: if lc >= la { (CALLER, lc) } else { (AGENT, la) },
        first_agent: a.iter().position(|&x| x).unwrap() as u64,
    }
}

fn check(s: &AnalyticsSummary, e: &Expected) {
    close("caller talk", s.parties()[CALLER].talk_ms, e.talk[0]);
    close("agent talk", s.parties()[AGENT].talk_ms, e.talk[1]);
    close("silence", s.silence_ms, e.silence);
    close("over-talk", s.overtalk_ms, e.overtalk);
    let (who, ms) = s.longest_monologue.unwrap();
    assert_eq!(who, e.longest.0, "longest monologue party");
    close("longest monologue", ms, e.longest.1);
    close(
        "first agent word",
        s.time_to_first_agent_word_ms.unwrap(),
        e.first_agent,
    );
    let ratio = e.talk[1] as f32 / (e.talk[0] + e.talk[1]) as f32;
    assert!((s.talk_ratio.unwrap() - ratio).abs() < 0.02);
    assert_eq!(
        s.duration_ms,
        s.parties()[0].talk_ms + s.parties()[1].talk_ms + s.silence_ms - s.overtalk_ms
    );
}

#[test]
fn analytics_tone_schedule_matches_within_40_ms() {
    // Caller greets after ring-in silence, pauses 200 ms inside a turn (bridged), talks over
    // the agent twice; the agent's first word is at 2 440 ms. Edges off the 20 ms grid test
    // the frame resolution.
    let caller = [
        (600, 2000),
        (2200, 3500),
        (5900, 6610),
        (9000, 11_000),
        (11_700, 12_300),
    ];
    let agent = [
        (2440, 2800),
        (3900, 6300),
        (7000, 9400),
        (10_500, 10_800),
        (12_800, 13_500),
    ];
    let total = 14_000;
    let want = expected(&caller, &agent, total);
    for rate in [8000u32, 16000] {
        let parties = vec![
            render(rate, 440.0, &caller, total, 11),
            render(rate, 1004.0, &agent, total, 12),
        ];
        let mut analytics = ConversationAnalytics::new(AnalyticsConfig::new(rate)).unwrap();
        let reports = run(&mut analytics, &parties, rate);
        assert_eq!(reports, 2, "a live report every 5 s");
        let s = analytics.summary();
        assert_eq!(s.duration_ms, total);
        check(&s, &want);
        // A summary is deterministic and idempotent.
        assert_eq!(analytics.summary(), s);
    }
}

#[test]
fn analytics_live_reports_cover_the_call_so_far() {
    let rate = 8000;
    let caller = [(0, 1000), (3000, 4000)];
    let agent = [(1500, 2500), (4500, 9000)];
    let total = 10_000;
    let parties = [
        render(rate, 600.0, &caller, total, 3),
        render(rate, 900.0, &agent, total, 4),
    ];
    let mut analytics = ConversationAnalytics::new(AnalyticsConfig {
        report_interval_ms: 2000,
        ..AnalyticsConfig::new(rate)
    })
    .unwrap();
    let frame = 160;
    let mut reports = Vec::new();
    for f in 0..parties[0].len() / frame {
        let slices = [
            &parties[0][f * frame..(f + 1) * frame],
            &parties[1][f * frame..(f + 1) * frame],
        ];
        if let Some(s) = analytics.process(&slices) {
            reports.push(s);
        }
    }
    assert_eq!(reports.len(), 5);
    for (i, r) in reports.iter().enumerate() {
        assert_eq!(r.duration_ms, (i as u64 + 1) * 2000);
    }
    // At 2 s the caller has spoken 1 s and the agent 0.5 s.
    close("caller at 2 s", reports[0].parties()[0].talk_ms, 1000);
    close("agent at 2 s", reports[0].parties()[1].talk_ms, 500);
    // Figures never go down.
    for w in reports.windows(2) {
        for p in 0..2 {
            assert!(w[1].parties()[p].talk_ms >= w[0].parties()[p].talk_ms);
        }
    }
    let last = analytics.summary();
    close("agent monologue", last.longest_monologue.unwrap().1, 4500);
    assert_eq!(last.longest_monologue.unwrap().0, AGENT);
}

#[test]
fn analytics_missing_party_audio_is_silence() {
    let rate = 16000;
    let mut analytics = ConversationAnalytics::new(AnalyticsConfig {
        parties: 3,
        agent_party: Some(2),
        ..AnalyticsConfig::new(rate)
    })
    .unwrap();
    let tone = render(rate, 500.0, &[(0, 2000)], 2000, 1);
    for f in 0..100 {
        // Party 0 talks; party 1 sends nothing; party 2 is absent from the slice.
        let _ = analytics.process(&[&tone[f * 320..(f + 1) * 320], &[]]);
    }
    let s = analytics.summary();
    close("talk", s.parties()[0].talk_ms, 2000);
    assert_eq!(s.parties()[1].talk_ms, 0);
    assert_eq!(s.parties()[2].talk_ms, 0);
    assert_eq!(s.time_to_first_agent_word_ms, None);
    assert_eq!(s.talk_ratio, Some(0.0));
    assert_eq!(s.parties().len(), 3);
}

// ---------------------------------------------------------------------------------------
// Agitation on synthetic speech

const TEXT: &str = "I have been waiting for over an hour. Nobody called me back. \
    The invoice is wrong again and I want this fixed today. \
    Can you tell me what happened to my order?";

fn tool_exists(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() || !o.stdout.is_empty())
}

/// A temporary path unique to this process and call (tests run in parallel).
fn tmp(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("sb-analytics-{}-{n}-{name}", std::process::id()))
}

/// Synthesises `TEXT` with espeak-ng and converts it to mono PCM at `rate` with sox.
fn speak(name: &str, args: &[&str], ssml: Option<&str>, rate: u32) -> Vec<i16> {
    let raw = tmp(&format!("{name}-raw.wav"));
    let out = tmp(&format!("{name}.wav"));
    let mut cmd = Command::new("espeak-ng");
    cmd.args(args).arg("-w").arg(&raw);
    match ssml {
        Some(prosody) => cmd.arg("-m").arg(format!(
            "<speak><prosody {prosody}>{TEXT}</prosody></speak>"
        )),
        None => cmd.arg(TEXT),
    };
    let status = cmd.status().expect("espeak-ng runs");
    assert!(status.success());
    let status = Command::new("sox")
        .arg(&raw)
        .args(["-r", &rate.to_string(), "-c", "1", "-b", "16"])
        .arg(&out)
        .status()
        .expect("sox runs");
    assert!(status.success());
    let bytes = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_file(&out);
    let wav = WavReader::parse(&bytes).unwrap();
    assert_eq!(wav.info.spec.sample_rate, rate);
    wav.samples_i16().unwrap().collect()
}

fn calm(rate: u32) -> Vec<i16> {
    speak(
        "calm",
        &["-a", "35", "-p", "35", "-s", "140"],
        Some(r#"pitch="low" range="x-low""#),
        rate,
    )
}

fn agitated(rate: u32) -> Vec<i16> {
    speak(
        "agitated",
        &["-a", "160", "-p", "70", "-s", "210"],
        Some(r#"pitch="high" range="x-high""#),
        rate,
    )
}

/// Runs one party's speech alone and returns its summary.
fn single(pcm: &[i16], rate: u32) -> AnalyticsSummary {
    let mut analytics = ConversationAnalytics::new(AnalyticsConfig {
        parties: 1,
        agent_party: None,
        ..AnalyticsConfig::new(rate)
    })
    .unwrap();
    let frame = (rate / 50) as usize;
    for chunk in pcm.chunks_exact(frame) {
        let _ = analytics.process(&[chunk]);
    }
    analytics.summary()
}

#[test]
fn agitation_ranks_loud_varied_speech_above_calm_speech() {
    assert!(
        tool_exists("espeak-ng") && tool_exists("sox"),
        "espeak-ng and sox are needed (make deps installs them)"
    );
    for rate in [8000u32, 16000] {
        let calm_pcm = calm(rate);
        let agitated_pcm = agitated(rate);
        let c = single(&calm_pcm, rate).parties()[0];
        let a = single(&agitated_pcm, rate).parties()[0];
        eprintln!("rate {rate}\n calm     {c:?}\n agitated {a:?}");
        let (cs, as_) = (c.agitation_mean.unwrap(), a.agitation_mean.unwrap());
        assert!(as_ > cs + 0.15, "mean: agitated {as_} calm {cs}");
        assert!(a.agitation.unwrap() > c.agitation.unwrap());
        assert!(a.agitation_peak.unwrap() > c.agitation_peak.unwrap());
        assert!(a.features.level_dbov > c.features.level_dbov);
        assert!(a.features.f0_std_semitones > c.features.f0_std_semitones);
        assert!(a.features.f0_hz > c.features.f0_hz);
        assert!((60.0..400.0).contains(&c.features.f0_hz));
    }
}

#[test]
fn agitation_in_a_conversation_and_against_the_speakers_baseline() {
    assert!(
        tool_exists("espeak-ng") && tool_exists("sox"),
        "espeak-ng and sox are needed (make deps installs them)"
    );
    let rate = 8000;
    let frame = 160;
    // Caller agitated, agent calm, taking turns.
    let caller_speech = agitated(rate);
    let agent_speech = calm(rate);
    let gap = vec![0i16; rate as usize];
    let mut caller = caller_speech.clone();
    caller.extend(&gap);
    caller.extend(vec![0i16; agent_speech.len()]);
    let mut agent = vec![0i16; caller_speech.len()];
    agent.extend(&gap);
    agent.extend(&agent_speech);
    let len = caller.len().min(agent.len()) / frame * frame;
    let mut analytics = ConversationAnalytics::new(AnalyticsConfig::new(rate)).unwrap();
    for f in 0..len / frame {
        let _ = analytics.process(&[
            &caller[f * frame..(f + 1) * frame],
            &agent[f * frame..(f + 1) * frame],
        ]);
    }
    let s = analytics.summary();
    let (c, a) = (s.parties()[CALLER], s.parties()[AGENT]);
    assert!(c.agitation_mean.unwrap() > a.agitation_mean.unwrap() + 0.15);
    assert!(
        s.overtalk_ms < 200,
        "turns do not overlap: {}",
        s.overtalk_ms
    );
    assert!(s.time_to_first_agent_word_ms.unwrap() > caller_speech.len() as u64 / 8);

    // One speaker: calm, then agitated. The estimate rises, and the pitch rises above the
    // baseline learnt from the calm part.
    let mut speaker = calm(rate);
    let calm_len = speaker.len() / frame * frame;
    speaker.truncate(calm_len);
    speaker.extend(agitated(rate));
    let mut one = ConversationAnalytics::new(AnalyticsConfig {
        parties: 1,
        agent_party: None,
        ..AnalyticsConfig::new(rate)
    })
    .unwrap();
    let mut after_calm = None;
    for (i, chunk) in speaker.chunks_exact(frame).enumerate() {
        let _ = one.process(&[chunk]);
        if (i + 1) * frame == calm_len {
            after_calm = Some(one.summary().parties()[0]);
        }
    }
    let before = after_calm.unwrap();
    let after = one.summary().parties()[0];
    eprintln!("before {before:?}\nafter  {after:?}");
    assert!(after.agitation.unwrap() > before.agitation.unwrap() + 0.2);
    assert!(after.features.f0_elevation_semitones > 1.0);
    assert!(after.agitation_peak.unwrap() >= after.agitation.unwrap());
}
