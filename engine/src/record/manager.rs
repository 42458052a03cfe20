//! The control plane's side of recording: which recordings run on which call, turning
//! `record.*` requests and NG recording commands into a setup for the recorder and a
//! [`TapOp`] for the call's worker.
//!
//! Owned by the control task. A start sends the setup to the recorder first, then the start
//! to the worker (whose mark reaches the recorder through the ring, after the setup). A
//! recording leaves the table when the recorder or store reports it stopped or failed.

use std::collections::HashMap;

use serde_json::{Map, Value};
use switchboard_proto::sdp::Codec;
use switchboard_proto::session::RecordingLeg;

use super::ring::{StopReason, TapOp};
use super::{
    CodecEntry, EventKind, Format, Layout, LegSetup, Mode, RecorderCommand, RecorderEvent,
    RecordingId, RecordingService, RecordingSetup, name, wall_micros,
};
use crate::control::native::{ErrorCode, OpError};
use crate::worker::{Command, WorkerHandle};

/// Most recordings running on one call.
pub const MAX_PER_CALL: usize = 8;
/// Largest metadata accepted, serialized.
pub const MAX_METADATA: usize = 16 * 1024;
/// Longest agent or queue name.
const MAX_LABEL: usize = 256;

/// A native `record.start`.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    /// Record only the leg with this tag.
    pub leg: Option<String>,
    /// The customer's tag (left channel in stereo); the caller by default.
    pub customer: Option<String>,
    /// Mode (default from the configuration).
    pub mode: Option<Mode>,
    /// Format (default from the configuration).
    pub format: Option<Format>,
    /// Metadata object.
    pub metadata: Map<String, Value>,
    /// File name pattern (default from the configuration).
    pub name: Option<String>,
}

/// Which recordings a pause, resume or stop applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One recording.
    Recording(RecordingId),
    /// Every recording of a call.
    Call(String),
}

/// A parsed `record.*` request.
#[derive(Debug, Clone)]
pub enum NativeRecord {
    /// `record.start`.
    Start {
        /// The call.
        call: String,
        /// The rest.
        request: Box<StartRequest>,
    },
    /// `record.pause`.
    Pause(Target),
    /// `record.resume`.
    Resume(Target),
    /// `record.stop`.
    Stop(Target),
}

fn bad(message: impl Into<String>) -> OpError {
    OpError::new(ErrorCode::BadRequest, message)
}

fn opt_str<'a>(req: &'a Value, key: &str) -> Result<Option<&'a str>, OpError> {
    match req.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 1024 => Ok(Some(s)),
        Some(_) => Err(bad(format!(
            "`{key}` must be a string of 1 to 1024 characters"
        ))),
    }
}

fn target(req: &Value) -> Result<Target, OpError> {
    match (opt_str(req, "recording")?, opt_str(req, "call")?) {
        (Some(id), _) => RecordingId::parse(id)
            .map(Target::Recording)
            .ok_or_else(|| bad("`recording` is not a recording id")),
        (None, Some(call)) => Ok(Target::Call(call.to_owned())),
        (None, None) => Err(bad("give `recording` or `call`")),
    }
}

impl NativeRecord {
    /// Parses `record.start`, `record.pause`, `record.resume` or `record.stop`.
    pub fn parse(op: &str, req: &Value) -> Result<Self, OpError> {
        Ok(match op {
            "record.start" => {
                let call =
                    opt_str(req, "call")?.ok_or_else(|| bad("missing string field `call`"))?;
                let mut r = StartRequest {
                    leg: opt_str(req, "leg")?.map(str::to_owned),
                    customer: opt_str(req, "customer")?.map(str::to_owned),
                    ..StartRequest::default()
                };
                if let Some(m) = opt_str(req, "mode")? {
                    r.mode = Some(Mode::parse(m).ok_or_else(|| {
                        bad(format!("unknown mode `{m}`: stereo, mixed or per-leg"))
                    })?);
                }
                if let Some(f) = opt_str(req, "format")? {
                    r.format = Some(Format::parse(f).ok_or_else(|| {
                        bad(format!(
                            "unknown format `{f}`: wav, wav-ulaw, wav-alaw or opus"
                        ))
                    })?);
                }
                if let Some(n) = opt_str(req, "name")? {
                    name::check_pattern(n).map_err(bad)?;
                    r.name = Some(n.to_owned());
                }
                match req.get("metadata") {
                    None | Some(Value::Null) => {}
                    Some(Value::Object(m)) => r.metadata = m.clone(),
                    Some(_) => return Err(bad("`metadata` must be an object")),
                }
                for key in ["agent", "queue"] {
                    if let Some(v) = opt_str(req, key)? {
                        r.metadata
                            .insert(key.to_owned(), Value::String(v.to_owned()));
                    }
                }
                check_metadata(&r.metadata)?;
                NativeRecord::Start {
                    call: call.to_owned(),
                    request: Box::new(r),
                }
            }
            "record.pause" => NativeRecord::Pause(target(req)?),
            "record.resume" => NativeRecord::Resume(target(req)?),
            "record.stop" => NativeRecord::Stop(target(req)?),
            other => {
                return Err(OpError::new(
                    ErrorCode::UnknownOp,
                    format!("unknown op `{other}`"),
                ));
            }
        })
    }
}

fn check_metadata(m: &Map<String, Value>) -> Result<(), OpError> {
    let size = Value::Object(m.clone()).to_string().len();
    if size > MAX_METADATA {
        return Err(bad(format!(
            "metadata of {size} bytes is larger than {MAX_METADATA}"
        )));
    }
    for key in ["agent", "queue"] {
        match m.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.len() <= MAX_LABEL => {}
            Some(_) => {
                return Err(bad(format!(
                    "metadata `{key}` must be a string of at most {MAX_LABEL} characters"
                )));
            }
        }
    }
    Ok(())
}

/// Parses NG `metadata`: rtpengine's `key:value|key:value` convention becomes an object;
/// anything else is kept whole under `ng`.
#[must_use]
pub fn parse_ng_metadata(raw: &str) -> Map<String, Value> {
    let mut m = Map::new();
    let raw = raw.trim();
    if raw.is_empty() {
        return m;
    }
    let pairs: Option<Vec<(&str, &str)>> = raw
        .split('|')
        .map(|p| p.split_once(':').map(|(k, v)| (k.trim(), v.trim())))
        .collect();
    match pairs {
        Some(pairs) if pairs.iter().all(|(k, _)| !k.is_empty()) => {
            for (k, v) in pairs {
                m.insert(k.to_owned(), Value::String(v.to_owned()));
            }
        }
        _ => {
            m.insert("ng".to_owned(), Value::String(raw.to_owned()));
        }
    }
    m
}

fn label(m: &Map<String, Value>, key: &str) -> Option<String> {
    m.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// A call as the control task knows it.
#[derive(Debug, Clone, Copy)]
pub struct CallRef<'a> {
    /// NG call-id.
    pub call_id: &'a str,
    /// The worker's call key.
    pub key: u64,
    /// The worker owning it.
    pub worker: usize,
}

#[derive(Debug)]
struct Active {
    id: RecordingId,
    call_id: String,
    call_key: u64,
    worker: usize,
    paused: bool,
    stopping: bool,
    metadata: Map<String, Value>,
}

/// Pause, resume or stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Pause.
    Pause,
    /// Resume.
    Resume,
    /// Stop.
    Stop,
}

/// The table of running recordings.
#[derive(Debug)]
pub struct Manager {
    service: RecordingService,
    next_rec: u32,
    active: HashMap<u32, Active>,
}

fn is_wideband(c: &Codec) -> bool {
    let n = c.name.to_ascii_lowercase();
    n == "g722" || n == "opus" || (n == "l16" && c.clock_rate > 8000)
}

fn is_audio(c: &Codec) -> bool {
    let n = c.name.to_ascii_lowercase();
    n != "telephone-event" && n != "cn" && n != "red" && n != "ulpfec"
}

impl Manager {
    /// An empty table.
    #[must_use]
    pub fn new(service: RecordingService) -> Self {
        Manager {
            service,
            next_rec: 1,
            active: HashMap::new(),
        }
    }

    /// Ids of the running recordings of a call.
    #[must_use]
    pub fn recordings_of(&self, call_id: &str) -> Vec<RecordingId> {
        let mut v: Vec<RecordingId> = self
            .active
            .values()
            .filter(|a| a.call_id == call_id && !a.stopping)
            .map(|a| a.id.clone())
            .collect();
        v.sort();
        v
    }

    /// Whether a call has running recordings, and whether any of them is paused.
    #[must_use]
    pub fn state_of(&self, call_id: &str) -> (bool, bool) {
        let mut any = false;
        let mut paused = false;
        for a in self
            .active
            .values()
            .filter(|a| a.call_id == call_id && !a.stopping)
        {
            any = true;
            paused |= a.paused;
        }
        (any, paused)
    }

    /// Starts recording `call`; returns the ids (one per file).
    pub fn start(
        &mut self,
        call: CallRef<'_>,
        legs: &[RecordingLeg],
        req: StartRequest,
        workers: &[WorkerHandle],
    ) -> Result<Vec<RecordingId>, OpError> {
        if legs.is_empty() {
            return Err(bad(format!(
                "call `{}` has no audio media to record yet",
                call.call_id
            )));
        }
        let running = self
            .active
            .values()
            .filter(|a| a.call_id == call.call_id && !a.stopping)
            .count();
        let config = self.service.config();
        let mode = req.mode.unwrap_or(config.mode);
        let files = match (&req.leg, mode) {
            (Some(_), _) => 1,
            (None, Mode::PerLeg) => legs.len(),
            (None, _) => 1,
        };
        if running + files > MAX_PER_CALL {
            return Err(bad(format!(
                "call `{}` would have more than {MAX_PER_CALL} recordings",
                call.call_id
            )));
        }
        let Some(worker) = workers.get(call.worker) else {
            return Err(OpError::new(
                ErrorCode::Unavailable,
                "the call's worker is gone",
            ));
        };
        let customer = match &req.customer {
            Some(tag) => legs.iter().position(|l| l.tag == *tag).ok_or_else(|| {
                OpError::new(ErrorCode::NotFound, format!("no leg `{tag}` in the call"))
            })?,
            None => legs.iter().position(|l| l.caller).unwrap_or(0),
        };
        let format = req.format.unwrap_or(config.format);
        let rate = if format.is_narrowband_only() {
            8000
        } else if legs.iter().any(|l| {
            l.codecs
                .iter()
                .find(|c| is_audio(c))
                .is_some_and(is_wideband)
        }) {
            16000
        } else {
            8000
        };
        let all_codecs: Vec<CodecEntry> = legs
            .iter()
            .flat_map(|l| l.codecs.iter())
            .map(|c| CodecEntry {
                pt: c.payload_type,
                name: c.name.clone(),
                clock: c.clock_rate,
                channels: c.channels,
            })
            .collect();
        let leg_setup = |i: usize, l: &RecordingLeg| {
            let mut codecs: Vec<CodecEntry> = l
                .codecs
                .iter()
                .map(|c| CodecEntry {
                    pt: c.payload_type,
                    name: c.name.clone(),
                    clock: c.clock_rate,
                    channels: c.channels,
                })
                .collect();
            for c in &all_codecs {
                if !codecs.iter().any(|x| x.pt == c.pt) {
                    codecs.push(c.clone());
                }
            }
            LegSetup {
                key: u32::from(l.local.rtp_port),
                tag: l.tag.clone(),
                label: l.label.clone(),
                role: if i == customer {
                    "customer"
                } else if legs.len() == 2 {
                    "agent"
                } else {
                    "party"
                },
                codecs,
            }
        };
        let leg_name = |i: usize, l: &RecordingLeg| {
            if l.tag.is_empty() {
                format!("leg{i}")
            } else {
                l.tag.clone()
            }
        };
        // (layout, legs, {leg} of the name)
        let plan: Vec<(Layout, Vec<LegSetup>, String)> = match (&req.leg, mode) {
            (Some(tag), _) => {
                let i = legs.iter().position(|l| l.tag == *tag).ok_or_else(|| {
                    OpError::new(ErrorCode::NotFound, format!("no leg `{tag}` in the call"))
                })?;
                vec![(
                    Layout::Single,
                    vec![leg_setup(i, &legs[i])],
                    leg_name(i, &legs[i]),
                )]
            }
            (None, Mode::PerLeg) => legs
                .iter()
                .enumerate()
                .map(|(i, l)| (Layout::Single, vec![leg_setup(i, l)], leg_name(i, l)))
                .collect(),
            (None, Mode::Stereo) => vec![(
                Layout::Stereo { left: customer },
                legs.iter()
                    .enumerate()
                    .map(|(i, l)| leg_setup(i, l))
                    .collect(),
                "all".to_owned(),
            )],
            (None, Mode::Mixed) => vec![(
                Layout::Mixed,
                legs.iter()
                    .enumerate()
                    .map(|(i, l)| leg_setup(i, l))
                    .collect(),
                "all".to_owned(),
            )],
        };
        let pattern = req.name.clone().unwrap_or_else(|| config.name.clone());
        let now_ms = wall_micros() / 1000;
        let mut ids = Vec::new();
        for (layout, legs, leg_name) in plan {
            let rec = self.next_rec;
            self.next_rec = self.next_rec.wrapping_add(1).max(1);
            let id = RecordingId::generate(now_ms);
            let keys: Vec<u32> = legs.iter().map(|l| l.key).collect();
            let setup = RecordingSetup {
                rec,
                id: id.clone(),
                call_key: call.key,
                call_id: call.call_id.to_owned(),
                layout,
                legs,
                format,
                rate,
                name: pattern.clone(),
                leg_name,
                metadata: Value::Object(req.metadata.clone()),
                agent: label(&req.metadata, "agent"),
                queue: label(&req.metadata, "queue"),
            };
            if !self
                .service
                .send(call.worker, RecorderCommand::Setup(Box::new(setup)))
            {
                return Err(OpError::new(ErrorCode::Unavailable, "the recorder is busy"));
            }
            if worker
                .send(Command::Record {
                    call: call.key,
                    op: TapOp::Start { rec, legs: keys },
                })
                .is_err()
            {
                self.service
                    .send(call.worker, RecorderCommand::Cancel { rec });
                return Err(OpError::new(
                    ErrorCode::Unavailable,
                    "the call's media worker is busy",
                ));
            }
            self.active.insert(
                rec,
                Active {
                    id: id.clone(),
                    call_id: call.call_id.to_owned(),
                    call_key: call.key,
                    worker: call.worker,
                    paused: false,
                    stopping: false,
                    metadata: req.metadata.clone(),
                },
            );
            ids.push(id);
        }
        Ok(ids)
    }

    /// Pauses, resumes or stops the recordings `target` names; returns their ids and the
    /// workers told.
    pub fn control(
        &mut self,
        target: &Target,
        op: Op,
        workers: &[WorkerHandle],
    ) -> Result<(Vec<RecordingId>, Vec<usize>), OpError> {
        let recs: Vec<u32> = self
            .active
            .iter()
            .filter(|(_, a)| {
                !a.stopping
                    && match target {
                        Target::Recording(id) => a.id == *id,
                        Target::Call(c) => a.call_id == *c,
                    }
            })
            .map(|(k, _)| *k)
            .collect();
        if recs.is_empty() {
            return Err(OpError::new(
                ErrorCode::NotFound,
                match target {
                    Target::Recording(id) => format!("no running recording `{id}`"),
                    Target::Call(c) => format!("no running recording of call `{c}`"),
                },
            ));
        }
        let mut ids = Vec::new();
        let mut touched = Vec::new();
        for rec in recs {
            let Some(a) = self.active.get_mut(&rec) else {
                continue;
            };
            let tap = match op {
                Op::Pause => TapOp::Pause { rec },
                Op::Resume => TapOp::Resume { rec },
                Op::Stop => TapOp::Stop {
                    rec,
                    reason: StopReason::Requested,
                },
            };
            let Some(w) = workers.get(a.worker) else {
                continue;
            };
            w.send(Command::Record {
                call: a.call_key,
                op: tap,
            })
            .map_err(|_| OpError::new(ErrorCode::Unavailable, "the call's media worker is busy"))?;
            match op {
                Op::Pause => a.paused = true,
                Op::Resume => a.paused = false,
                Op::Stop => a.stopping = true,
            }
            ids.push(a.id.clone());
            if !touched.contains(&a.worker) {
                touched.push(a.worker);
            }
        }
        ids.sort();
        Ok((ids, touched))
    }

    /// Merges NG metadata into the running recordings of a call.
    pub fn update_metadata(&mut self, call_id: &str, extra: &Map<String, Value>) {
        for (rec, a) in &mut self.active {
            if a.call_id != call_id || a.stopping {
                continue;
            }
            for (k, v) in extra {
                a.metadata.insert(k.clone(), v.clone());
            }
            self.service.send(
                a.worker,
                RecorderCommand::Metadata {
                    rec: *rec,
                    metadata: Value::Object(a.metadata.clone()),
                    agent: label(&a.metadata, "agent"),
                    queue: label(&a.metadata, "queue"),
                },
            );
        }
    }

    /// Follows the recorder's events: stopped and failed recordings leave the table.
    pub fn on_event(&mut self, ev: &RecorderEvent) {
        if matches!(ev.kind, EventKind::Stopped | EventKind::Failed) && ev.rec != 0 {
            self.active.remove(&ev.rec);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn native_requests_parse() {
        let r = NativeRecord::parse(
            "record.start",
            &json!({"call": "c1", "mode": "per-leg", "format": "opus", "name": "{call}-{id}",
                "metadata": {"agent": "a1", "ticket": 7}, "queue": "sales"}),
        )
        .unwrap();
        let NativeRecord::Start { call, request } = r else {
            panic!("not a start");
        };
        assert_eq!(call, "c1");
        assert_eq!(request.mode, Some(Mode::PerLeg));
        assert_eq!(request.format, Some(Format::Opus));
        assert_eq!(request.metadata["queue"], "sales");
        assert_eq!(request.metadata["ticket"], 7);
        for bad in [
            json!({}),
            json!({"call": 5}),
            json!({"call": "c", "mode": "quad"}),
            json!({"call": "c", "format": "mp3"}),
            json!({"call": "c", "metadata": "x"}),
            json!({"call": "c", "metadata": {"agent": 5}}),
            json!({"call": "c", "name": "../x"}),
            json!({"call": "c", "metadata": {"big": "x".repeat(MAX_METADATA)}}),
        ] {
            assert!(NativeRecord::parse("record.start", &bad).is_err(), "{bad}");
        }
        assert!(matches!(
            NativeRecord::parse("record.stop", &json!({"call": "c"})).unwrap(),
            NativeRecord::Stop(Target::Call(c)) if c == "c"
        ));
        assert!(NativeRecord::parse("record.pause", &json!({"recording": "nope"})).is_err());
        assert!(NativeRecord::parse("record.resume", &json!({})).is_err());
    }

    #[test]
    fn ng_metadata_convention() {
        let m = parse_ng_metadata("agent:a1|queue: sales |x:y:z");
        assert_eq!(m["agent"], "a1");
        assert_eq!(m["queue"], "sales");
        assert_eq!(m["x"], "y:z");
        assert_eq!(parse_ng_metadata("free text")["ng"], "free text");
        assert!(parse_ng_metadata(" ").is_empty());
    }
}
