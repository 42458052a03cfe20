//! The NG commands beyond offer and answer: subscriptions (`subscribe request`,
//! `subscribe answer`, `unsubscribe`), `connect`, and the media commands (`play media`,
//! `stop media`, `play DTMF`, `block DTMF`, `unblock DTMF`).
//!
//! Each checks the request against the call state and returns the reply and the
//! [`MediaCommand`] for the engine; only subscriptions change the call state (a subscriber is a
//! leg of the call with its own port pair). Error strings are rtpengine 10.5's.

use std::hash::{DefaultHasher, Hash, Hasher};

use crate::bencode::Value;
use crate::ng::{self, NgError, NgRequest};
use crate::sdp::{
    self, Codec, Direction, MediaRewrite, RewriteParams, RtcpAttr, SessionDescription,
};

use super::transcode::{self, is_transcodable, same_format};
use super::{
    Call, Ctx, Leg, LocalPair, Media, MediaCommand, Outcome, PortAllocator, PortError,
    PromptSource, Sessions, UnixMicros, absorb_sdp, add_leg, leg_index, rejected, side,
};

/// `play DTMF` duration bounds, ms.
const DTMF_DURATION_MS: std::ops::RangeInclusive<i64> = 1..=10_000;
/// Most repetitions of a prompt.
const MAX_REPEAT: i64 = 10_000;

/// A 64-hex-digit tag, like rtpengine's, derived from the call, a counter and the time
/// (unique within the call: checked by the caller).
fn generate_tag(call_id: &str, n: u64, wall: UnixMicros) -> String {
    let mut out = String::with_capacity(64);
    for round in 0u8..4 {
        let mut h = DefaultHasher::new();
        (call_id, n, wall.0, round).hash(&mut h);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// Removes a leg and renumbers the peer links of the others.
fn remove_leg(call: &mut Call, idx: usize) -> Leg {
    let leg = call.legs.remove(idx);
    for l in &mut call.legs {
        l.peer = match l.peer {
            Some(p) if p == idx => None,
            Some(p) if p > idx => Some(p - 1),
            other => other,
        };
    }
    leg
}

/// The DTMF digit of a `code` or `digit` value: `0`–`9`, `*`, `#`, `A`–`D`, or an RFC 4733
/// event number 0–15.
fn dtmf_digit(s: &str) -> Option<char> {
    let s = s.trim();
    let mut chars = s.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        let c = c.to_ascii_uppercase();
        if c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D') {
            return Some(c);
        }
        return None;
    }
    match s.parse::<u8>().ok()? {
        n @ 0..=9 => char::from_digit(u32::from(n), 10),
        10 => Some('*'),
        11 => Some('#'),
        n @ 12..=15 => Some(char::from(b'A' + (n - 12))),
        _ => None,
    }
}

/// The first audio RTP media section of a leg that has a pair and codecs.
fn audio_media(leg: &Leg) -> Option<(usize, &Media)> {
    leg.medias
        .iter()
        .enumerate()
        .find(|(_, m)| m.kind == "audio" && !m.opaque && m.local.is_some() && !m.codecs.is_empty())
}

impl Sessions {
    fn call_mut(&mut self, req: &NgRequest) -> Result<&mut Call, NgError> {
        let call_id = req.call_id.as_deref().ok_or(NgError::NoCallId)?;
        self.calls.get_mut(call_id).ok_or(NgError::UnknownCall)
    }

    fn call_ref(&self, req: &NgRequest) -> Result<&Call, NgError> {
        let call_id = req.call_id.as_deref().ok_or(NgError::NoCallId)?;
        self.calls.get(call_id).ok_or(NgError::UnknownCall)
    }

    /// `subscribe request`: a new leg that hears the selected parties, answered with a
    /// sendonly offer for it.
    pub(super) fn subscribe_request(
        &mut self,
        wall: UnixMicros,
        req: &NgRequest,
        ports: &mut dyn PortAllocator,
    ) -> Result<Outcome, NgError> {
        let config = self.config.clone();
        let seq = self.next_seq;
        let call = self.call_mut(req)?;
        let opts = &req.options;
        let mut sources: Vec<String> = Vec::new();
        if opts.flags.all {
            for l in call.legs.iter().filter(|l| !l.is_subscriber()) {
                if !l.tag.is_empty() && l.initialized && audio_media(l).is_some() {
                    sources.push(l.tag.clone());
                }
            }
        } else {
            for t in req.from_tag.iter().chain(&opts.from_tags) {
                let known = call
                    .legs
                    .iter()
                    .any(|l| l.tag == *t && !l.is_subscriber() && !t.is_empty());
                if !known {
                    return Err(NgError::NoSuchFromTag);
                }
                if !sources.contains(t) {
                    sources.push(t.clone());
                }
            }
        }
        if sources.is_empty() {
            return Err(NgError::NoMonologues);
        }
        let to_tag = match req.to_tag.as_deref().filter(|t| !t.is_empty()) {
            Some(t) if sources.iter().any(|s| s == t) => return Err(NgError::SameParty),
            Some(t) if leg_index(call, t).is_some() => return Err(NgError::TagInUse),
            Some(t) => t.to_owned(),
            None => {
                let mut n = u64::try_from(call.legs.len()).unwrap_or(0);
                loop {
                    let t = generate_tag(&call.id, seq.wrapping_add(n << 32), wall);
                    if leg_index(call, &t).is_none() {
                        break t;
                    }
                    n += 1;
                }
            }
        };
        let first = leg_index(call, &sources[0]).ok_or(NgError::NoSuchFromTag)?;
        let (src_index, src_media) = audio_media(&call.legs[first]).ok_or(NgError::NoMonologues)?;
        let codecs = src_media.codecs.clone();
        let ptime = src_media.ptime;
        let protocol = src_media.protocol.clone();
        let family = src_media
            .local
            .map_or(crate::ng::AddressFamily::Ip4, |p| p.family());
        let Some(codecs_side) = transcode::side_for(&codecs, ptime) else {
            return Err(NgError::NoMonologues);
        };
        let single_sdp = (sources.len() == 1)
            .then(|| call.legs[first].sdp_in.clone())
            .flatten();
        let ctx = Ctx {
            wall,
            req,
            opts,
            config: &config,
        };
        let leg_idx = add_leg(call, &to_tag, &ctx)?;
        let pair = match ports.allocate_pair(&call.id, family, None) {
            Ok(p) => p,
            Err(e) => {
                remove_leg(call, leg_idx);
                return Err(match e {
                    PortError::UnknownInterface(name) => NgError::Unsupported {
                        what: format!("unknown interface '{name}'"),
                    },
                    _ => NgError::OutOfPorts,
                });
            }
        };
        let sdp_out = subscription_sdp(
            single_sdp.as_deref(),
            src_index,
            &codecs,
            ptime,
            &protocol,
            pair,
            &to_tag,
        );
        let leg = &mut call.legs[leg_idx];
        leg.sources.clone_from(&sources);
        let mut media = Media::new(1, wall);
        media.kind = "audio".to_owned();
        media.protocol = protocol;
        media.local = Some(pair);
        media.codecs.clone_from(&codecs);
        media.offered = codecs;
        media.direction = Direction::RecvOnly;
        media.ptime = ptime;
        leg.medias.push(media);
        call.last_signal_wall = wall;
        let leg = &call.legs[leg_idx];
        let subscriber = side(leg, &leg.medias[0], pair);
        let mut reply = Value::dict().with("sdp", sdp_out);
        if sources.len() == 1 {
            reply.push("from-tag", sources[0].as_str());
        }
        reply.push(
            "from-tags",
            sources
                .iter()
                .map(|s| Value::from(s.as_str()))
                .collect::<Vec<_>>(),
        );
        reply.push("to-tag", to_tag.as_str());
        Ok(Outcome {
            reply: ng::ok_reply(reply, &[]),
            commands: vec![MediaCommand::Subscribe {
                call_id: call.id.clone(),
                subscriber,
                sources,
                codecs: codecs_side,
            }],
        })
    }

    /// `subscribe answer`: the subscriber's SDP.
    pub(super) fn subscribe_answer(
        &mut self,
        wall: UnixMicros,
        req: &NgRequest,
    ) -> Result<Outcome, NgError> {
        let config = self.config.clone();
        req.call_id.as_deref().ok_or(NgError::NoCallId)?;
        let to_tag = req.to_tag.as_deref().ok_or(NgError::NoToTag)?;
        let sdp_bytes = req
            .sdp
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or(NgError::NoSdp)?;
        let call = self.call_mut(req)?;
        let idx = leg_index(call, to_tag).ok_or(NgError::ToTagNotFound)?;
        if !call.legs[idx].is_subscriber() {
            return Err(NgError::SubscriptionAnswer);
        }
        let sdp = SessionDescription::parse(sdp_bytes).map_err(|_| NgError::SdpParse)?;
        let infos = sdp.media_info().map_err(|_| NgError::IncompleteSdp)?;
        let info = infos
            .iter()
            .find(|m| m.port != 0 && m.is_rtp())
            .ok_or(NgError::SubscriptionAnswer)?;
        let offered = call.legs[idx]
            .medias
            .first()
            .map(|m| m.offered.clone())
            .unwrap_or_default();
        let allow = req.options.flags.allow_transcoding;
        // The answer's codecs the relay offered (by format), or with `allow transcoding` any
        // the engine can encode.
        let codecs: Vec<Codec> = info
            .codecs
            .iter()
            .filter(|c| {
                offered.iter().any(|o| same_format(o, c))
                    || (allow && (is_transcodable(c) || c.is_supplemental()))
            })
            .cloned()
            .collect();
        let ptime = req.options.ptime.or(info.ptime);
        let codecs_side = transcode::side_for(&codecs, ptime).ok_or(NgError::SubscriptionAnswer)?;
        let ctx = Ctx {
            wall,
            req,
            opts: &req.options,
            config: &config,
        };
        let leg = &mut call.legs[idx];
        let Some(media) = leg.medias.first_mut() else {
            return Err(NgError::SubscriptionAnswer);
        };
        let local = media.local.ok_or(NgError::SubscriptionAnswer)?;
        let (kind, protocol) = (media.kind.clone(), media.protocol.clone());
        absorb_sdp(media, info, codecs, &ctx);
        media.kind = kind;
        media.protocol = protocol;
        media.rtcp_mux = info.rtcp_mux;
        leg.initialized = true;
        leg.sdp_in = Some(sdp.write());
        call.last_signal_wall = wall;
        let leg = &call.legs[idx];
        let subscriber = side(leg, &leg.medias[0], local);
        Ok(Outcome {
            reply: ng::ok_reply(Value::dict(), &[]),
            commands: vec![MediaCommand::SubscribeAnswer {
                call_id: call.id.clone(),
                subscriber,
                codecs: codecs_side,
            }],
        })
    }

    /// `unsubscribe`: the subscriber leaves and its pair is released. An unknown to-tag, or
    /// one already unsubscribed, is answered ok (as rtpengine does) with nothing to do.
    pub(super) fn unsubscribe(
        &mut self,
        req: &NgRequest,
        ports: &mut dyn PortAllocator,
    ) -> Result<Outcome, NgError> {
        req.call_id.as_deref().ok_or(NgError::NoCallId)?;
        let to_tag = req.to_tag.as_deref().ok_or(NgError::NoToTag)?;
        let call = self.call_mut(req)?;
        let Some(idx) = leg_index(call, to_tag).filter(|i| call.legs[*i].is_subscriber()) else {
            return Ok(Outcome::reply(ng::ok_reply(Value::dict(), &[])));
        };
        let leg = remove_leg(call, idx);
        let pairs: Vec<LocalPair> = leg.medias.iter().filter_map(|m| m.local).collect();
        for p in &pairs {
            ports.release_pair(&call.id, p);
        }
        Ok(Outcome {
            reply: ng::ok_reply(Value::dict(), &[]),
            commands: vec![MediaCommand::Unsubscribe {
                call_id: call.id.clone(),
                tag: leg.tag,
                pairs,
            }],
        })
    }

    /// `connect`: the from-tag party is heard by the to-tag party (both ways with
    /// `bidirectional`).
    pub(super) fn connect(&mut self, req: &NgRequest) -> Result<Outcome, NgError> {
        req.call_id.as_deref().ok_or(NgError::NoCallId)?;
        let from = req.from_tag.as_deref().ok_or(NgError::NoFromTag)?;
        let to = req.to_tag.as_deref().ok_or(NgError::NoToTag)?;
        let call = self.call_ref(req)?;
        if from == to {
            return Err(NgError::SameParty);
        }
        leg_index(call, from).ok_or(NgError::NoSuchFromTag)?;
        leg_index(call, to).ok_or(NgError::NoSuchToTag)?;
        Ok(Outcome {
            reply: ng::ok_reply(Value::dict(), &[]),
            commands: vec![MediaCommand::Connect {
                call_id: call.id.clone(),
                from: from.to_owned(),
                to: to.to_owned(),
                bidirectional: req.options.flags.bidirectional,
            }],
        })
    }

    /// `play media`: a prompt to the selected parties. The reply is ok; the engine adds
    /// `duration` once it has loaded the prompt (or replaces the reply with an error).
    pub(super) fn play_media(&mut self, req: &NgRequest) -> Result<Outcome, NgError> {
        let call = self.call_ref(req)?;
        let tags = select_parties(call, req)?.ok_or(NgError::NoParty)?;
        let o = &req.options;
        let source = if let Some(b) = o.blob.as_ref().filter(|b| !b.is_empty()) {
            PromptSource::Blob(b.clone())
        } else if let Some(f) = o.file.as_ref().filter(|f| !f.is_empty()) {
            PromptSource::File(f.clone())
        } else if o.db_id.is_some() {
            return Err(NgError::Unsupported {
                what: "play media from db-id".to_owned(),
            });
        } else {
            return Err(NgError::NoMediaFile);
        };
        let repeat = u32::try_from(o.repeat_times.unwrap_or(1).clamp(1, MAX_REPEAT)).unwrap_or(1);
        Ok(Outcome {
            reply: ng::ok_reply(Value::dict(), &[]),
            commands: vec![MediaCommand::PlayMedia {
                call_id: call.id.clone(),
                tags,
                source,
                repeat,
            }],
        })
    }

    /// `stop media`: stops prompts to the selected parties (every party without a selector).
    pub(super) fn stop_media(&mut self, req: &NgRequest) -> Result<Outcome, NgError> {
        let call = self.call_ref(req)?;
        let tags = select_parties(call, req)?.unwrap_or_default();
        Ok(Outcome {
            reply: ng::ok_reply(Value::dict(), &[]),
            commands: vec![MediaCommand::StopMedia {
                call_id: call.id.clone(),
                tags,
            }],
        })
    }

    /// `play DTMF`: as in rtpengine, the selected parties are the ones the digit seems to come
    /// from; the engine sends it to the parties that hear them.
    pub(super) fn play_dtmf(&mut self, req: &NgRequest) -> Result<Outcome, NgError> {
        let call = self.call_ref(req)?;
        let tags = select_parties(call, req)?.ok_or(NgError::NoParty)?;
        let o = &req.options;
        let digit = o
            .code
            .as_deref()
            .or(o.digit.as_deref())
            .and_then(dtmf_digit)
            .ok_or(NgError::DtmfCode)?;
        let duration = o.duration.unwrap_or(100);
        if !DTMF_DURATION_MS.contains(&duration) {
            return Err(NgError::InvalidValue {
                key: "duration".to_owned(),
                expected: "milliseconds in 1..=10000",
            });
        }
        let volume = o.volume.unwrap_or(-8).unsigned_abs().min(63);
        let volume_dbm0 = -i8::try_from(volume).unwrap_or(63);
        Ok(Outcome {
            reply: ng::ok_reply(Value::dict(), &[]),
            commands: vec![MediaCommand::PlayDtmf {
                call_id: call.id.clone(),
                tags,
                digit,
                duration_ms: u32::try_from(duration).unwrap_or(100),
                volume_dbm0,
            }],
        })
    }

    /// `block DTMF` / `unblock DTMF`: digits from the selected parties (every party without a
    /// selector).
    pub(super) fn block_dtmf(
        &mut self,
        req: &NgRequest,
        blocked: bool,
    ) -> Result<Outcome, NgError> {
        let call = self.call_ref(req)?;
        let tags = select_parties(call, req)?.unwrap_or_default();
        Ok(Outcome {
            reply: ng::ok_reply(Value::dict(), &[]),
            commands: vec![MediaCommand::BlockDtmf {
                call_id: call.id.clone(),
                tags,
                blocked,
            }],
        })
    }
}

/// The parties a media command selects: `Some(tags)` (empty with `all`: every party), `None`
/// without a selector. Unknown tags and labels are errors.
fn select_parties(call: &Call, req: &NgRequest) -> Result<Option<Vec<String>>, NgError> {
    let o = &req.options;
    if o.flags.all {
        return Ok(Some(Vec::new()));
    }
    let mut tags: Vec<String> = Vec::new();
    let mut push = |t: &str| {
        if !tags.iter().any(|x| x == t) {
            tags.push(t.to_owned());
        }
    };
    if let Some(t) = &req.from_tag {
        leg_index(call, t).ok_or(NgError::NoSuchFromTag)?;
        push(t);
    }
    for t in &o.from_tags {
        leg_index(call, t).ok_or(NgError::NoSuchFromTag)?;
        push(t);
    }
    if req.from_tag.is_none() && o.from_tags.is_empty() {
        if let Some(t) = &req.to_tag {
            leg_index(call, t).ok_or(NgError::NoSuchToTag)?;
            push(t);
        }
    }
    if let Some(label) = &o.label {
        let leg = call
            .legs
            .iter()
            .find(|l| l.label.as_deref() == Some(label.as_str()))
            .ok_or(NgError::NoSuchLabel)?;
        push(&leg.tag);
    }
    Ok((!tags.is_empty()).then_some(tags))
}

/// The sendonly offer for a subscriber: the source's own SDP rewritten (one source), or a
/// generated description with one audio section (several sources, mixed by the engine).
fn subscription_sdp(
    source_sdp: Option<&str>,
    media_index: usize,
    codecs: &[Codec],
    ptime: Option<u32>,
    protocol: &str,
    pair: LocalPair,
    tag: &str,
) -> String {
    let rewrite_for = |count: usize, index: usize| -> Vec<MediaRewrite> {
        (0..count)
            .map(|k| {
                if k == index {
                    MediaRewrite {
                        port: pair.rtp_port,
                        address: pair.address,
                        protocol: None,
                        codecs: Some(codecs.to_vec()),
                        direction: Direction::SendOnly,
                        rtcp: RtcpAttr::Port(pair.rtcp_port),
                        rtcp_mux: false,
                        ptime,
                    }
                } else {
                    rejected(pair.address)
                }
            })
            .collect()
    };
    let parsed = source_sdp
        .and_then(|s| SessionDescription::parse(s.as_bytes()).ok())
        .filter(|s| s.media.len() > media_index);
    let (desc, index) = match parsed {
        Some(d) => (d, media_index),
        None => {
            let mut h = DefaultHasher::new();
            tag.hash(&mut h);
            let id = h.finish() >> 1;
            let fam = crate::ng::AddressFamily::of(&pair.address).sdp_name();
            let pts: Vec<String> = codecs.iter().map(|c| c.payload_type.to_string()).collect();
            let text = format!(
                "v=0\r\no=- {id} {id} IN {fam} {addr}\r\ns=switchboard\r\nt=0 0\r\nm=audio {port} {protocol} {pts}\r\nc=IN {fam} {addr}\r\n",
                addr = pair.address,
                port = pair.rtp_port,
                pts = pts.join(" "),
            );
            match SessionDescription::parse(text.as_bytes()) {
                Ok(d) => (d, 0),
                // Unreachable for a well-formed address and protocol; answer an empty body.
                Err(_) => return String::new(),
            }
        }
    };
    let params = RewriteParams {
        address: pair.address,
        media: rewrite_for(desc.media.len(), index),
        replace_origin: false,
        sdp_version: None,
        loop_protect: None,
        zero_address: false,
        strip_extmap: false,
    };
    sdp::rewrite(&desc, &params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtmf_digits() {
        assert_eq!(dtmf_digit("5"), Some('5'));
        assert_eq!(dtmf_digit("#"), Some('#'));
        assert_eq!(dtmf_digit("a"), Some('A'));
        assert_eq!(dtmf_digit("10"), Some('*'));
        assert_eq!(dtmf_digit("12"), Some('A'));
        assert_eq!(dtmf_digit("16"), None);
        assert_eq!(dtmf_digit("X"), None);
        assert_eq!(dtmf_digit(""), None);
    }

    #[test]
    fn tags_are_64_hex() {
        let t = generate_tag("c", 1, UnixMicros(5));
        assert_eq!(t.len(), 64);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(t, generate_tag("c", 2, UnixMicros(5)));
    }
}
