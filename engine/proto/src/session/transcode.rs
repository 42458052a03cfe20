//! Codec negotiation with transcoding: what an offer advertises to the answerer when the
//! `codec` options (`transcode`, `mask`, `consume`) or `always transcode` ask for it, and what
//! the engine must decode and encode once the answer is known.
//!
//! Offer: the answerer sees the offerer's codecs after `strip`/`mask`/`consume`/`offer`/`except`
//! (see [`sdp::apply_codec_options`]) plus every codec of `transcode` the engine can produce
//! (PCMU, PCMA, G722, opus/48000/2, L16 at 8000/16000/48000, telephone-event) that is not there
//! yet, inserted after the first remaining primary codec as rtpengine 10.5 does. A new clock
//! rate gets its own telephone-event (and CN) when the offer carried one. Added codecs keep
//! their RFC 3551 static payload type, or get the lowest free dynamic one from 96.
//!
//! Answer: when the answerer's first codec is one the offerer sent (same payload type) and the
//! DTMF transport fits, the stream is relayed; otherwise both sides get [`SideCodecs`] and the
//! offerer is answered with its own first codec the engine supports (plus its
//! telephone-event when the answerer has one).

use crate::ng::CodecOptions;
use crate::sdp::{self, Codec};

use super::SideCodecs;

/// Codec names `transcode` accepts, with their defaults: (name, clock, channels, static PT).
const TRANSCODABLE: &[(&str, u32, u16, Option<u8>)] = &[
    ("PCMU", 8000, 1, Some(0)),
    ("PCMA", 8000, 1, Some(8)),
    ("G722", 8000, 1, Some(9)),
    ("opus", 48000, 2, None),
    ("L16", 8000, 1, None),
    ("telephone-event", 8000, 1, None),
];

/// Most entries of one `transcode` list looked at (the rest are ignored with a warning).
const MAX_SPECS: usize = 32;

/// Whether the engine can decode and encode this audio format.
pub(super) fn is_transcodable(c: &Codec) -> bool {
    let n = c.name.as_str();
    let is = |name: &str| n.eq_ignore_ascii_case(name);
    match (c.clock_rate, c.channels) {
        (8000, 1) => is("PCMU") || is("PCMA") || is("G722") || is("L16"),
        (16000 | 48000, 1) => is("L16"),
        (48000, 2) => is("opus"),
        _ => false,
    }
}

fn is_te(c: &Codec) -> bool {
    c.name.eq_ignore_ascii_case("telephone-event")
}

fn is_cn(c: &Codec) -> bool {
    c.name.eq_ignore_ascii_case("CN")
}

/// Same format (name, clock rate, channels), whatever the payload type.
pub(super) fn same_format(a: &Codec, b: &Codec) -> bool {
    a.name.eq_ignore_ascii_case(&b.name) && a.clock_rate == b.clock_rate && a.channels == b.channels
}

/// Parses a `transcode` entry `name[/clock[/channels[/bitrate]]]` into a codec the engine
/// supports (payload type 0 until assigned), or `None`.
fn parse_spec(spec: &str) -> Option<(Codec, Option<u8>)> {
    let mut parts = spec.trim().split('/');
    let name = parts.next()?;
    let &(canon, clock, channels, static_pt) = TRANSCODABLE
        .iter()
        .find(|(n, ..)| n.eq_ignore_ascii_case(name))?;
    let clock = match parts.next().filter(|s| !s.is_empty()) {
        Some(c) => c.parse::<u32>().ok()?,
        None => clock,
    };
    let channels = match parts.next().filter(|s| !s.is_empty()) {
        Some(c) => c.parse::<u16>().ok()?,
        None => channels,
    };
    // A bitrate, if any, must at least be a number.
    if let Some(b) = parts.next().filter(|s| !s.is_empty()) {
        b.parse::<u32>().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    let codec = Codec {
        payload_type: 0,
        name: canon.to_owned(),
        clock_rate: clock,
        channels,
        fmtp: (canon == "telephone-event").then(|| "0-15".to_owned()),
        rtcp_fb: Vec::new(),
    };
    let ok = if canon == "telephone-event" {
        channels == 1 && matches!(clock, 8000 | 16000 | 48000)
    } else {
        is_transcodable(&codec)
    };
    let static_pt = static_pt.filter(|pt| {
        sdp::static_payload_type(*pt).is_some_and(|(_, c, ch)| c == clock && ch == channels)
    });
    ok.then_some((codec, static_pt))
}

/// The lowest free dynamic payload type (96–127), or `None` when all are taken.
fn free_dynamic(used: &[u8]) -> Option<u8> {
    (96..=127).find(|pt| !used.contains(pt))
}

/// What an offer's `codec` options give, for one RTP media section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OfferCodecs {
    /// What the answerer sees, in order.
    pub answerer: Vec<Codec>,
    /// The offerer's codecs the relay accepts from it (everything but stripped ones).
    pub offerer: Vec<Codec>,
    /// Transcoding may be needed (codecs were added, masked or consumed, or
    /// `always transcode`).
    pub transcoding: bool,
}

/// Applies the `codec` options of an offer to one media section's codecs; unusable
/// `transcode` entries are appended to `ignored`.
pub(super) fn offer_codecs(
    codecs: &[Codec],
    opts: &CodecOptions,
    always: bool,
    ignored: &mut Vec<String>,
) -> OfferCodecs {
    let strip_only = CodecOptions {
        strip: opts.strip.clone(),
        except: opts.except.clone(),
        offer: opts.offer.clone(),
        ..CodecOptions::default()
    };
    let offerer = sdp::remove_codecs(codecs, &strip_only);
    let mut answerer = sdp::remove_codecs(codecs, opts);
    let masked = !opts.mask.is_empty() || !opts.consume.is_empty();
    let mut used: Vec<u8> = codecs.iter().map(|c| c.payload_type).collect();
    let mut added: Vec<Codec> = Vec::new();
    for (i, spec) in opts.transcode.iter().enumerate() {
        if i >= MAX_SPECS {
            ignored.push(format!("{} more", opts.transcode.len() - MAX_SPECS));
            break;
        }
        let Some((mut codec, static_pt)) = parse_spec(spec) else {
            if !ignored.iter().any(|s| s.eq_ignore_ascii_case(spec)) {
                ignored.push(spec.clone());
            }
            continue;
        };
        if answerer
            .iter()
            .chain(&added)
            .any(|c| same_format(c, &codec))
        {
            continue;
        }
        let pt = match static_pt.filter(|pt| !used.contains(pt)) {
            Some(pt) => pt,
            None => match free_dynamic(&used) {
                Some(pt) => pt,
                None => {
                    ignored.push(format!("{spec} (no free payload type)"));
                    continue;
                }
            },
        };
        codec.payload_type = pt;
        used.push(pt);
        added.push(codec);
    }
    // Supplementary codecs for the new clock rates, when the offer still has them.
    let had_cn = answerer.iter().any(is_cn);
    let had_te = answerer.iter().any(is_te);
    let mut extra: Vec<Codec> = Vec::new();
    for clock in added
        .iter()
        .filter(|c| !c.is_supplemental())
        .map(|c| c.clock_rate)
        .collect::<Vec<_>>()
    {
        for (wanted, name, fmtp) in [
            (had_cn, "CN", None),
            (had_te, "telephone-event", Some("0-15")),
        ] {
            let present = answerer
                .iter()
                .chain(&added)
                .chain(&extra)
                .any(|c| c.name.eq_ignore_ascii_case(name) && c.clock_rate == clock);
            if !wanted || present {
                continue;
            }
            let Some(pt) = free_dynamic(&used) else {
                continue;
            };
            used.push(pt);
            extra.push(Codec {
                payload_type: pt,
                name: name.to_owned(),
                clock_rate: clock,
                channels: 1,
                fmtp: fmtp.map(str::to_owned),
                rtcp_fb: Vec::new(),
            });
        }
    }
    let transcoding = always || !added.is_empty() || masked;
    if added.is_empty() {
        // Nothing to transcode to: exactly what the options do without transcoding.
        return OfferCodecs {
            answerer: sdp::apply_codec_options(codecs, opts).codecs,
            offerer: if opts.strip.is_empty() {
                codecs.to_vec()
            } else {
                sdp::apply_codec_options(codecs, &strip_only).codecs
            },
            transcoding,
        };
    }
    // telephone-event and CN stay only with a primary codec of their clock rate.
    let primaries: Vec<u32> = answerer
        .iter()
        .chain(&added)
        .filter(|c| !c.is_supplemental())
        .map(|c| c.clock_rate)
        .collect();
    answerer.retain(|c| !c.is_supplemental() || primaries.contains(&c.clock_rate));
    {
        let at = answerer
            .iter()
            .position(|c| !c.is_supplemental())
            .map_or(0, |i| i + 1);
        let insert: Vec<Codec> = added.into_iter().chain(extra).collect();
        answerer.splice(at..at, insert);
    }
    OfferCodecs {
        answerer,
        offerer,
        transcoding,
    }
}

/// The decision for one media section once the answer is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AnswerCodecs {
    /// The codecs to put in the SDP sent to the offerer.
    pub to_offerer: Vec<Codec>,
    /// `Some` when the engine must transcode: (offerer side, answerer side).
    pub sides: Option<(SideCodecs, SideCodecs)>,
}

/// The telephone-event payload type of `codecs`, preferring the clock rate of `primary`.
fn te_for(codecs: &[Codec], primary: &Codec) -> Option<u8> {
    codecs
        .iter()
        .filter(|c| is_te(c))
        .find(|c| c.clock_rate == primary.clock_rate)
        .or_else(|| codecs.iter().find(|c| is_te(c)))
        .map(|c| c.payload_type)
}

/// Packet times for the engine's output: (to the offerer, to the answerer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Ptimes {
    /// Towards the offerer.
    pub offerer: Option<u32>,
    /// Towards the answerer.
    pub answerer: Option<u32>,
}

/// Decides relay or transcoding for one media section: `offerer` are the codecs the relay
/// accepts from the offerer, `answer` the
/// answerer's codecs (already limited to what was offered to it).
pub(super) fn answer_codecs(
    offerer: &[Codec],
    answer: &[Codec],
    always: bool,
    ptimes: Ptimes,
) -> AnswerCodecs {
    let relay = |answer: &[Codec]| {
        let own: Vec<Codec> = answer
            .iter()
            .filter(|c| offerer.iter().any(|o| o.payload_type == c.payload_type))
            .cloned()
            .collect();
        AnswerCodecs {
            to_offerer: if own.is_empty() { answer.to_vec() } else { own },
            sides: None,
        }
    };
    let Some(ans_primary) = answer.iter().find(|c| !c.is_supplemental()) else {
        return relay(answer);
    };
    let shared = offerer
        .iter()
        .any(|o| o.payload_type == ans_primary.payload_type && same_format(o, ans_primary));
    let ans_te = te_for(answer, ans_primary);
    let te_fits = ans_te.is_none_or(|pt| offerer.iter().any(|o| o.payload_type == pt && is_te(o)));
    if shared && te_fits && !always {
        return relay(answer);
    }
    let Some(off_send) = offerer
        .iter()
        .find(|c| !c.is_supplemental() && is_transcodable(c))
    else {
        return relay(answer);
    };
    if !is_transcodable(ans_primary) {
        return relay(answer);
    }
    let off_te = if ans_te.is_some() {
        te_for(offerer, off_send)
    } else {
        None
    };
    let mut to_offerer = vec![off_send.clone()];
    if let Some(pt) = off_te {
        if let Some(te) = offerer.iter().find(|c| c.payload_type == pt) {
            to_offerer.push(te.clone());
        }
    }
    let recv = |codecs: &[Codec]| -> Vec<Codec> {
        codecs
            .iter()
            .filter(|c| !c.is_supplemental() && is_transcodable(c))
            .cloned()
            .collect()
    };
    let offerer_side = SideCodecs {
        recv: recv(offerer),
        send: off_send.clone(),
        recv_events: off_te,
        send_events: off_te,
        ptime_ms: ptimes.offerer,
    };
    let answerer_side = SideCodecs {
        recv: recv(answer),
        send: ans_primary.clone(),
        recv_events: ans_te,
        send_events: ans_te,
        ptime_ms: ptimes.answerer,
    };
    AnswerCodecs {
        to_offerer,
        sides: Some((offerer_side, answerer_side)),
    }
}

/// The [`SideCodecs`] for a party that is sent `codecs` (a subscriber): the first
/// transcodable primary codec, or the first primary codec.
pub(super) fn side_for(codecs: &[Codec], ptime: Option<u32>) -> Option<SideCodecs> {
    let send = codecs
        .iter()
        .find(|c| !c.is_supplemental() && is_transcodable(c))
        .or_else(|| codecs.iter().find(|c| !c.is_supplemental()))?;
    let te = te_for(codecs, send);
    Some(SideCodecs {
        recv: codecs
            .iter()
            .filter(|c| !c.is_supplemental())
            .cloned()
            .collect(),
        send: send.clone(),
        recv_events: te,
        send_events: te,
        ptime_ms: ptime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(pt: u8, name: &str, clock: u32, ch: u16) -> Codec {
        Codec {
            payload_type: pt,
            name: name.to_owned(),
            clock_rate: clock,
            channels: ch,
            fmtp: None,
            rtcp_fb: Vec::new(),
        }
    }

    fn pts(c: &[Codec]) -> Vec<u8> {
        c.iter().map(|c| c.payload_type).collect()
    }

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn offer_orders_like_rtpengine() {
        let offer = vec![
            codec(9, "G722", 8000, 1),
            codec(101, "telephone-event", 8000, 1),
            codec(8, "PCMA", 8000, 1),
            codec(13, "CN", 8000, 1),
        ];
        let opts = CodecOptions {
            transcode: v(&["PCMU", "opus"]),
            ..CodecOptions::default()
        };
        let mut ignored = Vec::new();
        let o = offer_codecs(&offer, &opts, false, &mut ignored);
        assert_eq!(pts(&o.answerer), [9, 0, 96, 97, 98, 101, 8, 13]);
        assert_eq!(o.answerer[3].name, "CN");
        assert_eq!(o.answerer[4].fmtp.as_deref(), Some("0-15"));
        assert!(o.transcoding && ignored.is_empty());
    }

    #[test]
    fn specs() {
        assert!(parse_spec("opus").is_some());
        assert!(parse_spec("L16/16000").is_some());
        assert!(parse_spec("L16/44100").is_none());
        assert!(parse_spec("G722/8000/1/64000").is_some());
        assert!(parse_spec("G729").is_none());
        assert!(parse_spec("PCMU/8000/1/64/9").is_none());
        assert_eq!(parse_spec("pcma").map(|c| c.1), Some(Some(8)));
    }
}
