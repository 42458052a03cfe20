//! Bridging legs of different calls: what a contact center does when its ACD hands a waiting
//! customer (a leg of the customer's call, often an NG call from the SBC) to an agent (the
//! agent's phone leg, in a call of its own).
//!
//! `call.bridge {call, leg, with_call, with_leg}`:
//!
//! - same call: the two legs hear each other (a topology link, both ways);
//! - different calls: `with_leg` **moves** into `call`. Its worker takes it out of its call
//!   without closing its sockets ([`Command::DetachLeg`]); the worker of `call` registers the
//!   very same sockets ([`Command::AttachLeg`]), so the leg keeps its local ports and the
//!   stream it is sent carries on (same SSRC, next sequence number): the remote party
//!   notices nothing. The leg keeps its name in `call` (or `with_call/with_leg` when the
//!   name is taken there), then both legs are linked.
//!
//! A moved leg stays **owned** by the call that created it (its *origin*: the NG call-id
//! whose offer allocated it, or the native call of its `leg.create`) while it **lives** in
//! another (its *host*). The control task records each move by local RTP port (ports are
//! unique in the engine) and consults the record wherever the origin addresses the leg:
//!
//! - an NG re-offer/answer of the origin updates the leg on its host's worker;
//! - an NG `delete` (or any end) of the origin removes the leg from its host;
//! - `query`/`delete` statistics of the origin include the leg's streams, read from its host;
//! - when the host ends first, the leg ends with it (its sockets close); the origin keeps a
//!   tombstone until it ends, so its later commands for the leg are ignored;
//! - port pairs are always released under the origin's call-id (NG: by the NG state;
//!   native: by the control task when the leg goes).
//!
//! `call.unbridge {call, leg}` unlinks the leg from every leg it hears or is heard by through
//! links (it stays where it is, hearing nobody); moving it back is another `call.bridge`
//! into its origin call, which clears the move.
//!
//! The ACD asks for a bridge with a `task.assigned` event carrying `"bridge": true`:
//! [`watch_assignments`] performs it and publishes `call.bridged` or `bridge.failed`.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_proto::session::{LocalPair, PortAllocator, StreamStats, UnixMicros};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::native::{ErrorCode, OpError};
use super::ports::advertised_rtp;
use super::{Control, Hub, NativeOp, WORKER_ANSWER, not_found, topo_err, wall_now};
use crate::media::topology::Leg;
#[cfg(test)]
use crate::media::topology::Topology;
use crate::worker::{Command, DetachedLeg, LegKey, MediaOp};

/// Longest call or leg name accepted.
const MAX_NAME: usize = crate::media::MAX_NAME;

/// One leg living in a call other than the one that owns it.
#[derive(Debug, Clone)]
pub(super) struct Moved {
    /// The call that owns it (its NG call-id or native call).
    pub origin: String,
    /// The call it lives in now; `None` once that call has ended (and the leg with it).
    pub host: Option<String>,
    /// Its port pair (allocated for the origin).
    pub pair: LocalPair,
    /// Allocated by native `leg.create` (released by the control task), not by NG.
    pub native: bool,
}

/// Legs moved between calls, by local RTP port.
#[derive(Debug, Default)]
pub(super) struct Moves {
    by_port: HashMap<u16, Moved>,
}

impl Moves {
    /// The move record of a port.
    pub fn get(&self, port: u16) -> Option<&Moved> {
        self.by_port.get(&port)
    }

    /// The call a pair was allocated for, if it moved.
    pub fn owner_of(&self, port: u16) -> Option<&str> {
        self.by_port.get(&port).map(|m| m.origin.as_str())
    }

    /// Ports owned by `origin` that live elsewhere (or lived, for tombstones).
    pub fn moved_out_of(&self, origin: &str) -> Vec<u16> {
        self.by_port
            .iter()
            .filter(|(_, m)| m.origin == origin)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Ports living in `host` that another call owns.
    pub fn moved_into(&self, host: &str) -> Vec<u16> {
        self.by_port
            .iter()
            .filter(|(_, m)| m.host.as_deref() == Some(host))
            .map(|(p, _)| *p)
            .collect()
    }

    fn insert(&mut self, port: u16, m: Moved) {
        self.by_port.insert(port, m);
    }

    fn remove(&mut self, port: u16) -> Option<Moved> {
        self.by_port.remove(&port)
    }

    fn set_host(&mut self, port: u16, host: Option<String>) {
        if let Some(m) = self.by_port.get_mut(&port) {
            m.host = host;
        }
    }

    /// Moves recorded (tombstones included).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_port.len()
    }
}

/// `call.bridge`: the two legs to bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeRequest {
    /// The call that keeps (or receives) the legs.
    pub call: String,
    /// Its leg.
    pub leg: String,
    /// The other leg's call.
    pub with_call: String,
    /// The other leg.
    pub with_leg: String,
    /// The ACD task that asked for it, echoed in `call.bridged`.
    pub task: Option<Value>,
}

fn name(req: &Value, key: &str) -> Result<String, OpError> {
    match req.get(key) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_NAME => Ok(s.clone()),
        Some(Value::String(_)) => Err(OpError::new(
            ErrorCode::BadRequest,
            format!("`{key}` must be 1 to {MAX_NAME} characters"),
        )),
        _ => Err(OpError::new(
            ErrorCode::BadRequest,
            format!("missing string field `{key}`"),
        )),
    }
}

impl BridgeRequest {
    /// Parses `call.bridge`.
    pub fn parse(req: &Value) -> Result<Self, OpError> {
        Ok(Self {
            call: name(req, "call")?,
            leg: name(req, "leg")?,
            with_call: name(req, "with_call")?,
            with_leg: name(req, "with_leg")?,
            task: None,
        })
    }

    /// The bridge a `task.assigned` event asks for: one with `"bridge": true`, the
    /// customer's `call`/`leg` and the agent's `agent_call`/`agent_leg`. The agent's leg
    /// moves into the customer's call.
    #[must_use]
    pub fn from_assignment(ev: &Value) -> Option<Self> {
        if ev.get("event").and_then(Value::as_str) != Some("task.assigned")
            || ev.get("bridge").and_then(Value::as_bool) != Some(true)
        {
            return None;
        }
        let field = |k: &str| {
            ev.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty() && s.len() <= MAX_NAME)
                .map(str::to_owned)
        };
        Some(Self {
            call: field("call")?,
            leg: field("leg")?,
            with_call: field("agent_call")?,
            with_leg: field("agent_leg")?,
            task: Some(ev.get("task").cloned().unwrap_or(Value::Null)),
        })
    }
}

/// Why an assignment event asking for a bridge cannot be served, or `None` when it does not
/// ask for one.
#[must_use]
pub fn assignment_problem(ev: &Value) -> Option<&'static str> {
    if ev.get("event").and_then(Value::as_str) != Some("task.assigned")
        || ev.get("bridge").and_then(Value::as_bool) != Some(true)
    {
        return None;
    }
    if BridgeRequest::from_assignment(ev).is_some() {
        return None;
    }
    Some("the assignment lacks `call`, `leg`, `agent_call` or `agent_leg`")
}

impl Hub {
    /// `call.bridge` and `call.unbridge`.
    pub async fn bridge(&self, op: &str, req: &Value) -> Result<Value, OpError> {
        match op {
            "call.bridge" => {
                self.native(NativeOp::Bridge(BridgeRequest::parse(req)?))
                    .await
            }
            _ => {
                self.native(NativeOp::Unbridge {
                    call: name(req, "call")?,
                    leg: name(req, "leg")?,
                })
                .await
            }
        }
    }
}

/// Native ops served here.
pub const OPS: &[&str] = &["call.bridge", "call.unbridge"];

/// Performs the bridges the ACD asks for: every `task.assigned` event with `"bridge": true`
/// (see [`BridgeRequest::from_assignment`]) becomes a `call.bridge`; success is published by
/// the control task as `call.bridged` (with the task), failure here as
/// `bridge.failed {task, reason}`. Runs until the hub's event channel closes.
pub async fn watch_assignments(hub: Hub) {
    use tokio::sync::broadcast::error::RecvError;
    let mut rx = hub.subscribe();
    loop {
        let ev = match rx.recv().await {
            Ok(ev) => ev,
            Err(RecvError::Lagged(n)) => {
                warn!(
                    missed = n,
                    "bridge watcher lagged: assignments may be missed"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if let Some(reason) = assignment_problem(&ev) {
            hub.publish(json!({"event": "bridge.failed",
                "task": ev.get("task").cloned().unwrap_or(Value::Null), "reason": reason}));
            continue;
        }
        let Some(req) = BridgeRequest::from_assignment(&ev) else {
            continue;
        };
        let task = req.task.clone().unwrap_or(Value::Null);
        debug!(
            call = req.call,
            with_call = req.with_call,
            "bridging an assignment"
        );
        if let Err(e) = hub.native(NativeOp::Bridge(req)).await {
            hub.publish(json!({"event": "bridge.failed", "task": task,
                "reason": e.message, "code": e.code.as_str()}));
        }
    }
}

fn conflict(msg: impl Into<String>) -> OpError {
    OpError::new(ErrorCode::Conflict, msg)
}

fn unavailable(msg: impl Into<String>) -> OpError {
    OpError::new(ErrorCode::Unavailable, msg)
}

/// Bridging in the control task.
impl Control {
    /// A leg of a call by name, or `not_found` (for the call or the leg).
    fn leg_in(&self, call: &str, leg: &str) -> Result<LegKey, OpError> {
        let Some(info) = self.calls.get(call) else {
            if self.empty_calls.contains_key(call) {
                return Err(not_found("leg", leg));
            }
            return Err(not_found("call", call));
        };
        info.topo.key_of(leg).ok_or_else(|| not_found("leg", leg))
    }

    /// `call.bridge`.
    pub(super) async fn bridge(&mut self, req: BridgeRequest) -> Result<Value, OpError> {
        let l = self.leg_in(&req.call, &req.leg)?;
        let m = self.leg_in(&req.with_call, &req.with_leg)?;
        if l == m {
            return Err(conflict("a leg cannot be bridged with itself"));
        }
        let name = if req.call == req.with_call {
            let mut topo = self.topo_of(&req.call)?;
            topo.link(l, m);
            self.commit(&req.call, topo).await?;
            req.with_leg.clone()
        } else {
            self.move_leg(&req.with_call, m, &req.call, l).await?
        };
        let legs: Vec<String> = self
            .calls
            .get(&req.call)
            .map(|c| c.topo.legs().map(|l| l.name.clone()).collect())
            .unwrap_or_default();
        self.emit(
            json!({"event": "call.bridged", "call": req.call, "leg": req.leg,
            "with_call": req.with_call, "with_leg": name, "task": req.task}),
        );
        Ok(json!({"call": req.call, "leg": req.leg, "with_leg": name, "legs": legs}))
    }

    /// Moves leg `m` of call `from` into call `to` and links it with `l`; returns its name
    /// in `to`.
    async fn move_leg(
        &mut self,
        from: &str,
        m: LegKey,
        to: &str,
        l: LegKey,
    ) -> Result<String, OpError> {
        let port = u16::try_from(m).map_err(|_| not_found("leg", &m.to_string()))?;
        let (from_worker, from_key) = self
            .calls
            .get(from)
            .map(|c| (c.worker, c.key))
            .ok_or_else(|| not_found("call", from))?;
        let (to_worker, to_key, to_legs) = self
            .calls
            .get(to)
            .map(|c| (c.worker, c.key, c.topo.legs().count()))
            .ok_or_else(|| not_found("call", to))?;
        if to_legs >= crate::media::MAX_LEGS {
            return Err(OpError::new(
                ErrorCode::LimitExceeded,
                format!("a call has at most {} legs", crate::media::MAX_LEGS),
            ));
        }
        // The leg as it is now, with its codecs (an NG leg's are read from its SDP).
        let mut from_topo = self.topo_of(from)?;
        if from_topo.leg(m).is_some_and(|x| x.media.is_none()) {
            self.fill_ng_codecs(from, &mut from_topo);
        }
        let Some(leg) = from_topo.leg(m).cloned() else {
            return Err(not_found("leg", &m.to_string()));
        };
        let to_topo = self.topo_of(to)?;
        let new_name = if to_topo.key_of(&leg.name).is_none() {
            leg.name.clone()
        } else {
            let n = format!("{from}/{}", leg.name);
            if n.len() > 2 * MAX_NAME + 1 || to_topo.key_of(&n).is_some() {
                return Err(conflict(format!(
                    "call `{to}` has a leg `{}` already, and `{n}` too",
                    leg.name
                )));
            }
            n
        };
        let Some(info) = self.calls.get(from) else {
            return Err(not_found("call", from));
        };
        let Some(pair) = info.legs.get(&port).copied() else {
            return Err(conflict(format!(
                "leg `{}` has no media of its own on call `{from}`",
                leg.name
            )));
        };
        let native = info.native_legs.contains_key(&port);

        // Out of its call: topology first (the others stop hearing it), then the sockets.
        let mut left = self.topo_of(from)?;
        left.remove_leg(m);
        let changes = self.plan_ng(from, left).map_err(topo_err)?;
        let _ = self.send_changes(from_worker, from_key, changes, false);
        if let Some(info) = self.calls.get_mut(from) {
            info.legs.remove(&port);
            info.native_legs.remove(&port);
        }
        let detached = self.detach(from_worker, from_key, m).await;
        let Some(detached) = detached else {
            self.leg_lost(from, port, pair, native);
            return Err(unavailable(format!(
                "the media worker of call `{from}` did not hand the leg over"
            )));
        };

        // Into the other call.
        if let Err(back) = self.attach(to_worker, to_key, m, detached).await {
            // Put it back where it was.
            let restored = match back {
                Some(d) => self.attach(from_worker, from_key, m, d).await.is_ok(),
                None => false,
            };
            if restored {
                if let Some(info) = self.calls.get_mut(from) {
                    info.legs.insert(port, pair);
                    if native {
                        info.native_legs.insert(port, pair);
                    }
                }
                let mut topo = self.topo_of(from)?;
                let _ = topo.add_leg(leg);
                if let Ok(changes) = self.plan_ng(from, topo) {
                    let _ = self.send_changes(from_worker, from_key, changes, false);
                }
            } else {
                self.leg_lost(from, port, pair, native);
            }
            return Err(unavailable(format!(
                "the media worker of call `{to}` did not take the leg"
            )));
        }
        if let Some(info) = self.calls.get_mut(to) {
            info.legs.insert(port, pair);
            if native {
                info.native_legs.insert(port, pair);
            }
        }
        // Who owns it: a leg already moved keeps its origin; a leg back home is home.
        let origin = self
            .moves
            .get(port)
            .map_or_else(|| from.to_owned(), |x| x.origin.clone());
        if origin == to {
            self.moves.remove(port);
        } else {
            self.moves.insert(
                port,
                Moved {
                    origin,
                    host: Some(to.to_owned()),
                    pair,
                    native,
                },
            );
        }
        let mut topo = self.topo_of(to)?;
        let mut joined = Leg::new(new_name.clone(), m, leg.media.clone());
        joined.mute = leg.mute;
        joined.deaf = leg.deaf;
        joined.gain_db = leg.gain_db;
        topo.add_leg(joined).map_err(topo_err)?;
        topo.link(l, m);
        if let Err(e) = self.commit(to, topo.clone()).await {
            // Mixing failed (codecs unknown): the leg stays in the call, unlinked.
            warn!(call = to, error = e.message, "bridged leg not linked");
            let mut plain = topo;
            plain.unlink_all(m);
            let _ = self.commit(to, plain).await;
            return Err(e);
        }
        Ok(new_name)
    }

    /// Asks a worker for a leg's sockets.
    async fn detach(
        &self,
        worker: usize,
        call: crate::worker::CallKey,
        leg: LegKey,
    ) -> Option<Box<DetachedLeg>> {
        let h = self.workers.get(worker)?;
        let (reply, rx) = oneshot::channel();
        h.send(Command::DetachLeg { call, leg, reply }).ok()?;
        tokio::time::timeout(WORKER_ANSWER, rx).await.ok()?.ok()?
    }

    /// Hands a detached leg to a worker; on failure the leg comes back when it can.
    async fn attach(
        &self,
        worker: usize,
        call: crate::worker::CallKey,
        leg: LegKey,
        detached: Box<DetachedLeg>,
    ) -> Result<(), Option<Box<DetachedLeg>>> {
        let Some(h) = self.workers.get(worker) else {
            return Err(Some(detached));
        };
        let (reply, rx) = oneshot::channel();
        h.send(Command::AttachLeg {
            call,
            leg,
            detached,
            reply: Some(reply),
        })
        .map_err(|_| None)?;
        match tokio::time::timeout(WORKER_ANSWER + Duration::from_millis(100), rx).await {
            Ok(Ok(res)) => res,
            _ => Err(None),
        }
    }

    /// A leg whose sockets were lost on the way: its native pair goes back to the allocator.
    fn leg_lost(&mut self, from: &str, port: u16, pair: LocalPair, native: bool) {
        warn!(
            call = from,
            port, "a leg was lost while moving between calls"
        );
        let owner = self
            .moves
            .remove(port)
            .map_or_else(|| from.to_owned(), |m| m.origin);
        if native {
            self.ports.release_pair(&owner, &pair);
        }
    }

    /// `call.unbridge`: the leg stops hearing and being heard through links.
    pub(super) async fn unbridge(&mut self, call: &str, leg: &str) -> Result<Value, OpError> {
        let k = self.leg_in(call, leg)?;
        let mut topo = self.topo_of(call)?;
        let unlinked = topo.unlink_all(k);
        self.commit(call, topo).await?;
        let names: Vec<String> = unlinked
            .iter()
            .filter_map(|o| self.calls.get(call)?.topo.leg(*o).map(|l| l.name.clone()))
            .collect();
        let origin = u16::try_from(k)
            .ok()
            .and_then(|p| self.moves.owner_of(p))
            .map(str::to_owned);
        self.emit(json!({"event": "call.unbridged", "call": call, "leg": leg,
            "from": names}));
        Ok(json!({"call": call, "leg": leg, "unlinked": names, "origin": origin}))
    }

    /// An NG relay update naming a leg that moved to another call: every side is updated
    /// where it lives now, and nothing else of the origin's topology changes. Returns false
    /// when no side of `spec` moved.
    pub(super) fn redirect_relay(&mut self, spec: &switchboard_proto::session::RelaySpec) -> bool {
        let moved = spec.sides.iter().any(|s| {
            self.moves
                .get(s.local.rtp_port)
                .is_some_and(|m| m.origin == spec.call_id)
        });
        if !moved {
            return false;
        }
        for side in &spec.sides {
            let port = side.local.rtp_port;
            let config = Self::leg_config(side);
            let target = match self.moves.get(port) {
                Some(m) if m.origin == spec.call_id => match &m.host {
                    Some(h) => h.clone(),
                    None => continue,
                },
                _ => spec.call_id.clone(),
            };
            let known = self
                .calls
                .get(&target)
                .is_some_and(|c| c.legs.contains_key(&port));
            if known {
                if let Some(c) = self.calls.get(&target) {
                    if let Some(h) = self.workers.get(c.worker) {
                        let _ = h.send(Command::UpdateLeg {
                            call: c.key,
                            leg: LegKey::from(port),
                            config,
                        });
                    }
                }
            } else if target == spec.call_id
                && self.create_call(&spec.call_id, side.local.worker).is_some()
            {
                self.add_worker_leg(&spec.call_id, &side.local, config);
            }
        }
        true
    }

    /// Workers to wait for after [`Self::redirect_relay`].
    pub(super) fn hosts_of(&self, call_id: &str) -> Vec<usize> {
        self.moves
            .moved_out_of(call_id)
            .into_iter()
            .filter_map(|p| self.moves.get(p)?.host.clone())
            .filter_map(|h| self.calls.get(&h).map(|c| c.worker))
            .collect()
    }

    /// Removes a moved leg from the call it lives in (its origin ended or dropped it) and
    /// forgets the move; a native pair goes back to the allocator under its origin.
    pub(super) fn remove_moved(&mut self, port: u16) {
        let Some(m) = self.moves.remove(port) else {
            return;
        };
        let k = LegKey::from(port);
        if let Some(host) = &m.host {
            if let Some(info) = self.calls.get_mut(host) {
                info.legs.remove(&port);
                info.native_legs.remove(&port);
                info.topo.remove_leg(k);
                let changes = info.topo.plan().unwrap_or_default();
                let (worker, key) = (info.worker, info.key);
                let _ = self.send_changes(worker, key, changes, false);
                self.send_ops(worker, key, vec![MediaOp::RemoveLeg { leg: k }]);
            }
        }
        if m.native {
            self.ports.release_pair(&m.origin, &m.pair);
        }
    }

    /// A call ends: the legs it owns that live elsewhere leave their hosts (except native
    /// legs when the call timed out: those stay, owned by their hosts); the legs living
    /// in it that others own end with it (native pairs released under their owners, NG
    /// owners keep a tombstone). Returns the native pairs of `call_id` that belong to
    /// other calls, which the caller must not release under `call_id`.
    pub(super) fn end_moves(&mut self, call_id: &str, reason: &str) -> Vec<u16> {
        for port in self.moves.moved_out_of(call_id) {
            let keep = self.moves.get(port).and_then(|m| {
                let host = m.host.clone()?;
                (reason == "timeout" && m.native).then_some((host, m.pair))
            });
            match keep {
                // A media timeout counts only the legs living in the call: a native leg
                // that moved out (and may well be talking) stays where it is, now owned by
                // the call it lives in.
                Some((host, pair)) => {
                    self.moves.remove(port);
                    self.ports.transfer_pair(call_id, &host, &pair);
                }
                None => self.remove_moved(port),
            }
        }
        let mut foreign = Vec::new();
        for port in self.moves.moved_into(call_id) {
            let Some(m) = self.moves.get(port).cloned() else {
                continue;
            };
            if m.native {
                foreign.push(port);
                self.moves.remove(port);
                self.ports.release_pair(&m.origin, &m.pair);
            } else {
                self.moves.set_host(port, None);
            }
        }
        foreign
    }

    /// Drops the move record of a port about to be released by its host's `leg.delete`;
    /// returns the call-id it must be released under.
    pub(super) fn release_owner(&mut self, host: &str, port: u16) -> String {
        self.moves
            .remove(port)
            .map_or_else(|| host.to_owned(), |m| m.origin)
    }

    /// NG statistics of the legs `call_id` owns that live in other calls.
    pub(super) async fn moved_stream_stats(
        &self,
        call_id: &str,
    ) -> HashMap<std::net::SocketAddr, StreamStats> {
        let mut out = HashMap::new();
        let mut hosts: Vec<String> = self
            .moves
            .moved_out_of(call_id)
            .into_iter()
            .filter_map(|p| self.moves.get(p)?.host.clone())
            .collect();
        hosts.sort();
        hosts.dedup();
        for h in hosts {
            let Some(stats) = self.query_worker(&h).await else {
                continue;
            };
            let now = self.now().0;
            let wall = wall_now().0;
            for leg in &stats.legs {
                let Some(m) = u16::try_from(leg.key)
                    .ok()
                    .and_then(|p| self.moves.get(p))
                    .filter(|m| m.origin == call_id)
                else {
                    continue;
                };
                let last = leg.rtp.last_packet_us.max(leg.rtcp.last_packet_us);
                out.insert(
                    advertised_rtp(&m.pair),
                    StreamStats {
                        packets: leg.rtp.packets + leg.rtcp.packets,
                        bytes: leg.rtp.bytes + leg.rtcp.bytes,
                        errors: leg.rtp.errors + leg.rtcp.errors,
                        last_packet: last
                            .map(|t| UnixMicros(wall.saturating_sub(now.saturating_sub(t)))),
                        learned: leg.remote_rtp,
                    },
                );
            }
        }
        out
    }
}

/// Unlinks a leg in a topology (see [`Topology::unlink_all`]); kept here for the tests.
#[cfg(test)]
fn unlink(t: &mut Topology, k: LegKey) -> Vec<LegKey> {
    t.unlink_all(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(port: u16) -> LocalPair {
        LocalPair {
            address: "127.0.0.1".parse().unwrap(),
            rtp_port: port,
            rtcp_port: port + 1,
            worker: 0,
        }
    }

    /// A hub whose control task is the test: requests arrive on the receiver.
    fn fake_hub() -> (Hub, tokio::sync::mpsc::Receiver<super::super::HubRequest>) {
        use std::sync::Arc;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let (events, _) = tokio::sync::broadcast::channel(64);
        let shared = super::super::Shared {
            tx,
            events,
            metrics: crate::metrics::Metrics {
                workers: Arc::from(Vec::<Arc<crate::metrics::WorkerMetrics>>::new()),
                control: Arc::default(),
                recording: None,
            },
            control_token: None,
            http_token: None,
            recordings: None,
            draining: std::sync::atomic::AtomicBool::new(false),
            acd: std::sync::OnceLock::new(),
            prompts: Arc::new(crate::media::prompts::PromptCache::new(
                crate::media::prompts::PromptConfig::default(),
            )),
        };
        (
            Hub {
                shared: Arc::new(shared),
            },
            rx,
        )
    }

    async fn next_event(
        rx: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<Value>>,
        name: &str,
    ) -> Value {
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(2), rx.recv())
                .await
                .unwrap()
                .unwrap();
            if ev["event"] == name {
                return (*ev).clone();
            }
        }
    }

    #[tokio::test]
    async fn the_watcher_bridges_assignments_and_reports_failures() {
        let (hub, mut control) = fake_hub();
        let mut events = hub.subscribe();
        tokio::spawn(watch_assignments(hub.clone()));
        tokio::time::sleep(Duration::from_millis(20)).await;

        // Not a bridge: nothing happens.
        hub.publish(json!({"event": "task.assigned", "task": 1, "call": "c", "leg": "l"}));
        // A bridge: the control task is asked, and its refusal becomes `bridge.failed`.
        hub.publish(json!({"event": "task.assigned", "task": 7, "bridge": true,
            "call": "cust", "leg": "caller", "agent_call": "desk", "agent_leg": "phone"}));
        let req = tokio::time::timeout(Duration::from_secs(2), control.recv())
            .await
            .unwrap()
            .unwrap();
        let super::super::HubRequest::Native {
            op: NativeOp::Bridge(r),
            reply,
        } = req
        else {
            panic!("not a bridge request");
        };
        assert_eq!(
            (
                r.call.as_str(),
                r.leg.as_str(),
                r.with_call.as_str(),
                r.with_leg.as_str()
            ),
            ("cust", "caller", "desk", "phone")
        );
        assert_eq!(r.task, Some(json!(7)));
        let _ = reply.send(Err(OpError::new(ErrorCode::NotFound, "no call `cust`")));
        let failed = next_event(&mut events, "bridge.failed").await;
        assert_eq!(failed["task"], 7, "{failed}");
        assert_eq!(failed["code"], "not_found", "{failed}");

        // A bridge that names no agent leg fails without asking anyone.
        hub.publish(json!({"event": "task.assigned", "task": 8, "bridge": true,
            "call": "cust", "leg": "caller"}));
        let failed = next_event(&mut events, "bridge.failed").await;
        assert_eq!(failed["task"], 8, "{failed}");
        assert!(control.try_recv().is_err());

        // A successful bridge publishes nothing here (the control task emits call.bridged).
        hub.publish(json!({"event": "task.assigned", "task": 9, "bridge": true,
            "call": "cust", "leg": "caller", "agent_call": "desk", "agent_leg": "phone"}));
        let req = tokio::time::timeout(Duration::from_secs(2), control.recv())
            .await
            .unwrap()
            .unwrap();
        let super::super::HubRequest::Native { reply, .. } = req else {
            panic!("not a native request");
        };
        let _ = reply.send(Ok(json!({"call": "cust"})));
        hub.publish(json!({"event": "marker"}));
        let next = next_event(&mut events, "marker").await;
        assert_eq!(next["event"], "marker");
    }

    #[test]
    fn assignments_with_bridge_become_requests() {
        let ev = json!({"event": "task.assigned", "task": "t1", "bridge": true,
            "call": "cust", "leg": "caller", "agent_call": "agent-7", "agent_leg": "phone"});
        let r = BridgeRequest::from_assignment(&ev).unwrap();
        assert_eq!(r.call, "cust");
        assert_eq!(r.leg, "caller");
        assert_eq!(r.with_call, "agent-7");
        assert_eq!(r.with_leg, "phone");
        assert_eq!(r.task, Some(json!("t1")));
        assert_eq!(assignment_problem(&ev), None);
    }

    #[test]
    fn other_events_and_assignments_without_bridge_are_ignored() {
        for ev in [
            json!({"event": "task.assigned", "task": "t1", "call": "c", "leg": "l",
                "agent_call": "a", "agent_leg": "p"}),
            json!({"event": "task.assigned", "bridge": false, "call": "c", "leg": "l",
                "agent_call": "a", "agent_leg": "p"}),
            json!({"event": "task.offered", "bridge": true, "call": "c", "leg": "l",
                "agent_call": "a", "agent_leg": "p"}),
            json!({"event": "call.created", "call": "c"}),
            json!("not an object"),
        ] {
            assert_eq!(BridgeRequest::from_assignment(&ev), None, "{ev}");
            assert_eq!(assignment_problem(&ev), None, "{ev}");
        }
    }

    #[test]
    fn incomplete_or_hostile_assignments_are_problems() {
        let long = "x".repeat(MAX_NAME + 1);
        for ev in [
            json!({"event": "task.assigned", "bridge": true, "task": 3, "call": "c"}),
            json!({"event": "task.assigned", "bridge": true, "call": "c", "leg": "l",
                "agent_call": 5, "agent_leg": "p"}),
            json!({"event": "task.assigned", "bridge": true, "call": "", "leg": "l",
                "agent_call": "a", "agent_leg": "p"}),
            json!({"event": "task.assigned", "bridge": true, "call": long, "leg": "l",
                "agent_call": "a", "agent_leg": "p"}),
        ] {
            assert_eq!(BridgeRequest::from_assignment(&ev), None, "{ev}");
            assert!(assignment_problem(&ev).is_some(), "{ev}");
        }
    }

    #[test]
    fn requests_parse_and_refuse_bad_fields() {
        let r = BridgeRequest::parse(
            &json!({"op": "call.bridge", "call": "a", "leg": "x", "with_call": "b", "with_leg": "y"}),
        )
        .unwrap();
        assert_eq!((r.call.as_str(), r.with_leg.as_str()), ("a", "y"));
        for bad in [
            json!({"call": "a", "leg": "x", "with_call": "b"}),
            json!({"call": "a", "leg": "x", "with_call": "b", "with_leg": 7}),
            json!({"call": "a", "leg": "", "with_call": "b", "with_leg": "y"}),
        ] {
            let e = BridgeRequest::parse(&bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{bad}");
        }
    }

    #[test]
    fn moves_track_owner_and_host() {
        let mut m = Moves::default();
        m.insert(
            30000,
            Moved {
                origin: "agent".into(),
                host: Some("cust".into()),
                pair: pair(30000),
                native: false,
            },
        );
        assert_eq!(m.owner_of(30000), Some("agent"));
        assert_eq!(m.moved_out_of("agent"), vec![30000]);
        assert_eq!(m.moved_into("cust"), vec![30000]);
        assert!(m.moved_into("agent").is_empty());
        m.set_host(30000, None);
        assert!(m.moved_into("cust").is_empty());
        assert_eq!(m.moved_out_of("agent"), vec![30000]);
        assert!(m.remove(30000).is_some());
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn unlinking_a_bridged_leg_leaves_the_others_linked() {
        let mut t = Topology::new(10);
        for (n, k) in [("a", 1), ("b", 2), ("c", 3)] {
            t.add_leg(Leg::new(n, k, None)).unwrap();
        }
        t.link(1, 2);
        t.link(1, 3);
        t.link(2, 3);
        let mut gone = unlink(&mut t, 3);
        gone.sort_unstable();
        assert_eq!(gone, vec![1, 2]);
        let rows = t.matrix();
        assert_eq!(rows[&1].iter().copied().collect::<Vec<_>>(), vec![2]);
        assert!(rows[&3].is_empty());
    }
}
