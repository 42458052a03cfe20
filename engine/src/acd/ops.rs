//! Parsing and checking of the ACD's native control requests, on the connection's task
//! (never on the shard), and the staffing forecasts.
//!
//! Definitions (`queue.create`, `agent.create`, `task.enqueue`) are read with serde, unknown
//! fields refused, then range-checked here; what needs the router (skill expressions, skill
//! names, ids that must exist) is checked by the shard. Every refusal is an [`OpError`] with
//! a stable code and a message naming the field.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use switchboard_router::staffing::{self, Workload};
use switchboard_router::{
    AgentId, Channel, EmotionPolicy, ExitAction, MAX_STEPS, PerChannel, QueueId, Status, Strategy,
    TaskId,
};

use crate::control::native::{ErrorCode, OpError};

/// The longest duration any `…_ms` field accepts: 365 days.
pub const MAX_DURATION_MS: u64 = 365 * 24 * 3600 * 1000;
/// The longest name, reason, call-id or leg tag, in bytes.
pub const MAX_NAME: usize = 256;
/// The longest skill expression, in bytes.
pub const MAX_EXPR_TEXT: usize = 1024;
/// The largest context blob, as JSON text, in bytes.
pub const MAX_CONTEXT: usize = 32 * 1024;
/// The largest agent `attributes` object, as JSON text, in bytes.
pub const MAX_ATTRIBUTES: usize = 4 * 1024;
/// The most customer-value tags on a task or in a queue's mapping.
pub const MAX_TAGS: usize = 64;
/// The most skills one agent lists.
pub const MAX_AGENT_SKILLS: usize = 256;
/// The largest offered load `forecast.staffing` accepts, in erlangs.
pub const MAX_FORECAST_ERLANGS: f64 = 50_000.0;

/// Why an agent is away after an engine restart, until its desk sets it available again.
pub const RESTART_AWAY_REASON: &str = "engine_restart";
/// The tenant of a request that names none.
pub const DEFAULT_TENANT: &str = "default";
/// The longest tenant name, in bytes.
pub const MAX_TENANT: usize = 64;

/// Checks a tenant name: 1 to [`MAX_TENANT`] characters of `A-Z a-z 0-9 _ . -`.
///
/// # Errors
/// `bad_request` naming the problem.
pub fn check_tenant(name: &str) -> Result<(), OpError> {
    if name.is_empty() || name.len() > MAX_TENANT {
        return Err(bad(format!(
            "`tenant` is 1 to {MAX_TENANT} characters, got {}",
            name.len()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(bad(format!(
            "`tenant` may hold only A-Z, a-z, 0-9, `_`, `.` and `-`, not {c:?}"
        )));
    }
    Ok(())
}

/// The request's tenant (removed from `map`), checked; [`DEFAULT_TENANT`] when absent.
fn take_tenant(map: &mut Map<String, Value>) -> Result<Arc<str>, OpError> {
    match map.remove("tenant") {
        None => Ok(Arc::from(DEFAULT_TENANT)),
        Some(Value::String(s)) => {
            check_tenant(&s)?;
            Ok(Arc::from(s))
        }
        Some(v) => Err(bad(format!("`tenant` must be a string, got {}", short(&v)))),
    }
}

pub(crate) fn bad(message: impl Into<String>) -> OpError {
    OpError::new(ErrorCode::BadRequest, message)
}

/// One typed request to the shard (or, for [`Request::Forecast`], to a blocking thread).
#[derive(Debug)]
pub(crate) enum Request {
    QueueCreate(Box<QueueDef>),
    QueueUpdate {
        queue: QueueId,
        patch: Map<String, Value>,
    },
    QueueDelete(QueueId),
    QueueGet(QueueId),
    QueueList,
    QueueStats {
        queue: QueueId,
        channel: Channel,
        priority: u32,
    },
    AgentCreate(Box<AgentDef>),
    AgentUpdate {
        agent: AgentId,
        patch: Map<String, Value>,
    },
    AgentStatus {
        agent: AgentId,
        status: Status,
    },
    AgentGet(AgentId),
    AgentList,
    AgentDelete(AgentId),
    AgentEndWrapUp(AgentId),
    TaskEnqueue(Box<TaskDef>),
    TaskUpdate(TaskUpdate),
    TaskCancel(TaskId),
    TaskComplete(TaskId),
    TaskGet(TaskId),
    OfferAccept {
        task: TaskId,
        agent: AgentId,
        /// The agent's leg for an engine-side bridge (`call`, `leg`), when given.
        leg: Option<(String, String)>,
    },
    OfferReject {
        task: TaskId,
        agent: AgentId,
    },
    Forecast(ForecastReq),
    /// A call the engine knew has ended (hang-up, media timeout, deletion).
    CallGone(String),
    /// Stop the shard.
    Shutdown,
}

/// One routing step of a queue definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    /// Skill expression (`billing>=3 & english`); `*` matches everyone.
    #[serde(default = "any_skills")]
    pub skills: String,
    /// How long the step lasts; absent on the last step means until the task leaves.
    #[serde(default)]
    pub expires_after_ms: Option<u64>,
}

fn any_skills() -> String {
    "*".to_owned()
}

fn default_steps() -> Vec<StepDef> {
    vec![StepDef {
        skills: any_skills(),
        expires_after_ms: None,
    }]
}

const fn d_service_level() -> u64 {
    20_000
}
const fn d_aging() -> u32 {
    1
}
const fn d_offer_timeout() -> u64 {
    20_000
}
const fn d_reject_delay() -> u64 {
    5_000
}

/// A queue definition, as `queue.create` takes it and `queue.get` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueDef {
    /// Queue id.
    pub queue: u64,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Routing steps, widening over the wait.
    #[serde(default = "default_steps")]
    pub steps: Vec<StepDef>,
    /// Shorthand for one step with this expression (replaces `steps`).
    #[serde(default, skip_serializing)]
    pub skills: Option<String>,
    /// Agent selection.
    #[serde(default)]
    pub strategy: Strategy,
    /// Service-level target T.
    #[serde(default = "d_service_level")]
    pub service_level_ms: u64,
    /// Priority points gained per minute of waiting.
    #[serde(default = "d_aging")]
    pub aging_per_minute: u32,
    /// Maximum wait in this queue.
    #[serde(default)]
    pub max_wait_ms: Option<u64>,
    /// What happens at the maximum wait (default `leave`).
    #[serde(default)]
    pub max_wait_action: Option<ExitAction>,
    /// What happens when no eligible agent is logged in (absent: wait).
    #[serde(default)]
    pub when_no_agents: Option<ExitAction>,
    /// Most tasks waiting or offered.
    #[serde(default)]
    pub max_length: Option<u32>,
    /// Wrap-up after each task.
    #[serde(default)]
    pub wrap_up_ms: u64,
    /// How long an offer may stay unanswered.
    #[serde(default = "d_offer_timeout")]
    pub offer_timeout_ms: u64,
    /// No offers from this queue for an agent that rejected or missed one, for this long.
    #[serde(default = "d_reject_delay")]
    pub reject_delay_ms: u64,
    /// Layer 3: agitated customers to soothing agents.
    #[serde(default)]
    pub emotion: Option<EmotionDef>,
    /// Customer-value tags and their priority points.
    #[serde(default)]
    pub value_tags: BTreeMap<String, u32>,
    /// While a voice task waits here, the engine runs conversation analytics on its call
    /// (the task's `leg` as the caller) and feeds the caller's live agitation to the task.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub agitation_from_analytics: bool,
}

/// Layer 3 of a queue definition (the router's [`EmotionPolicy`], with the threshold kept
/// as given).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmotionDef {
    /// A task whose agitation is above this (0..=1) is agitated.
    pub threshold: f64,
    /// Only agents with at least this `soothing` (1..=5) take it while the policy applies.
    pub min_soothing: u8,
    /// How long the policy applies, from the moment the task is first seen agitated.
    pub window_ms: u64,
}

impl EmotionDef {
    /// The router's form.
    #[must_use]
    pub fn policy(&self) -> EmotionPolicy {
        EmotionPolicy {
            threshold: self.threshold as f32,
            min_soothing: self.min_soothing,
            window_ms: self.window_ms,
        }
    }
}

fn check_ms(field: &str, v: u64) -> Result<(), OpError> {
    if v > MAX_DURATION_MS {
        return Err(bad(format!(
            "`{field}` = {v} is more than {MAX_DURATION_MS} ms (365 days)"
        )));
    }
    Ok(())
}

fn check_text(field: &str, v: &str, max: usize) -> Result<(), OpError> {
    if v.len() > max {
        return Err(bad(format!(
            "`{field}` is {} bytes long, at most {max}",
            v.len()
        )));
    }
    Ok(())
}

fn check_tag(field: &str, tag: &str) -> Result<(), OpError> {
    if tag.is_empty() || tag.len() > 64 {
        return Err(bad(format!(
            "`{field}`: a tag is 1 to 64 bytes, got {}",
            tag.len()
        )));
    }
    Ok(())
}

impl QueueDef {
    /// Range checks that need no router; folds the `skills` shorthand into `steps`.
    fn checked(mut self) -> Result<Self, OpError> {
        if let Some(n) = &self.name {
            check_text("name", n, MAX_NAME)?;
        }
        if let Some(skills) = self.skills.take() {
            self.steps = vec![StepDef {
                skills,
                expires_after_ms: None,
            }];
        }
        if self.steps.is_empty() {
            return Err(bad("`steps` needs at least one routing step"));
        }
        if self.steps.len() > MAX_STEPS {
            return Err(bad(format!(
                "`steps` has {} steps, at most {MAX_STEPS}",
                self.steps.len()
            )));
        }
        for (i, s) in self.steps.iter().enumerate() {
            check_text(&format!("steps[{i}].skills"), &s.skills, MAX_EXPR_TEXT)?;
            if let Some(ms) = s.expires_after_ms {
                check_ms(&format!("steps[{i}].expires_after_ms"), ms)?;
            }
        }
        check_ms("service_level_ms", self.service_level_ms)?;
        if let Some(ms) = self.max_wait_ms {
            check_ms("max_wait_ms", ms)?;
        } else if self.max_wait_action.is_some() {
            return Err(bad("`max_wait_action` needs `max_wait_ms`"));
        }
        check_ms("wrap_up_ms", self.wrap_up_ms)?;
        check_ms("offer_timeout_ms", self.offer_timeout_ms)?;
        check_ms("reject_delay_ms", self.reject_delay_ms)?;
        if let Some(e) = &self.emotion {
            if !(e.threshold.is_finite() && (0.0..=1.0).contains(&e.threshold)) {
                return Err(bad("`emotion.threshold` must be a number in 0..=1"));
            }
            if !(1..=5).contains(&e.min_soothing) {
                return Err(bad("`emotion.min_soothing` must be 1..=5"));
            }
            check_ms("emotion.window_ms", e.window_ms)?;
        }
        if self.value_tags.len() > MAX_TAGS {
            return Err(bad(format!("`value_tags` has more than {MAX_TAGS} tags")));
        }
        for tag in self.value_tags.keys() {
            check_tag("value_tags", tag)?;
        }
        Ok(self)
    }

    /// Parses and checks a definition from a JSON object.
    pub(crate) fn from_map(map: Map<String, Value>) -> Result<Self, OpError> {
        serde_json::from_value::<QueueDef>(Value::Object(map))
            .map_err(|e| bad(format!("queue definition: {e}")))?
            .checked()
    }

    /// The definition as JSON.
    #[must_use]
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

fn default_capacity() -> PerChannel<u8> {
    PerChannel {
        voice: 1,
        ..PerChannel::default()
    }
}

/// An agent definition, as `agent.create` takes it and `agent.get` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDef {
    /// Agent id.
    pub agent: u64,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Skill name → level 1..=5.
    #[serde(default)]
    pub skills: BTreeMap<String, u8>,
    /// Free-form attributes; `soothing` (0..=5) is the one the router reads.
    #[serde(default)]
    pub attributes: Map<String, Value>,
    /// Tasks per channel at once (default: one voice task).
    #[serde(default = "default_capacity")]
    pub capacity: PerChannel<u8>,
    /// The call holding the agent's phone leg (a permanent connection), for voice tasks the
    /// engine bridges; `offer.accept` may name another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<String>,
    /// The agent's leg in `call`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leg: Option<String>,
}

impl AgentDef {
    fn checked(self) -> Result<Self, OpError> {
        match (&self.call, &self.leg) {
            (Some(c), Some(l)) => {
                if c.is_empty() || l.is_empty() {
                    return Err(bad("`call` and `leg` must not be empty"));
                }
                check_text("call", c, MAX_NAME)?;
                check_text("leg", l, MAX_NAME)?;
            }
            (None, None) => {}
            _ => return Err(bad("an agent's `call` and `leg` go together")),
        }
        if let Some(n) = &self.name {
            check_text("name", n, MAX_NAME)?;
        }
        if self.skills.len() > MAX_AGENT_SKILLS {
            return Err(bad(format!(
                "`skills` lists {} skills, at most {MAX_AGENT_SKILLS}",
                self.skills.len()
            )));
        }
        for (skill, level) in &self.skills {
            check_text("skills", skill, 64)?;
            if !(1..=5).contains(level) {
                return Err(bad(format!("`skills.{skill}` = {level}: levels are 1..=5")));
            }
        }
        let attrs = serde_json::to_string(&self.attributes).unwrap_or_default();
        check_text("attributes", &attrs, MAX_ATTRIBUTES)?;
        self.soothing()?;
        Ok(self)
    }

    /// The `soothing` attribute (0 when absent).
    pub(crate) fn soothing(&self) -> Result<u8, OpError> {
        match self.attributes.get("soothing") {
            None | Some(Value::Null) => Ok(0),
            Some(v) => v
                .as_u64()
                .and_then(|s| u8::try_from(s).ok())
                .filter(|s| *s <= 5)
                .ok_or_else(|| bad(format!("`attributes.soothing` = {v}: must be 0..=5"))),
        }
    }

    /// Parses and checks a definition from a JSON object.
    pub(crate) fn from_map(map: Map<String, Value>) -> Result<Self, OpError> {
        serde_json::from_value::<AgentDef>(Value::Object(map))
            .map_err(|e| bad(format!("agent definition: {e}")))?
            .checked()
    }

    /// The definition as JSON.
    #[must_use]
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// How long a preferred agent is waited for when the request does not say.
pub const DEFAULT_PREFERRED_TIMEOUT_MS: u64 = 30_000;

/// A task to enqueue.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskDef {
    /// Task id.
    pub task: u64,
    /// Queue to enter.
    pub queue: u64,
    /// The medium.
    pub channel: Channel,
    /// Base priority.
    #[serde(default)]
    pub priority: u32,
    /// Customer-value tags, mapped to points by the queue's `value_tags`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// 0 (calm) to 1 (furious).
    #[serde(default)]
    pub agitation: f64,
    /// Extra skill expression on top of the queue's steps.
    #[serde(default)]
    pub skills: Option<String>,
    /// An agent to wait for first.
    #[serde(default)]
    pub preferred_agent: Option<u64>,
    /// How long to wait for it.
    #[serde(default)]
    pub preferred_timeout_ms: Option<u64>,
    /// Opaque context handed to the agent.
    #[serde(default)]
    pub context: Option<Value>,
    /// Voice: the customer's call (an NG call-id or a native call).
    #[serde(default)]
    pub call: Option<String>,
    /// Voice: the customer's leg in that call (its NG tag or native leg name).
    #[serde(default)]
    pub leg: Option<String>,
    /// Voice: have the engine bridge the customer to the agent on accept.
    #[serde(default)]
    pub bridge: bool,
}

impl TaskDef {
    fn checked(self) -> Result<Self, OpError> {
        check_agitation(self.agitation)?;
        if self.tags.len() > MAX_TAGS {
            return Err(bad(format!("`tags` has more than {MAX_TAGS} tags")));
        }
        for t in &self.tags {
            check_tag("tags", t)?;
        }
        if let Some(s) = &self.skills {
            check_text("skills", s, MAX_EXPR_TEXT)?;
        }
        match (self.preferred_agent, self.preferred_timeout_ms) {
            (None, Some(_)) => {
                return Err(bad("`preferred_timeout_ms` needs `preferred_agent`"));
            }
            (_, Some(ms)) => check_ms("preferred_timeout_ms", ms)?,
            _ => {}
        }
        if let Some(c) = &self.context {
            let text = serde_json::to_string(c).unwrap_or_default();
            check_text("context", &text, MAX_CONTEXT)?;
        }
        if self.channel != Channel::Voice && (self.call.is_some() || self.leg.is_some()) {
            return Err(bad(
                "`call` and `leg` name a voice call; this task's channel is not voice",
            ));
        }
        if let Some(c) = &self.call {
            if c.is_empty() {
                return Err(bad("`call` is empty"));
            }
            check_text("call", c, MAX_NAME)?;
        }
        if let Some(l) = &self.leg {
            if self.call.is_none() {
                return Err(bad("`leg` needs `call`"));
            }
            check_text("leg", l, MAX_NAME)?;
        }
        if self.bridge && (self.call.is_none() || self.leg.is_none()) {
            return Err(bad(
                "`bridge` needs the customer's `call` and `leg`: the engine bridges that leg",
            ));
        }
        Ok(self)
    }

    /// The context blob as JSON text (empty when none was given).
    pub(crate) fn context_text(&self) -> String {
        match &self.context {
            None | Some(Value::Null) => String::new(),
            Some(v) => serde_json::to_string(v).unwrap_or_default(),
        }
    }
}

fn check_agitation(v: f64) -> Result<(), OpError> {
    if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
        return Err(bad(format!("`agitation` = {v}: must be a number in 0..=1")));
    }
    Ok(())
}

/// What a task keeps next to the router's state, persisted as JSON with the task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Base priority given.
    #[serde(default)]
    pub priority: u32,
    /// Customer-value tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Extra skill expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skills: Option<String>,
    /// Preferred agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_agent: Option<u64>,
    /// Its timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_timeout_ms: Option<u64>,
    /// Voice: the customer's call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<String>,
    /// Voice: the customer's leg.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leg: Option<String>,
    /// Voice: the engine bridges the customer's leg to the agent's when the task is assigned.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bridge: bool,
}

impl From<&TaskDef> for TaskSpec {
    fn from(d: &TaskDef) -> Self {
        TaskSpec {
            priority: d.priority,
            tags: d.tags.clone(),
            skills: d.skills.clone(),
            preferred_agent: d.preferred_agent,
            preferred_timeout_ms: d.preferred_agent.map(|_| {
                d.preferred_timeout_ms
                    .unwrap_or(DEFAULT_PREFERRED_TIMEOUT_MS)
            }),
            call: d.call.clone(),
            leg: d.leg.clone(),
            bridge: d.bridge,
        }
    }
}

/// `task.update`: any of a new base priority, new tags, a new agitation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskUpdate {
    /// Task id.
    pub task: u64,
    /// New base priority.
    #[serde(default)]
    pub priority: Option<u32>,
    /// New customer-value tags.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// New agitation.
    #[serde(default)]
    pub agitation: Option<f64>,
}

/// `forecast.staffing`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForecastReq {
    /// Arrivals per interval.
    pub arrivals: f64,
    /// The interval, seconds (default 1800).
    #[serde(default = "d_interval")]
    pub interval_s: f64,
    /// Average handle time, seconds.
    pub aht_s: f64,
    /// Target share answered within `sl_seconds` (0..1).
    #[serde(default)]
    pub target_service_level: Option<f64>,
    /// Service-level time T, seconds (default 20).
    #[serde(default = "d_sl_seconds")]
    pub sl_seconds: f64,
    /// Target average speed of answer, seconds (Erlang C only).
    #[serde(default)]
    pub target_asa_s: Option<f64>,
    /// Mean customer patience, seconds: switches to Erlang A.
    #[serde(default)]
    pub patience_s: Option<f64>,
    /// Predictions for this staffing instead of a search.
    #[serde(default)]
    pub agents: Option<u32>,
}

const fn d_interval() -> f64 {
    1800.0
}
const fn d_sl_seconds() -> f64 {
    20.0
}

/// The request body without `op` and the request `id`.
fn body(req: &Value) -> Result<Map<String, Value>, OpError> {
    let mut map = req
        .as_object()
        .cloned()
        .ok_or_else(|| bad("a request is a JSON object"))?;
    map.remove("op");
    map.remove("id");
    Ok(map)
}

fn typed<T: for<'de> Deserialize<'de>>(op: &str, map: Map<String, Value>) -> Result<T, OpError> {
    serde_json::from_value(Value::Object(map)).map_err(|e| bad(format!("{op}: {e}")))
}

/// A required id field, and nothing else but `allowed`.
fn id_of(op: &str, map: &Map<String, Value>, key: &str, allowed: &[&str]) -> Result<u64, OpError> {
    if let Some(k) = map
        .keys()
        .find(|k| k.as_str() != key && !allowed.contains(&k.as_str()))
    {
        return Err(bad(format!(
            "{op}: unknown field `{}`",
            k.chars().take(64).collect::<String>()
        )));
    }
    match map.get(key) {
        None => Err(bad(format!("{op}: missing field `{key}`"))),
        Some(v) => v.as_u64().ok_or_else(|| {
            bad(format!(
                "{op}: `{key}` must be an integer id 0..=18446744073709551615, got {}",
                short(v)
            ))
        }),
    }
}

/// Removes an optional name field (a call-id or a leg name) from `map`, checked.
fn take_name(op: &str, map: &mut Map<String, Value>, key: &str) -> Result<Option<String>, OpError> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => {
            check_text(key, &s, MAX_NAME)?;
            Ok(Some(s))
        }
        Some(v) => Err(bad(format!(
            "{op}: `{key}` must be a non-empty string, got {}",
            short(&v)
        ))),
    }
}

/// The id of an update; the other fields are the patch.
fn patch_id(op: &str, map: &Map<String, Value>, key: &str) -> Result<u64, OpError> {
    match map.get(key) {
        None => Err(bad(format!("{op}: missing field `{key}`"))),
        Some(v) => v.as_u64().ok_or_else(|| {
            bad(format!(
                "{op}: `{key}` must be an integer id 0..=18446744073709551615, got {}",
                short(v)
            ))
        }),
    }
}

/// A value shortened for an error message.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 64 {
        format!("{}…", s.chars().take(64).collect::<String>())
    } else {
        s
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusReq {
    agent: u64,
    status: String,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsReq {
    queue: u64,
    #[serde(default)]
    channel: Option<Channel>,
    #[serde(default)]
    priority: u32,
}

/// Parses an ACD operation into its tenant and a typed request.
///
/// # Errors
/// `unknown_op` for an op the ACD does not serve, `bad_request` for malformed fields
/// (a bad `tenant` included).
pub(crate) fn parse(op: &str, req: &Value) -> Result<(Arc<str>, Request), OpError> {
    let mut map = body(req)?;
    let tenant = take_tenant(&mut map)?;
    Ok((tenant, parse_body(op, map)?))
}

fn parse_body(op: &str, map: Map<String, Value>) -> Result<Request, OpError> {
    let pair = |map: &Map<String, Value>| -> Result<(TaskId, AgentId), OpError> {
        let task = id_of(op, map, "task", &["agent"])?;
        let agent = id_of(op, map, "agent", &["task"])?;
        Ok((TaskId(task), AgentId(agent)))
    };
    Ok(match op {
        "queue.create" => Request::QueueCreate(Box::new(QueueDef::from_map(map)?)),
        "queue.update" => Request::QueueUpdate {
            // Other fields are checked when the merged definition is parsed.
            queue: QueueId(patch_id(op, &map, "queue")?),
            patch: map,
        },
        "queue.delete" => Request::QueueDelete(QueueId(id_of(op, &map, "queue", &[])?)),
        "queue.get" => Request::QueueGet(QueueId(id_of(op, &map, "queue", &[])?)),
        "queue.list" => {
            if let Some(k) = map.keys().next() {
                return Err(bad(format!("{op}: unknown field `{k}`")));
            }
            Request::QueueList
        }
        "queue.stats" => {
            let s: StatsReq = typed(op, map)?;
            Request::QueueStats {
                queue: QueueId(s.queue),
                channel: s.channel.unwrap_or(Channel::Voice),
                priority: s.priority,
            }
        }
        "agent.create" => Request::AgentCreate(Box::new(AgentDef::from_map(map)?)),
        "agent.update" => Request::AgentUpdate {
            agent: AgentId(patch_id(op, &map, "agent")?),
            patch: map,
        },
        "agent.status" => {
            let s: StatusReq = typed(op, map)?;
            let status = match (s.status.as_str(), s.reason) {
                ("available", None) => Status::Available,
                ("offline", None) => Status::Offline,
                ("available" | "offline", Some(_)) => {
                    return Err(bad("agent.status: `reason` goes with status `away` only"));
                }
                ("away", reason) => {
                    let reason = reason.unwrap_or_else(|| "away".to_owned());
                    if reason.is_empty() {
                        return Err(bad("agent.status: `reason` is empty"));
                    }
                    check_text("reason", &reason, 64)?;
                    if reason == "missed_offers" {
                        return Err(bad(
                            "agent.status: `missed_offers` is the router's own reason",
                        ));
                    }
                    Status::Away {
                        reason: switchboard_router::AwayReason::Code(reason),
                    }
                }
                (other, _) => {
                    return Err(bad(format!(
                        "agent.status: status `{}` is not available, away or offline",
                        other.chars().take(32).collect::<String>()
                    )));
                }
            };
            Request::AgentStatus {
                agent: AgentId(s.agent),
                status,
            }
        }
        "agent.get" => Request::AgentGet(AgentId(id_of(op, &map, "agent", &[])?)),
        "agent.delete" => Request::AgentDelete(AgentId(id_of(op, &map, "agent", &[])?)),
        "agent.end_wrap_up" => Request::AgentEndWrapUp(AgentId(id_of(op, &map, "agent", &[])?)),
        "agent.list" => {
            if let Some(k) = map.keys().next() {
                return Err(bad(format!("{op}: unknown field `{k}`")));
            }
            Request::AgentList
        }
        "task.enqueue" => Request::TaskEnqueue(Box::new(typed::<TaskDef>(op, map)?.checked()?)),
        "task.update" => {
            let u: TaskUpdate = typed(op, map)?;
            if u.priority.is_none() && u.tags.is_none() && u.agitation.is_none() {
                return Err(bad(
                    "task.update: give at least one of `priority`, `tags`, `agitation`",
                ));
            }
            if let Some(a) = u.agitation {
                check_agitation(a)?;
            }
            if let Some(tags) = &u.tags {
                if tags.len() > MAX_TAGS {
                    return Err(bad(format!("`tags` has more than {MAX_TAGS} tags")));
                }
                for t in tags {
                    check_tag("tags", t)?;
                }
            }
            Request::TaskUpdate(u)
        }
        "task.cancel" => Request::TaskCancel(TaskId(id_of(op, &map, "task", &[])?)),
        "task.complete" => Request::TaskComplete(TaskId(id_of(op, &map, "task", &[])?)),
        "task.get" => Request::TaskGet(TaskId(id_of(op, &map, "task", &[])?)),
        "offer.accept" => {
            let mut ids = map.clone();
            let call = take_name(op, &mut ids, "call")?;
            let leg = take_name(op, &mut ids, "leg")?;
            let (task, agent) = pair(&ids)?;
            let leg = match (call, leg) {
                (Some(c), Some(l)) => Some((c, l)),
                (None, None) => None,
                _ => return Err(bad(format!("{op}: `call` and `leg` go together"))),
            };
            Request::OfferAccept { task, agent, leg }
        }
        "offer.reject" => {
            let (task, agent) = pair(&map)?;
            Request::OfferReject { task, agent }
        }
        "forecast.staffing" => Request::Forecast(typed(op, map)?),
        other => {
            return Err(OpError::new(
                ErrorCode::UnknownOp,
                format!(
                    "unknown op `{}`",
                    other.chars().take(64).collect::<String>()
                ),
            ));
        }
    })
}

fn router_bad(e: &switchboard_router::RouterError) -> OpError {
    bad(e.to_string())
}

/// Answers `forecast.staffing` (Erlang C, or Erlang A with `patience_s`).
///
/// # Errors
/// `bad_request` for inputs out of range or a target no staffing reaches.
pub(crate) fn forecast(f: &ForecastReq) -> Result<Value, OpError> {
    let w = Workload {
        arrivals: f.arrivals,
        interval_s: f.interval_s,
        aht_s: f.aht_s,
    };
    let erlangs = w.erlangs();
    if erlangs.is_finite() && erlangs > MAX_FORECAST_ERLANGS {
        return Err(bad(format!(
            "the offered load is {erlangs:.0} erlangs, at most {MAX_FORECAST_ERLANGS}"
        )));
    }
    let modes = [
        f.agents.is_some(),
        f.target_service_level.is_some(),
        f.target_asa_s.is_some(),
    ];
    if modes.iter().filter(|m| **m).count() != 1 {
        return Err(bad(
            "give exactly one of `target_service_level`, `target_asa_s` or `agents`",
        ));
    }
    let c = |m: staffing::ErlangC| {
        json!({"model": "erlang_c", "agents": m.agents, "erlangs": m.erlangs,
            "p_wait": m.p_wait, "service_level": m.service_level, "asa_s": m.asa_s,
            "occupancy": m.occupancy, "sl_seconds": f.sl_seconds})
    };
    let a = |m: staffing::ErlangA| {
        json!({"model": "erlang_a", "agents": m.agents, "erlangs": m.erlangs,
            "p_wait": m.p_wait, "p_abandon": m.p_abandon, "service_level": m.service_level,
            "asa_s": m.asa_s, "occupancy": m.occupancy, "sl_seconds": f.sl_seconds})
    };
    let out = match (
        f.patience_s,
        f.agents,
        f.target_service_level,
        f.target_asa_s,
    ) {
        (None, Some(n), _, _) => {
            c(staffing::erlang_c_metrics(&w, n, f.sl_seconds).map_err(|e| router_bad(&e))?)
        }
        (Some(p), Some(n), _, _) => {
            a(staffing::erlang_a_metrics(&w, n, p, f.sl_seconds).map_err(|e| router_bad(&e))?)
        }
        (None, None, Some(t), _) => {
            c(staffing::agents_for_service_level(&w, t, f.sl_seconds)
                .map_err(|e| router_bad(&e))?)
        }
        (Some(p), None, Some(t), _) => {
            a(
                staffing::erlang_a_agents_for_service_level(&w, p, t, f.sl_seconds)
                    .map_err(|e| router_bad(&e))?,
            )
        }
        (None, None, None, Some(asa)) => {
            c(staffing::agents_for_asa(&w, asa).map_err(|e| router_bad(&e))?)
        }
        (Some(_), None, None, Some(_)) => {
            return Err(bad(
                "`target_asa_s` sizes with Erlang C; with `patience_s` give `target_service_level`",
            ));
        }
        _ => return Err(bad("give a target or `agents`")),
    };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> Result<Request, OpError> {
        let op = v["op"].as_str().unwrap().to_owned();
        parse(&op, &v).map(|(_, r)| r)
    }

    #[test]
    fn tenants_are_checked() {
        let t = |v: Value| parse("queue.list", &v).map(|(t, _)| t.to_string());
        assert_eq!(t(json!({"op": "queue.list"})).unwrap(), DEFAULT_TENANT);
        assert_eq!(
            t(json!({"op": "queue.list", "tenant": "Acme-1.eu_west"})).unwrap(),
            "Acme-1.eu_west"
        );
        assert_eq!(t(json!({"tenant": "x".repeat(64)})).unwrap().len(), 64);
        for bad in [
            json!(""),
            json!("x".repeat(65)),
            json!("a b"),
            json!("a/b"),
            json!("../etc"),
            json!("é"),
            json!("a\u{0}b"),
            json!("a'; DROP TABLE acd_tasks; --"),
            json!(7),
            json!(null),
            json!(["a"]),
        ] {
            let e = t(json!({"op": "queue.list", "tenant": bad.clone()})).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{bad}");
        }
    }

    #[test]
    fn queue_defaults_and_shorthand() {
        let Request::QueueCreate(q) =
            req(json!({"op": "queue.create", "id": 1, "queue": 4, "skills": "billing>=2"}))
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(q.steps.len(), 1);
        assert_eq!(q.steps[0].skills, "billing>=2");
        assert_eq!(q.offer_timeout_ms, 20_000);
        assert_eq!(q.strategy, Strategy::LongestIdle);
        let j = q.to_json();
        assert!(j.get("skills").is_none());
        assert_eq!(j["steps"][0]["skills"], "billing>=2");
        // Round trip through the stored form.
        let again = QueueDef::from_map(j.as_object().unwrap().clone()).unwrap();
        assert_eq!(again, *q);
        // The analytics option is off unless asked for, and stored only when on.
        assert!(!q.agitation_from_analytics);
        assert!(j.get("agitation_from_analytics").is_none());
        let Request::QueueCreate(q) =
            req(json!({"op": "queue.create", "queue": 5, "agitation_from_analytics": true}))
                .unwrap()
        else {
            panic!()
        };
        assert!(q.agitation_from_analytics);
        let j = q.to_json();
        assert_eq!(j["agitation_from_analytics"], true);
        assert_eq!(
            QueueDef::from_map(j.as_object().unwrap().clone()).unwrap(),
            *q
        );
        assert!(
            req(json!({"op": "queue.create", "queue": 5, "agitation_from_analytics": 1})).is_err()
        );
    }

    #[test]
    fn hostile_fields_get_clear_errors() {
        let cases = [
            json!({"op": "queue.create", "queue": "one"}),
            json!({"op": "queue.create", "queue": 1, "prority": 3}),
            json!({"op": "queue.create", "queue": 1, "wrap_up_ms": u64::MAX}),
            json!({"op": "queue.create", "queue": 1, "max_length": 1e40}),
            json!({"op": "queue.create", "queue": -1}),
            json!({"op": "task.enqueue", "task": 1, "queue": 1, "channel": "fax"}),
            json!({"op": "task.enqueue", "task": 1, "queue": 1, "channel": "chat", "agitation": 7}),
            json!({"op": "task.enqueue", "task": 1, "queue": 1, "channel": "chat", "call": "c"}),
            json!({"op": "task.enqueue", "task": 1, "queue": 1, "channel": "voice", "leg": "a"}),
            json!({"op": "task.get", "task": 1.5}),
            json!({"op": "task.get"}),
            json!({"op": "task.update", "task": 1}),
            json!({"op": "agent.create", "agent": 1, "skills": {"x": 9}}),
            json!({"op": "agent.create", "agent": 1, "attributes": {"soothing": 6}}),
            json!({"op": "agent.status", "agent": 1, "status": "sleepy"}),
            json!({"op": "forecast.staffing", "arrivals": "many", "aht_s": 1}),
        ];
        for c in cases {
            let e = req(c.clone()).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{c}: {}", e.message);
            assert!(!e.message.is_empty());
        }
        let e = req(
            json!({"op": "task.enqueue", "task": 1, "queue": 1, "channel": "voice",
            "call": "c", "bridge": true}),
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest, "bridge without a leg");
        for c in [
            json!({"op": "offer.accept", "task": 1, "agent": 2, "call": "c"}),
            json!({"op": "offer.accept", "task": 1, "agent": 2, "call": "", "leg": "l"}),
            json!({"op": "offer.accept", "task": 1, "agent": 2, "call": 5, "leg": "l"}),
            json!({"op": "agent.create", "agent": 1, "call": "c"}),
        ] {
            assert_eq!(
                req(c.clone()).unwrap_err().code,
                ErrorCode::BadRequest,
                "{c}"
            );
        }
        let Request::OfferAccept { leg, .. } =
            req(json!({"op": "offer.accept", "task": 1, "agent": 2, "call": "a", "leg": "phone"}))
                .unwrap()
        else {
            panic!("not an accept")
        };
        assert_eq!(leg, Some(("a".to_owned(), "phone".to_owned())));
        assert_eq!(
            req(json!({"op": "queue.frobnicate"})).unwrap_err().code,
            ErrorCode::UnknownOp
        );
        let Request::Forecast(f) =
            req(json!({"op": "forecast.staffing", "arrivals": 1, "aht_s": 1})).unwrap()
        else {
            panic!()
        };
        assert_eq!(forecast(&f).unwrap_err().code, ErrorCode::BadRequest);
    }

    #[test]
    fn forecast_known_check() {
        // 360 calls per 30 minutes, 240 s handle time, 80/20: 54 agents.
        let v = forecast(&ForecastReq {
            arrivals: 360.0,
            interval_s: 1800.0,
            aht_s: 240.0,
            target_service_level: Some(0.8),
            sl_seconds: 20.0,
            target_asa_s: None,
            patience_s: None,
            agents: None,
        })
        .unwrap();
        assert_eq!(v["agents"], 54);
        assert_eq!(v["model"], "erlang_c");
    }
}
