//! The media topology of one call, as the control plane keeps it: the legs and their codecs,
//! who hears whom (the hears-matrix), supervisors and their modes, conference membership,
//! mute/deaf/gain and the prompts running; and the decision between relaying packet for
//! packet and mixing.
//!
//! Pure logic, no I/O. Drive contract: mutate with the `add_*`/`set_*`/`remove_*` methods,
//! then call [`Topology::plan`], which returns the [`Change`]s the call's worker needs to get
//! from the state it was last given to the new one (and records the new state as given).
//! A mutation that would need mixing a leg whose codecs are unknown makes `plan` fail and
//! leaves the given state untouched: clone the topology before a change to roll it back.
//!
//! A call is **relayed** when it has exactly two legs that hear each other both ways, send
//! the same codec, are neither muted, deaf nor amplified, and no prompt, supervisor,
//! transcoding request, media fork or analytics is present. Otherwise it is **mixed**: each
//! member hears the legs of its row of the hears-matrix. Supervisor modes are rows (see `docs/control-protocol.md`):
//!
//! | mode | supervisor hears | agent hears | customer hears |
//! | --- | --- | --- | --- |
//! | listen | customer + agent | customer | agent |
//! | whisper | customer + agent | customer + supervisor | agent |
//! | barge | customer + agent | customer + supervisor | agent + supervisor |
//! | talk to customer | customer + agent | customer | agent + supervisor |

use std::collections::{BTreeMap, BTreeSet};

use switchboard_proto::media::MediaLegConfig;

use crate::worker::{LegKey, MediaOp};

/// A supervisor's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MonitorMode {
    /// The supervisor hears both parties; nobody hears the supervisor.
    Listen,
    /// Coaching: the agent also hears the supervisor.
    Whisper,
    /// Both parties hear the supervisor.
    Barge,
    /// Only the customer hears the supervisor.
    TalkToCustomer,
}

impl MonitorMode {
    /// Every mode.
    pub const ALL: [Self; 4] = [
        Self::Listen,
        Self::Whisper,
        Self::Barge,
        Self::TalkToCustomer,
    ];

    /// The wire name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Listen => "listen",
            Self::Whisper => "whisper",
            Self::Barge => "barge",
            Self::TalkToCustomer => "talk_to_customer",
        }
    }

    /// Parses a wire name (`talk-to-customer` is accepted too).
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "listen" => Some(Self::Listen),
            "whisper" | "coach" => Some(Self::Whisper),
            "barge" => Some(Self::Barge),
            "talk_to_customer" | "talk-to-customer" => Some(Self::TalkToCustomer),
            _ => None,
        }
    }

    /// The mode a supervisor's DTMF digit selects: 4 listen, 5 whisper, 6 barge.
    #[must_use]
    pub const fn from_digit(d: char) -> Option<Self> {
        match d {
            '4' => Some(Self::Listen),
            '5' => Some(Self::Whisper),
            '6' => Some(Self::Barge),
            _ => None,
        }
    }

    const fn agent_hears_supervisor(self) -> bool {
        matches!(self, Self::Whisper | Self::Barge)
    }

    const fn customer_hears_supervisor(self) -> bool {
        matches!(self, Self::Barge | Self::TalkToCustomer)
    }
}

/// One supervisor on a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Monitor {
    /// The supervisor's leg.
    pub supervisor: LegKey,
    /// The agent's leg.
    pub agent: LegKey,
    /// The customer's leg; `None`: every other party the agent hears.
    pub customer: Option<LegKey>,
    /// The mode.
    pub mode: MonitorMode,
    /// Digits 4/5/6 from the supervisor switch the mode.
    pub dtmf_control: bool,
}

/// One leg as the topology knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Leg {
    /// Its name (a native leg's name, or an NG tag).
    pub name: String,
    /// The worker's key.
    pub key: LegKey,
    /// Codecs; `None` while unknown (a relayed NG leg): such a leg cannot be mixed.
    pub media: Option<MediaLegConfig>,
    /// A conference member: hears every other member and is heard by them.
    pub conference: bool,
    /// Legs this leg hears on top of the conference.
    pub links: BTreeSet<LegKey>,
    /// An explicit row (`leg.hears`), replacing conference and links.
    pub row: Option<BTreeSet<LegKey>>,
    /// Nobody hears the leg.
    pub mute: bool,
    /// The leg hears nothing.
    pub deaf: bool,
    /// Gain applied to the leg's audio, dB.
    pub gain_db: f32,
}

impl Leg {
    /// A leg with no relations.
    #[must_use]
    pub fn new(name: impl Into<String>, key: LegKey, media: Option<MediaLegConfig>) -> Self {
        Self {
            name: name.into(),
            key,
            media,
            conference: false,
            links: BTreeSet::new(),
            row: None,
            mute: false,
            deaf: false,
            gain_db: 0.0,
        }
    }
}

/// Why a topology change cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// The call would have to mix a leg whose codecs are unknown.
    #[error("the codecs of leg `{0}` are unknown: it cannot be mixed")]
    CodecsUnknown(String),
    /// No such leg.
    #[error("no leg `{0}`")]
    UnknownLeg(String),
    /// A leg of that name exists.
    #[error("leg `{0}` exists already")]
    LegExists(String),
    /// Supervisor, agent and customer must be three different legs.
    #[error("{0}")]
    Conflict(String),
    /// The conference is full.
    #[error("the call has {0} conference members, its limit")]
    TooManyMembers(usize),
}

/// What the worker must do to reach the planned state. Converted into a [`MediaOp`] (or a
/// plain relay `Connect`) by the control plane.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Relay two legs that were not mixing (the worker's `Connect`).
    Connect {
        /// One leg.
        a: LegKey,
        /// The other.
        b: LegKey,
    },
    /// Stop mixing, relay two legs.
    Relay {
        /// One leg.
        a: LegKey,
        /// The other.
        b: LegKey,
    },
    /// Put legs under the mixer (or change their codecs).
    SetLegs(Vec<(LegKey, MediaLegConfig)>),
    /// A row of the hears-matrix.
    Hears {
        /// The listener.
        leg: LegKey,
        /// Whom it hears.
        hears: Vec<LegKey>,
    },
    /// Mute, deaf, gain.
    Flags {
        /// The leg.
        leg: LegKey,
        /// Muted.
        mute: bool,
        /// Deaf.
        deaf: bool,
        /// Gain, dB.
        gain_db: f32,
    },
}

impl Change {
    /// The worker's media operation; `None` for [`Change::Connect`] (a relay command).
    #[must_use]
    pub fn into_media_op(self) -> Option<MediaOp> {
        match self {
            Self::Connect { .. } => None,
            Self::Relay { a, b } => Some(MediaOp::Relay { a, b }),
            Self::SetLegs(legs) => Some(MediaOp::SetLegs { legs }),
            Self::Hears { leg, hears } => Some(MediaOp::Hears { leg, hears }),
            Self::Flags {
                leg,
                mute,
                deaf,
                gain_db,
            } => Some(MediaOp::LegFlags {
                leg,
                mute: Some(mute),
                deaf: Some(deaf),
                gain_db: Some(gain_db),
            }),
        }
    }
}

/// The state last given to the worker.
#[derive(Debug, Clone, PartialEq, Default)]
enum Given {
    /// Nothing connected.
    #[default]
    Idle,
    /// Two legs relayed.
    Relay(LegKey, LegKey),
    /// Mixing.
    Mix {
        members: BTreeMap<LegKey, MediaLegConfig>,
        rows: BTreeMap<LegKey, Vec<LegKey>>,
        flags: BTreeMap<LegKey, (bool, bool, f32)>,
    },
}

/// What the call should do now.
#[derive(Debug, Clone, PartialEq)]
enum Desired {
    Idle,
    Relay(LegKey, LegKey),
    Mix,
}

/// One call's media topology. See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct Topology {
    legs: BTreeMap<LegKey, Leg>,
    monitors: Vec<Monitor>,
    prompts: BTreeMap<u32, Option<LegKey>>,
    holds: BTreeSet<u32>,
    /// Users of the call's decoded audio (media forks, analytics), by name.
    decoded: BTreeSet<String>,
    transcode: bool,
    max_members: usize,
    given: Given,
}

impl Topology {
    /// An empty topology; at most `max_members` conference members.
    #[must_use]
    pub fn new(max_members: usize) -> Self {
        Self {
            max_members,
            ..Self::default()
        }
    }

    /// Every leg, by key.
    pub fn legs(&self) -> impl Iterator<Item = &Leg> {
        self.legs.values()
    }

    /// A leg by key.
    #[must_use]
    pub fn leg(&self, key: LegKey) -> Option<&Leg> {
        self.legs.get(&key)
    }

    /// A leg by key, to change its fields (codecs).
    pub fn leg_mut(&mut self, key: LegKey) -> Option<&mut Leg> {
        self.legs.get_mut(&key)
    }

    /// A leg's key by name.
    #[must_use]
    pub fn key_of(&self, name: &str) -> Option<LegKey> {
        self.legs.values().find(|l| l.name == name).map(|l| l.key)
    }

    /// The supervisors.
    #[must_use]
    pub fn monitors(&self) -> &[Monitor] {
        &self.monitors
    }

    /// Whether the call mixes (as last planned).
    #[must_use]
    pub fn is_mixing(&self) -> bool {
        matches!(self.given, Given::Mix { .. })
    }

    /// Conference members.
    #[must_use]
    pub fn conference_size(&self) -> usize {
        self.legs.values().filter(|l| l.conference).count()
    }

    /// Adds a leg. With `conference`, it joins the call's conference (bounded).
    pub fn add_leg(&mut self, leg: Leg) -> Result<(), TopologyError> {
        if self.legs.contains_key(&leg.key) || self.key_of(&leg.name).is_some() {
            return Err(TopologyError::LegExists(leg.name));
        }
        if leg.conference && self.conference_size() >= self.max_members {
            return Err(TopologyError::TooManyMembers(self.max_members));
        }
        self.legs.insert(leg.key, leg);
        Ok(())
    }

    /// Removes a leg, with its relations, supervisions and prompts.
    pub fn remove_leg(&mut self, key: LegKey) -> Option<Leg> {
        let leg = self.legs.remove(&key)?;
        for l in self.legs.values_mut() {
            l.links.remove(&key);
            if let Some(r) = &mut l.row {
                r.remove(&key);
            }
        }
        self.monitors
            .retain(|m| m.supervisor != key && m.agent != key && m.customer != Some(key));
        self.prompts.retain(|_, l| *l != Some(key));
        if let Given::Mix {
            members,
            rows,
            flags,
        } = &mut self.given
        {
            members.remove(&key);
            rows.remove(&key);
            flags.remove(&key);
        }
        if let Given::Relay(a, b) = self.given {
            if a == key || b == key {
                self.given = Given::Idle;
            }
        }
        Some(leg)
    }

    /// `a` and `b` hear each other (on top of everything else).
    pub fn link(&mut self, a: LegKey, b: LegKey) {
        if a == b {
            return;
        }
        if let Some(l) = self.legs.get_mut(&a) {
            l.links.insert(b);
        }
        if let Some(l) = self.legs.get_mut(&b) {
            l.links.insert(a);
        }
    }

    /// Takes `key` out of every link, both ways, and out of explicit rows (its own explicit
    /// row is dropped too); conference membership stays. Returns the legs it was linked
    /// with or in a row with.
    pub fn unlink_all(&mut self, key: LegKey) -> Vec<LegKey> {
        let mut gone = std::collections::BTreeSet::new();
        if let Some(l) = self.legs.get_mut(&key) {
            gone.extend(l.links.iter().copied());
            l.links.clear();
            if let Some(r) = l.row.take() {
                gone.extend(r);
            }
        }
        for (k, l) in &mut self.legs {
            let linked = l.links.remove(&key);
            let in_row = l.row.as_mut().is_some_and(|r| r.remove(&key));
            if linked || in_row {
                gone.insert(*k);
            }
        }
        gone.remove(&key);
        gone.into_iter().collect()
    }

    /// `listener` hears `source` (one way).
    pub fn link_one_way(&mut self, listener: LegKey, source: LegKey) {
        if listener == source || !self.legs.contains_key(&source) {
            return;
        }
        if let Some(l) = self.legs.get_mut(&listener) {
            match &mut l.row {
                Some(r) => {
                    r.insert(source);
                }
                None => {
                    l.links.insert(source);
                }
            }
        }
    }

    /// Sets a leg's row explicitly (`None`: back to conference and links).
    pub fn set_row(
        &mut self,
        key: LegKey,
        row: Option<BTreeSet<LegKey>>,
    ) -> Result<(), TopologyError> {
        if let Some(r) = &row {
            if let Some(bad) = r.iter().find(|k| !self.legs.contains_key(k)) {
                return Err(TopologyError::UnknownLeg(bad.to_string()));
            }
        }
        let leg = self
            .legs
            .get_mut(&key)
            .ok_or_else(|| TopologyError::UnknownLeg(key.to_string()))?;
        leg.row = row.map(|mut r| {
            r.remove(&key);
            r
        });
        Ok(())
    }

    /// Joins or leaves the conference.
    pub fn set_conference(&mut self, key: LegKey, on: bool) -> Result<(), TopologyError> {
        let size = self.conference_size();
        let max = self.max_members;
        let leg = self
            .legs
            .get_mut(&key)
            .ok_or_else(|| TopologyError::UnknownLeg(key.to_string()))?;
        if on && !leg.conference && size >= max {
            return Err(TopologyError::TooManyMembers(max));
        }
        leg.conference = on;
        leg.row = None;
        Ok(())
    }

    /// Mute, deaf, gain (each `None`: unchanged).
    pub fn set_flags(
        &mut self,
        key: LegKey,
        mute: Option<bool>,
        deaf: Option<bool>,
        gain_db: Option<f32>,
    ) -> Result<(), TopologyError> {
        let leg = self
            .legs
            .get_mut(&key)
            .ok_or_else(|| TopologyError::UnknownLeg(key.to_string()))?;
        if let Some(m) = mute {
            leg.mute = m;
        }
        if let Some(d) = deaf {
            leg.deaf = d;
        }
        if let Some(g) = gain_db {
            leg.gain_db = g;
        }
        Ok(())
    }

    /// Forces mixing (transcoding) or lifts it.
    pub fn set_transcode(&mut self, on: bool) {
        self.transcode = on;
    }

    /// Starts supervising: checks the three legs and replaces the supervisor's earlier
    /// monitor, if any.
    pub fn start_monitor(&mut self, m: Monitor) -> Result<(), TopologyError> {
        for k in [Some(m.supervisor), Some(m.agent), m.customer]
            .into_iter()
            .flatten()
        {
            if !self.legs.contains_key(&k) {
                return Err(TopologyError::UnknownLeg(k.to_string()));
            }
        }
        if m.supervisor == m.agent || m.customer == Some(m.supervisor) {
            return Err(TopologyError::Conflict(
                "a supervisor cannot monitor itself".into(),
            ));
        }
        if m.customer == Some(m.agent) {
            return Err(TopologyError::Conflict(
                "the agent and the customer are the same leg".into(),
            ));
        }
        if self.monitors.iter().any(|o| o.agent == m.supervisor) {
            return Err(TopologyError::Conflict(
                "that leg is the agent of another supervisor".into(),
            ));
        }
        if self.monitors.iter().any(|o| o.supervisor == m.agent) {
            return Err(TopologyError::Conflict(
                "the agent is itself a supervisor".into(),
            ));
        }
        self.monitors.retain(|o| o.supervisor != m.supervisor);
        self.monitors.push(m);
        Ok(())
    }

    /// Changes a supervisor's mode; returns the monitor.
    pub fn set_mode(
        &mut self,
        supervisor: LegKey,
        mode: MonitorMode,
    ) -> Result<&Monitor, TopologyError> {
        let m = self
            .monitors
            .iter_mut()
            .find(|m| m.supervisor == supervisor)
            .ok_or_else(|| TopologyError::UnknownLeg(supervisor.to_string()))?;
        m.mode = mode;
        Ok(m)
    }

    /// The monitor of a supervisor.
    #[must_use]
    pub fn monitor(&self, supervisor: LegKey) -> Option<&Monitor> {
        self.monitors.iter().find(|m| m.supervisor == supervisor)
    }

    /// Stops supervising; returns the monitor.
    pub fn stop_monitor(&mut self, supervisor: LegKey) -> Option<Monitor> {
        let i = self
            .monitors
            .iter()
            .position(|m| m.supervisor == supervisor)?;
        Some(self.monitors.remove(i))
    }

    /// A prompt starts (to one leg, or the whole call).
    pub fn add_prompt(&mut self, id: u32, leg: Option<LegKey>) {
        self.prompts.insert(id, leg);
    }

    /// A prompt ended; returns whether it was known.
    pub fn remove_prompt(&mut self, id: u32) -> bool {
        self.prompts.remove(&id).is_some()
    }

    /// Keeps the call mixing while something that needs the mixer runs (DTMF being sent).
    pub fn add_hold(&mut self, id: u32) {
        self.holds.insert(id);
    }

    /// Ends a hold; returns whether it was known.
    pub fn remove_hold(&mut self, id: u32) -> bool {
        self.holds.remove(&id)
    }

    /// Something needs the call's decoded audio (a media fork, conversation analytics): the
    /// call mixes while any such user is present.
    pub fn add_decoded_user(&mut self, name: &str) {
        self.decoded.insert(name.to_owned());
    }

    /// A user of the decoded audio is gone; returns whether it was known.
    pub fn remove_decoded_user(&mut self, name: &str) -> bool {
        self.decoded.remove(name)
    }

    /// Whether anything needs the call's decoded audio.
    #[must_use]
    pub fn needs_decoded(&self) -> bool {
        !self.decoded.is_empty()
    }

    /// Prompts running, with their target leg.
    pub fn prompts(&self) -> impl Iterator<Item = (u32, Option<LegKey>)> + '_ {
        self.prompts.iter().map(|(k, v)| (*k, *v))
    }

    /// The base row of a leg: explicit, or conference plus links.
    fn base_row(&self, leg: &Leg) -> BTreeSet<LegKey> {
        if let Some(r) = &leg.row {
            return r.clone();
        }
        let mut row = leg.links.clone();
        if leg.conference {
            row.extend(
                self.legs
                    .values()
                    .filter(|o| o.conference && o.key != leg.key)
                    .map(|o| o.key),
            );
        }
        row
    }

    /// The customers of a monitor.
    fn customers(&self, m: &Monitor, base: &BTreeMap<LegKey, BTreeSet<LegKey>>) -> Vec<LegKey> {
        match m.customer {
            Some(c) => vec![c],
            None => base
                .get(&m.agent)
                .map(|r| {
                    r.iter()
                        .copied()
                        .filter(|k| {
                            *k != m.supervisor && !self.monitors.iter().any(|o| o.supervisor == *k)
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The hears-matrix: every leg's row, with the supervisors' modes applied.
    #[must_use]
    pub fn matrix(&self) -> BTreeMap<LegKey, BTreeSet<LegKey>> {
        let base: BTreeMap<LegKey, BTreeSet<LegKey>> = self
            .legs
            .values()
            .map(|l| (l.key, self.base_row(l)))
            .collect();
        let mut rows = base.clone();
        for m in &self.monitors {
            let customers = self.customers(m, &base);
            // The supervisor hears both parties.
            if let Some(r) = rows.get_mut(&m.supervisor) {
                r.insert(m.agent);
                r.extend(customers.iter().copied());
            }
            // The agent hears the customer, and the supervisor when coached or barged.
            if let Some(r) = rows.get_mut(&m.agent) {
                r.extend(customers.iter().copied());
                if m.mode.agent_hears_supervisor() {
                    r.insert(m.supervisor);
                } else {
                    r.remove(&m.supervisor);
                }
            }
            for c in &customers {
                if let Some(r) = rows.get_mut(c) {
                    r.insert(m.agent);
                    if m.mode.customer_hears_supervisor() {
                        r.insert(m.supervisor);
                    } else {
                        r.remove(&m.supervisor);
                    }
                }
            }
            // Nobody else hears a supervisor in listen mode through the conference.
            for (k, r) in &mut rows {
                if *k != m.agent && !customers.contains(k) && *k != m.supervisor {
                    r.remove(&m.supervisor);
                }
            }
        }
        for (k, r) in &mut rows {
            r.remove(k);
            r.retain(|o| self.legs.contains_key(o));
        }
        rows
    }

    fn desired(&self, rows: &BTreeMap<LegKey, BTreeSet<LegKey>>) -> Desired {
        let plain = !self.transcode
            && self.monitors.is_empty()
            && self.prompts.is_empty()
            && self.holds.is_empty()
            && self.decoded.is_empty();
        let legs: Vec<&Leg> = self.legs.values().collect();
        if plain && legs.len() == 2 {
            let (a, b) = (legs[0], legs[1]);
            let both_ways = rows.get(&a.key).is_some_and(|r| r.contains(&b.key))
                && rows.get(&b.key).is_some_and(|r| r.contains(&a.key));
            let flat = |l: &Leg| !l.mute && !l.deaf && l.gain_db == 0.0;
            let same_codec = match (&a.media, &b.media) {
                (Some(x), Some(y)) => {
                    x.send.kind == y.send.kind
                        && x.send.clock_rate == y.send.clock_rate
                        && x.send.payload_type == y.send.payload_type
                }
                // Unknown codecs: the legs negotiated with each other (an NG relay).
                _ => true,
            };
            if both_ways && flat(a) && flat(b) && same_codec {
                return Desired::Relay(a.key, b.key);
            }
        }
        let anything = !plain
            || legs.len() > 2
            || legs.iter().any(|l| l.mute || l.deaf || l.gain_db != 0.0)
            || (legs.len() == 2 && rows.values().any(|r| !r.is_empty()));
        if anything {
            Desired::Mix
        } else {
            Desired::Idle
        }
    }

    /// The changes that bring the worker from the state last planned to the current one;
    /// records the current one as given. On error nothing is recorded.
    pub fn plan(&mut self) -> Result<Vec<Change>, TopologyError> {
        let rows = self.matrix();
        let mut desired = self.desired(&rows);
        // A mixing call that loses its reason to mix but not to relay keeps mixing.
        if desired == Desired::Idle && self.is_mixing() {
            desired = Desired::Mix;
        }
        match desired {
            Desired::Idle => {
                self.given = Given::Idle;
                Ok(Vec::new())
            }
            Desired::Relay(a, b) => {
                let out = match self.given {
                    Given::Relay(x, y) if (x, y) == (a, b) => Vec::new(),
                    Given::Mix { .. } => vec![Change::Relay { a, b }],
                    _ => vec![Change::Connect { a, b }],
                };
                self.given = Given::Relay(a, b);
                Ok(out)
            }
            Desired::Mix => {
                let mut members = BTreeMap::new();
                for l in self.legs.values() {
                    let m = l
                        .media
                        .clone()
                        .ok_or_else(|| TopologyError::CodecsUnknown(l.name.clone()))?;
                    members.insert(l.key, m);
                }
                let (old_members, old_rows, old_flags) = match &self.given {
                    Given::Mix {
                        members,
                        rows,
                        flags,
                    } => (members.clone(), rows.clone(), flags.clone()),
                    _ => Default::default(),
                };
                let mut out = Vec::new();
                let set: Vec<(LegKey, MediaLegConfig)> = members
                    .iter()
                    .filter(|(k, m)| old_members.get(*k) != Some(*m))
                    .map(|(k, m)| (*k, m.clone()))
                    .collect();
                if !set.is_empty() {
                    out.push(Change::SetLegs(set));
                }
                let new_rows: BTreeMap<LegKey, Vec<LegKey>> = rows
                    .into_iter()
                    .map(|(k, r)| (k, r.into_iter().collect()))
                    .collect();
                for (k, r) in &new_rows {
                    let fresh = !old_members.contains_key(k);
                    if old_rows.get(k) != Some(r) && !(fresh && r.is_empty()) {
                        out.push(Change::Hears {
                            leg: *k,
                            hears: r.clone(),
                        });
                    }
                }
                let flags: BTreeMap<LegKey, (bool, bool, f32)> = self
                    .legs
                    .values()
                    .map(|l| (l.key, (l.mute, l.deaf, l.gain_db)))
                    .collect();
                for (k, f) in &flags {
                    let before = old_flags.get(k).copied().unwrap_or((false, false, 0.0));
                    if before != *f {
                        out.push(Change::Flags {
                            leg: *k,
                            mute: f.0,
                            deaf: f.1,
                            gain_db: f.2,
                        });
                    }
                }
                self.given = Given::Mix {
                    members,
                    rows: new_rows,
                    flags,
                };
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_codecs::codec::{CodecKind, CodecSpec};

    fn media(kind: CodecKind) -> Option<MediaLegConfig> {
        let spec = CodecSpec::new(kind);
        Some(MediaLegConfig {
            recv: vec![spec],
            send: spec,
            recv_events: None,
            send_events: None,
            ptime_ms: 20,
        })
    }

    fn pcmu(name: &str, key: LegKey, conference: bool) -> Leg {
        let mut l = Leg::new(name, key, media(CodecKind::Pcmu));
        l.conference = conference;
        l
    }

    fn row(t: &Topology, k: LegKey) -> Vec<LegKey> {
        t.matrix()[&k].iter().copied().collect()
    }

    const C: LegKey = 1;
    const A: LegKey = 2;
    const S: LegKey = 3;

    fn supervised(mode: MonitorMode) -> Topology {
        let mut t = Topology::new(500);
        t.add_leg(pcmu("customer", C, true)).unwrap();
        t.add_leg(pcmu("agent", A, true)).unwrap();
        t.add_leg(pcmu("sup", S, false)).unwrap();
        t.start_monitor(Monitor {
            supervisor: S,
            agent: A,
            customer: Some(C),
            mode,
            dtmf_control: true,
        })
        .unwrap();
        t
    }

    #[test]
    fn mode_table_rows() {
        // (mode, supervisor hears, agent hears, customer hears)
        let table = [
            (MonitorMode::Listen, vec![C, A], vec![C], vec![A]),
            (MonitorMode::Whisper, vec![C, A], vec![C, S], vec![A]),
            (MonitorMode::Barge, vec![C, A], vec![C, S], vec![A, S]),
            (MonitorMode::TalkToCustomer, vec![C, A], vec![C], vec![A, S]),
        ];
        for (mode, sup, agent, customer) in table {
            let t = supervised(mode);
            assert_eq!(row(&t, S), sup, "{mode:?} supervisor");
            assert_eq!(row(&t, A), agent, "{mode:?} agent");
            assert_eq!(row(&t, C), customer, "{mode:?} customer");
        }
    }

    #[test]
    fn the_supervisor_in_the_conference_is_still_silent_in_listen_mode() {
        let mut t = supervised(MonitorMode::Listen);
        t.set_conference(S, true).unwrap();
        assert_eq!(row(&t, A), vec![C]);
        assert_eq!(row(&t, C), vec![A]);
        assert_eq!(row(&t, S), vec![C, A]);
    }

    #[test]
    fn implicit_customer_is_who_the_agent_hears() {
        let mut t = Topology::new(10);
        t.add_leg(pcmu("customer", C, true)).unwrap();
        t.add_leg(pcmu("agent", A, true)).unwrap();
        t.add_leg(pcmu("sup", S, false)).unwrap();
        t.start_monitor(Monitor {
            supervisor: S,
            agent: A,
            customer: None,
            mode: MonitorMode::Barge,
            dtmf_control: false,
        })
        .unwrap();
        assert_eq!(row(&t, C), vec![A, S]);
        assert_eq!(row(&t, S), vec![C, A]);
    }

    #[test]
    fn mode_switch_is_only_hears_rows() {
        let mut t = supervised(MonitorMode::Listen);
        let first = t.plan().unwrap();
        assert!(matches!(&first[0], Change::SetLegs(l) if l.len() == 3));
        t.set_mode(S, MonitorMode::Whisper).unwrap();
        assert_eq!(
            t.plan().unwrap(),
            vec![Change::Hears {
                leg: A,
                hears: vec![C, S]
            }]
        );
        t.set_mode(S, MonitorMode::Barge).unwrap();
        assert_eq!(
            t.plan().unwrap(),
            vec![Change::Hears {
                leg: C,
                hears: vec![A, S]
            }]
        );
        assert_eq!(t.plan().unwrap(), vec![]);
    }

    #[test]
    fn supervisor_conflicts() {
        let mut t = supervised(MonitorMode::Listen);
        let self_monitor = Monitor {
            supervisor: A,
            agent: A,
            customer: None,
            mode: MonitorMode::Listen,
            dtmf_control: false,
        };
        assert!(matches!(
            t.start_monitor(self_monitor),
            Err(TopologyError::Conflict(_))
        ));
        let unknown = Monitor {
            supervisor: 99,
            agent: A,
            customer: None,
            mode: MonitorMode::Listen,
            dtmf_control: false,
        };
        assert!(matches!(
            t.start_monitor(unknown),
            Err(TopologyError::UnknownLeg(_))
        ));
    }

    #[test]
    fn two_legs_relay_then_mix_then_relay_again() {
        let mut t = Topology::new(500);
        t.add_leg(pcmu("a", 10, true)).unwrap();
        assert_eq!(t.plan().unwrap(), vec![]);
        t.add_leg(pcmu("b", 12, true)).unwrap();
        assert_eq!(t.plan().unwrap(), vec![Change::Connect { a: 10, b: 12 }]);
        // A prompt: mixing.
        t.add_prompt(1, Some(10));
        let ops = t.plan().unwrap();
        assert!(matches!(&ops[0], Change::SetLegs(l) if l.len() == 2));
        assert!(ops.contains(&Change::Hears {
            leg: 10,
            hears: vec![12]
        }));
        assert!(ops.contains(&Change::Hears {
            leg: 12,
            hears: vec![10]
        }));
        assert!(t.is_mixing());
        // Done: back to relaying.
        t.remove_prompt(1);
        assert_eq!(t.plan().unwrap(), vec![Change::Relay { a: 10, b: 12 }]);
        assert!(!t.is_mixing());
    }

    #[test]
    fn forks_and_analytics_keep_a_call_mixing() {
        let mut t = Topology::new(500);
        t.add_leg(pcmu("a", 10, true)).unwrap();
        t.add_leg(pcmu("b", 12, true)).unwrap();
        let _ = t.plan().unwrap();
        t.add_decoded_user("fork:fork-1");
        t.add_decoded_user("analytics");
        assert!(t.needs_decoded());
        assert!(matches!(&t.plan().unwrap()[0], Change::SetLegs(l) if l.len() == 2));
        assert!(t.is_mixing());
        assert!(t.remove_decoded_user("fork:fork-1"));
        assert!(!t.remove_decoded_user("fork:fork-1"));
        assert_eq!(t.plan().unwrap(), vec![]);
        assert!(t.is_mixing());
        t.remove_decoded_user("analytics");
        assert!(!t.needs_decoded());
        assert_eq!(t.plan().unwrap(), vec![Change::Relay { a: 10, b: 12 }]);
    }

    #[test]
    fn different_codecs_or_transcode_or_third_party_mix() {
        let mut t = Topology::new(500);
        t.add_leg(pcmu("a", 10, true)).unwrap();
        t.add_leg(Leg {
            conference: true,
            ..Leg::new("b", 12, media(CodecKind::Pcma))
        })
        .unwrap();
        assert!(matches!(&t.plan().unwrap()[0], Change::SetLegs(_)));

        let mut t = Topology::new(500);
        t.add_leg(pcmu("a", 10, true)).unwrap();
        t.add_leg(pcmu("b", 12, true)).unwrap();
        t.set_transcode(true);
        assert!(matches!(&t.plan().unwrap()[0], Change::SetLegs(_)));

        let mut t = Topology::new(500);
        t.add_leg(pcmu("a", 10, true)).unwrap();
        t.add_leg(pcmu("b", 12, true)).unwrap();
        assert_eq!(t.plan().unwrap(), vec![Change::Connect { a: 10, b: 12 }]);
        t.add_leg(pcmu("c", 14, true)).unwrap();
        let ops = t.plan().unwrap();
        assert!(matches!(&ops[0], Change::SetLegs(l) if l.len() == 3));
        assert_eq!(ops.len(), 4, "{ops:?}");
        // The third leaves: two legs with the same codec relay again.
        t.remove_leg(14);
        assert_eq!(t.plan().unwrap(), vec![Change::Relay { a: 10, b: 12 }]);
    }

    #[test]
    fn a_new_member_only_adds_its_own_rows() {
        let mut t = Topology::new(500);
        for k in [10, 12, 14] {
            t.add_leg(pcmu(&format!("l{k}"), k, true)).unwrap();
        }
        let _ = t.plan().unwrap();
        t.add_leg(pcmu("l16", 16, true)).unwrap();
        let ops = t.plan().unwrap();
        assert_eq!(
            ops[0],
            Change::SetLegs(vec![(16, media(CodecKind::Pcmu).unwrap())])
        );
        // Every row changed (everybody hears the newcomer): 4 rows.
        assert_eq!(ops.len(), 5);
        // Mute is a flag, not a row.
        t.set_flags(12, Some(true), None, None).unwrap();
        assert_eq!(
            t.plan().unwrap(),
            vec![Change::Flags {
                leg: 12,
                mute: true,
                deaf: false,
                gain_db: 0.0
            }]
        );
    }

    #[test]
    fn unknown_codecs_refuse_mixing_and_keep_the_old_state() {
        let mut t = Topology::new(500);
        t.add_leg(Leg {
            conference: true,
            ..Leg::new("a", 10, None)
        })
        .unwrap();
        t.add_leg(Leg {
            conference: true,
            ..Leg::new("b", 12, None)
        })
        .unwrap();
        assert_eq!(t.plan().unwrap(), vec![Change::Connect { a: 10, b: 12 }]);
        t.add_prompt(1, None);
        assert_eq!(t.plan(), Err(TopologyError::CodecsUnknown("a".into())));
        assert!(!t.is_mixing());
    }

    #[test]
    fn conference_limit() {
        let mut t = Topology::new(2);
        t.add_leg(pcmu("a", 10, true)).unwrap();
        t.add_leg(pcmu("b", 12, true)).unwrap();
        assert_eq!(
            t.add_leg(pcmu("c", 14, true)),
            Err(TopologyError::TooManyMembers(2))
        );
        assert!(t.add_leg(pcmu("c", 14, false)).is_ok());
        assert_eq!(
            t.add_leg(pcmu("c", 16, false)),
            Err(TopologyError::LegExists("c".into()))
        );
    }

    #[test]
    fn explicit_rows_and_one_way_links() {
        let mut t = Topology::new(500);
        t.add_leg(pcmu("a", 10, false)).unwrap();
        t.add_leg(pcmu("b", 12, false)).unwrap();
        t.add_leg(pcmu("c", 14, false)).unwrap();
        t.link_one_way(14, 10);
        assert_eq!(row(&t, 14), vec![10]);
        assert_eq!(row(&t, 10), Vec::<LegKey>::new());
        t.set_row(10, Some([12, 14, 10].into())).unwrap();
        assert_eq!(row(&t, 10), vec![12, 14]);
        assert!(t.set_row(10, Some([99].into())).is_err());
    }

    #[test]
    fn a_hold_mixes_until_released() {
        let mut t = Topology::new(500);
        t.add_leg(pcmu("a", 10, true)).unwrap();
        t.add_leg(pcmu("b", 12, true)).unwrap();
        assert_eq!(t.plan().unwrap(), vec![Change::Connect { a: 10, b: 12 }]);
        t.add_hold(7);
        assert!(matches!(&t.plan().unwrap()[0], Change::SetLegs(_)));
        assert!(t.remove_hold(7));
        assert_eq!(t.plan().unwrap(), vec![Change::Relay { a: 10, b: 12 }]);
    }

    #[test]
    fn dtmf_keys_and_names() {
        assert_eq!(MonitorMode::from_digit('4'), Some(MonitorMode::Listen));
        assert_eq!(MonitorMode::from_digit('5'), Some(MonitorMode::Whisper));
        assert_eq!(MonitorMode::from_digit('6'), Some(MonitorMode::Barge));
        assert_eq!(MonitorMode::from_digit('7'), None);
        for m in MonitorMode::ALL {
            assert_eq!(MonitorMode::parse(m.as_str()), Some(m));
        }
    }
}
