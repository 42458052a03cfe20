//! The JSON a fork sends to its service and to event subscribers; see `docs/fork.md`.

use serde_json::{Value, json};
use switchboard_codecs::analytics::AnalyticsSummary;

/// Protocol version in the start message.
pub const PROTOCOL_VERSION: u32 = 1;

/// Which audio a fork carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ForkWhat {
    /// The caller's (customer's) audio, mono.
    Caller,
    /// The agent's audio, mono.
    Agent,
    /// Both, as stereo: channel 0 the caller, channel 1 the agent.
    Stereo,
    /// Both, mixed to mono.
    Mixed,
}

impl ForkWhat {
    /// The name used in `fork.start` and the start message.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Caller => "caller",
            Self::Agent => "agent",
            Self::Stereo => "stereo",
            Self::Mixed => "mixed",
        }
    }

    /// Parses the name used in `fork.start`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "caller" => Self::Caller,
            "agent" => Self::Agent,
            "stereo" | "both" => Self::Stereo,
            "mixed" => Self::Mixed,
            _ => return None,
        })
    }

    /// Channels in each frame.
    pub fn channels(self) -> u16 {
        if self == Self::Stereo { 2 } else { 1 }
    }
}

/// One leg described in the start message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkLeg {
    /// The leg id.
    pub id: String,
    /// `caller` or `agent` (or another role name).
    pub role: String,
    /// The leg's negotiated codec, e.g. `PCMU/8000`.
    pub codec: String,
}

/// The first message of every connection; see `docs/fork.md` for the schema.
#[derive(Debug, Clone, PartialEq)]
pub struct StartMessage {
    /// The fork id.
    pub fork: String,
    /// The call id.
    pub call: String,
    /// The legs involved.
    pub legs: Vec<ForkLeg>,
    /// Which audio is carried.
    pub what: ForkWhat,
    /// Sample rate of the L16 frames: 8000 or 16000.
    pub sample_rate: u32,
    /// The leg bot audio is played into.
    pub bot_leg: Option<String>,
    /// Opaque metadata from `fork.start`, passed through.
    pub metadata: Value,
}

impl StartMessage {
    /// The JSON object sent as the first text frame.
    pub fn to_json(&self) -> Value {
        let channels = self.what.channels();
        let layout: Vec<&str> = match self.what {
            ForkWhat::Stereo => vec!["caller", "agent"],
            ForkWhat::Mixed => vec!["mixed"],
            ForkWhat::Caller => vec!["caller"],
            ForkWhat::Agent => vec!["agent"],
        };
        let frame_samples = self.sample_rate / 50 * u32::from(channels);
        json!({
            "event": "start",
            "version": PROTOCOL_VERSION,
            "fork": self.fork,
            "call": self.call,
            "legs": self.legs.iter().map(|l| json!({
                "id": l.id, "role": l.role, "codec": l.codec,
            })).collect::<Vec<_>>(),
            "what": self.what.as_str(),
            "audio": {
                "encoding": "L16",
                "byte_order": "little-endian",
                "sample_rate": self.sample_rate,
                "channels": channels,
                "layout": layout,
                "frame_ms": 20,
                "frame_bytes": frame_samples * 2,
            },
            "bot_audio": {
                "encoding": "L16",
                "byte_order": "little-endian",
                "sample_rate": self.sample_rate,
                "channels": 1,
                "leg": self.bot_leg,
            },
            "metadata": self.metadata,
        })
    }
}

/// The figures of [`AnalyticsSummary`] as JSON: the body of live `analytics` events and of
/// the `analytics` object in the call detail record (see `docs/fork.md`). `parties` names
/// each party index (`["caller", "agent"]`); missing names are the index as text.
pub fn analytics_json(summary: &AnalyticsSummary, parties: &[&str]) -> Value {
    let name = |i: usize| {
        parties
            .get(i)
            .map_or_else(|| i.to_string(), |n| (*n).to_owned())
    };
    let round = |x: f32| (f64::from(x) * 1000.0).round() / 1000.0;
    let per_party: Vec<Value> = summary
        .parties()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            json!({
                "party": name(i),
                "talk_ms": p.talk_ms,
                "talk_share": round(p.talk_share),
                "longest_monologue_ms": p.longest_monologue_ms,
                "first_talk_ms": p.first_talk_ms,
                "agitation": p.agitation.map(round),
                "agitation_mean": p.agitation_mean.map(round),
                "agitation_peak": p.agitation_peak.map(round),
                "prosody": {
                    "level_dbov": round(p.features.level_dbov),
                    "level_std_db": round(p.features.level_std_db),
                    "f0_hz": round(p.features.f0_hz),
                    "f0_std_semitones": round(p.features.f0_std_semitones),
                    "f0_elevation_semitones": round(p.features.f0_elevation_semitones),
                },
            })
        })
        .collect();
    json!({
        "duration_ms": summary.duration_ms,
        "silence_ms": summary.silence_ms,
        "overtalk_ms": summary.overtalk_ms,
        "talk_ratio": summary.talk_ratio.map(round),
        "longest_monologue": summary.longest_monologue.map(|(p, ms)| json!({
            "party": name(p), "ms": ms,
        })),
        "time_to_first_agent_word_ms": summary.time_to_first_agent_word_ms,
        "parties": per_party,
    })
}

pub(crate) fn event(name: &str, fork: &str) -> Value {
    json!({ "event": name, "fork": fork })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_message_schema() {
        let m = StartMessage {
            fork: "f1".into(),
            call: "c1".into(),
            legs: vec![
                ForkLeg {
                    id: "a".into(),
                    role: "caller".into(),
                    codec: "PCMU/8000".into(),
                },
                ForkLeg {
                    id: "b".into(),
                    role: "agent".into(),
                    codec: "opus/48000/2".into(),
                },
            ],
            what: ForkWhat::Stereo,
            sample_rate: 16000,
            bot_leg: Some("a".into()),
            metadata: json!({"crm": {"ticket": 7}}),
        };
        let v = m.to_json();
        assert_eq!(v["event"], "start");
        assert_eq!(v["audio"]["channels"], 2);
        assert_eq!(v["audio"]["frame_bytes"], 1280);
        assert_eq!(v["audio"]["layout"][1], "agent");
        assert_eq!(v["legs"][1]["codec"], "opus/48000/2");
        assert_eq!(v["metadata"]["crm"]["ticket"], 7);
        assert_eq!(ForkWhat::parse("both"), Some(ForkWhat::Stereo));
        assert_eq!(ForkWhat::parse("x"), None);
    }

    #[test]
    fn analytics_summary_as_json() {
        use switchboard_codecs::analytics::{AnalyticsConfig, ConversationAnalytics};
        let mut a = ConversationAnalytics::new(AnalyticsConfig::new(8000)).unwrap();
        let loud: Vec<i16> = (0..160)
            .map(|i| if i % 2 == 0 { 8000 } else { -8000 })
            .collect();
        for _ in 0..50 {
            let _ = a.process(&[&loud, &[0; 160]]);
        }
        let v = analytics_json(&a.summary(), &["caller", "agent"]);
        assert_eq!(v["duration_ms"], 1000);
        assert_eq!(v["parties"][0]["party"], "caller");
        assert_eq!(v["parties"][0]["talk_ms"], 1000);
        assert_eq!(v["parties"][1]["first_talk_ms"], Value::Null);
        assert_eq!(v["longest_monologue"]["party"], "caller");
        assert_eq!(v["talk_ratio"], 0.0);
    }
}
