//! `fork.*` and `analytics.*`: media forks and conversation analytics on a call's decoded
//! audio (see `docs/fork.md` and `docs/control-protocol.md`). The control task keeps the
//! fork sessions (on its runtime) and the analytics settings; the call's worker runs the
//! per-frame side ([`crate::media::taps`]). Both put the call into mixing while they run.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_codecs::analytics::AnalyticsSummary;
use tokio::sync::mpsc;
use tracing::warn;

use super::native::{ErrorCode, OpError};
use super::{Control, not_found};
use crate::fork::{ForkConfig, ForkHandle, ForkLeg, ForkSession, StartMessage, analytics_json};
use crate::media::{AnalyticsRequest, ForkRequest};
use crate::worker::{LegKey, MediaOp};

/// Forked audio buffered on the media side, ms.
const FORK_AUDIO_MS: u32 = 400;
/// Bot audio buffered on the media side, ms.
const FORK_BOT_MS: u32 = 2000;
/// Events of one fork buffered before they are dropped (and counted).
const FORK_EVENTS: usize = 256;
/// Party names of the analytics.
pub(super) const PARTIES: [&str; 2] = ["caller", "agent"];

/// A fork the control task runs.
#[derive(Debug)]
pub(super) struct ForkRun {
    /// The worker's id of the fork.
    pub id: u32,
    pub handle: ForkHandle,
}

/// Analytics running on a call.
#[derive(Debug, Clone)]
pub(super) struct AnalyticsRun {
    pub update_task: Option<u64>,
    pub tenant: Option<String>,
}

fn decoded_name_fork(id: &str) -> String {
    format!("fork:{id}")
}

const DECODED_ANALYTICS: &str = "analytics";

impl Control {
    /// Resolves the caller and agent legs: the names given, else the call's first leg and
    /// the first other leg.
    fn parties(
        &self,
        call: &str,
        caller: Option<&str>,
        agent: Option<&str>,
    ) -> Result<(Option<LegKey>, Option<LegKey>), OpError> {
        let c = match caller {
            Some(n) => Some(self.find_leg(call, n)?),
            None => None,
        };
        let a = match agent {
            Some(n) => Some(self.find_leg(call, n)?),
            None => None,
        };
        let Some(info) = self.calls.get(call) else {
            return Err(not_found("call", call));
        };
        let keys: Vec<LegKey> = info.topo.legs().map(|l| l.key).collect();
        let c = c.or_else(|| keys.iter().copied().find(|k| Some(*k) != a));
        let a = a.or_else(|| keys.iter().copied().find(|k| Some(*k) != c));
        Ok((c, a))
    }

    /// `fork.start`.
    pub(super) async fn fork_start(&mut self, req: ForkRequest) -> Result<Value, OpError> {
        let call = req.call.clone();
        let (caller, agent) = self.parties(&call, req.caller.as_deref(), req.agent.as_deref())?;
        let bot_leg = if req.bot {
            match &req.to {
                Some(n) => Some(self.find_leg(&call, n)?),
                None => caller,
            }
        } else {
            None
        };
        let Some(info) = self.calls.get_mut(&call) else {
            return Err(not_found("call", &call));
        };
        let n = info.next_fork;
        info.next_fork = info.next_fork.wrapping_add(1).max(1);
        let fork_id = format!("fork-{n}");
        let name = |k: Option<LegKey>| {
            k.and_then(|k| info.topo.leg(k))
                .map(|l| l.name.clone())
                .unwrap_or_default()
        };
        let codec = |k: LegKey| {
            info.topo
                .leg(k)
                .and_then(|l| l.media.as_ref())
                .map_or_else(String::new, |m| {
                    format!("{}/{}", m.send.kind.encoding_name(), m.send.clock_rate)
                })
        };
        let mut legs = Vec::new();
        for (k, role) in [(caller, "caller"), (agent, "agent")] {
            if let Some(k) = k {
                legs.push(ForkLeg {
                    id: name(Some(k)),
                    role: role.to_owned(),
                    codec: codec(k),
                });
            }
        }
        let start = StartMessage {
            fork: fork_id.clone(),
            call: call.clone(),
            legs,
            what: req.what,
            sample_rate: req.rate,
            bot_leg: bot_leg.map(|k| name(Some(k))),
            metadata: req.metadata.clone(),
        };
        let config = ForkConfig::new(
            fork_id.clone(),
            req.url.clone(),
            req.rate,
            req.what.channels(),
        );
        config
            .validate()
            .map_err(|e| OpError::new(ErrorCode::BadRequest, e.to_string()))?;
        // Mixing first, so the worker has decoded audio for the fork.
        let mut topo = info.topo.clone();
        topo.add_decoded_user(&decoded_name_fork(&fork_id));
        self.commit(&call, topo).await?;

        let (media, side) = crate::fork::pipes(&config, FORK_AUDIO_MS, FORK_BOT_MS);
        let (tx, mut rx) = mpsc::channel::<Value>(FORK_EVENTS);
        let hub = self.hub.clone();
        let call_name = call.clone();
        tokio::spawn(async move {
            while let Some(mut ev) = rx.recv().await {
                if let Some(o) = ev.as_object_mut() {
                    o.insert("call".into(), Value::String(call_name.clone()));
                }
                hub.publish(ev);
            }
        });
        let handle = ForkSession::spawn(
            &tokio::runtime::Handle::current(),
            config,
            start.to_json(),
            side,
            tx,
        )
        .map_err(|e| OpError::new(ErrorCode::BadRequest, e.to_string()));
        let handle = match handle {
            Ok(h) => h,
            Err(e) => {
                self.release_decoded(&call, &decoded_name_fork(&fork_id));
                return Err(e);
            }
        };
        let Some((worker, key)) = self.calls.get(&call).map(|c| (c.worker, c.key)) else {
            return Err(not_found("call", &call));
        };
        let op = MediaOp::ForkStart {
            id: n,
            caller,
            agent,
            what: req.what,
            sample_rate: req.rate,
            bot_leg,
            media: Box::new(media),
        };
        if let Err(e) = self.send_ops_wait(worker, key, vec![op]).await {
            handle.stop();
            self.release_decoded(&call, &decoded_name_fork(&fork_id));
            return Err(e);
        }
        if let Some(info) = self.calls.get_mut(&call) {
            info.forks
                .insert(fork_id.clone(), ForkRun { id: n, handle });
        }
        self.emit(
            json!({"event": "fork.started", "call": call, "fork": fork_id,
            "url": req.url, "what": req.what.as_str(), "rate": req.rate}),
        );
        Ok(json!({"call": call, "fork": fork_id}))
    }

    /// `fork.stop`: one fork, or all of the call's.
    pub(super) async fn fork_stop(
        &mut self,
        call: &str,
        fork: Option<&str>,
    ) -> Result<Value, OpError> {
        let Some(info) = self.calls.get_mut(call) else {
            return Err(not_found("call", call));
        };
        let ids: Vec<String> = match fork {
            Some(f) if info.forks.contains_key(f) => vec![f.to_owned()],
            Some(f) => return Err(not_found("fork", f)),
            None => info.forks.keys().cloned().collect(),
        };
        let mut ops = Vec::new();
        for id in &ids {
            if let Some(run) = info.forks.remove(id) {
                run.handle.stop();
                ops.push(MediaOp::ForkStop { id: run.id });
            }
        }
        let (worker, key) = (info.worker, info.key);
        self.send_ops(worker, key, ops);
        for id in &ids {
            self.release_decoded(call, &decoded_name_fork(id));
        }
        Ok(json!({"call": call, "stopped": ids}))
    }

    /// Drops a user of the call's decoded audio; the call may go back to relaying.
    fn release_decoded(&mut self, call: &str, name: &str) {
        let Some(info) = self.calls.get_mut(call) else {
            return;
        };
        if !info.topo.remove_decoded_user(name) {
            return;
        }
        if let Ok(changes) = info.topo.plan() {
            let (worker, key) = (info.worker, info.key);
            let _ = self.send_changes(worker, key, changes, false);
        }
    }

    /// Forks whose session ended by itself (service closed, gave up): the worker has
    /// dropped them; the call stops mixing for them.
    pub(super) fn reap_forks(&mut self) {
        let mut done = Vec::new();
        for (call, info) in &mut self.calls {
            let ended: Vec<String> = info
                .forks
                .iter()
                .filter(|(_, r)| r.handle.is_finished())
                .map(|(id, _)| id.clone())
                .collect();
            for id in ended {
                if let Some(run) = info.forks.remove(&id) {
                    done.push((call.clone(), id, run.id, info.worker, info.key));
                }
            }
        }
        for (call, id, n, worker, key) in done {
            self.send_ops(worker, key, vec![MediaOp::ForkStop { id: n }]);
            self.release_decoded(&call, &decoded_name_fork(&id));
        }
    }

    /// `analytics.start`.
    pub(super) async fn analytics_start(
        &mut self,
        req: AnalyticsRequest,
    ) -> Result<Value, OpError> {
        let call = req.call.clone();
        let (caller, agent) = self.parties(&call, req.caller.as_deref(), req.agent.as_deref())?;
        let mut topo = self.topo_of(&call)?;
        topo.add_decoded_user(DECODED_ANALYTICS);
        self.commit(&call, topo).await?;
        let Some((worker, key)) = self.calls.get(&call).map(|c| (c.worker, c.key)) else {
            return Err(not_found("call", &call));
        };
        let op = MediaOp::AnalyticsStart {
            caller,
            agent,
            interval_ms: req.interval_ms,
        };
        if let Err(e) = self.send_ops_wait(worker, key, vec![op]).await {
            self.release_decoded(&call, DECODED_ANALYTICS);
            return Err(e);
        }
        let names = self.calls.get_mut(&call).map(|info| {
            info.analytics = Some(AnalyticsRun {
                update_task: req.update_task,
                tenant: req.tenant.clone(),
            });
            let name = |k: Option<LegKey>| k.and_then(|k| info.topo.leg(k)).map(|l| l.name.clone());
            (name(caller), name(agent))
        });
        let (caller, agent) = names.unwrap_or_default();
        Ok(json!({"call": call, "caller": caller, "agent": agent,
            "interval_ms": req.interval_ms, "update_task": req.update_task}))
    }

    /// `analytics.stop`: the final summary follows as an `analytics` event with `final`.
    pub(super) async fn analytics_stop(&mut self, call: &str) -> Result<Value, OpError> {
        let Some(info) = self.calls.get_mut(call) else {
            return Err(not_found("call", call));
        };
        if info.analytics.take().is_none() {
            return Err(not_found("analytics of call", call));
        }
        let (worker, key) = (info.worker, info.key);
        self.send_ops_wait(worker, key, vec![MediaOp::AnalyticsStop])
            .await?;
        self.release_decoded(call, DECODED_ANALYTICS);
        Ok(json!({"call": call}))
    }

    /// A summary from the worker: an `analytics` event; kept for `call.ended`; the caller's
    /// agitation goes to the ACD task when asked.
    pub(super) fn on_analytics(&mut self, call: u64, summary: &AnalyticsSummary, last: bool) {
        let Some(call_id) = self.by_key.get(&call).cloned() else {
            return;
        };
        let figures = analytics_json(summary, &PARTIES);
        let update = self.calls.get_mut(&call_id).and_then(|info| {
            info.last_analytics = Some(figures.clone());
            info.analytics.clone()
        });
        self.emit(json!({"event": "analytics", "call": call_id, "final": last,
            "analytics": figures}));
        let agitation = summary
            .parties()
            .first()
            .and_then(|p| p.agitation)
            .filter(|a| a.is_finite());
        if let (Some(run), Some(a), false) = (update, agitation, last) {
            if let Some(task) = run.update_task {
                let hub = self.hub.clone();
                let mut req = json!({"task": task, "agitation": f64::from(a.clamp(0.0, 1.0))});
                if let (Some(t), Some(o)) = (run.tenant, req.as_object_mut()) {
                    o.insert("tenant".into(), Value::String(t));
                }
                // On its own task: the ACD answers through the hub, never wait for it here.
                tokio::spawn(async move {
                    let res = tokio::time::timeout(
                        Duration::from_secs(2),
                        crate::acd::native_op(&hub, "task.update", &req),
                    )
                    .await;
                    if let Ok(Err(e)) = res {
                        warn!(task, "analytics: task.update refused: {}", e.message);
                    }
                });
            }
        }
    }
}

/// The call ends: its worker drops the forks' rings, which ends each session with
/// `media_ended`; the handles are kept a little longer so that is what the service is told
/// (dropping a handle stops its session with `stopped`).
pub(super) fn end_forks(forks: HashMap<String, ForkRun>) {
    if forks.is_empty() {
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        for run in forks.values() {
            run.handle.stop();
        }
    });
}
