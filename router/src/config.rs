//! Router, queue, agent and task definitions.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::RouterError;
use crate::expr::SkillExpr;
use crate::types::{AgentId, Channel, LegId, PerChannel, Priority, QueueId, SkillId, TaskId};

/// The most routing steps one queue may have.
pub const MAX_STEPS: usize = 64;

/// The highest aging rate, in priority points per minute of waiting.
pub const MAX_AGING_PER_MINUTE: u32 = 1_000_000;

/// Router-wide settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// After this many offers in a row time out, the agent is set away with
    /// [`AwayReason::MissedOffers`](crate::AwayReason::MissedOffers). 0 turns this off.
    pub max_missed_offers: u32,
    /// How many times a task may overflow before it leaves with
    /// [`LeaveReason::OverflowLimit`](crate::LeaveReason::OverflowLimit).
    pub max_overflow_hops: u8,
    /// Most live tasks.
    pub max_tasks: usize,
    /// Most agents.
    pub max_agents: usize,
    /// Most queues.
    pub max_queues: usize,
    /// Length of the sliding statistics window, in milliseconds.
    pub stats_window_ms: u64,
    /// Number of buckets the window is kept in (its resolution).
    pub stats_buckets: u16,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            max_missed_offers: 3,
            max_overflow_hops: 8,
            max_tasks: 2_000_000,
            max_agents: 200_000,
            max_queues: 10_000,
            stats_window_ms: 15 * 60 * 1000,
            stats_buckets: 15,
        }
    }
}

/// How a queue picks among the agents eligible for a task.
///
/// Every strategy breaks ties by longest idle, then by the order agents were first added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The agent whose capacity was freed longest ago (for a voice-only agent: idle longest).
    #[default]
    LongestIdle,
    /// The highest sum of levels in the skills the current step asks for positively (see
    /// [`SkillExpr::positive_skills`]).
    MostSkilled,
    /// The lowest current load, as the sum over channels of load / capacity.
    LeastOccupied,
    /// The agent offered a task least recently (by any queue), so offers rotate.
    RoundRobin,
    /// The agent that has completed the fewest tasks since it was added.
    FewestTasks,
    /// Offer the task to every eligible agent at once; the first accept wins and the other
    /// offers are rescinded.
    RingAll,
}

/// One routing step: while a task's wait in the queue is inside this step, agents matching
/// `expr` are eligible. When the step expires the task moves to the next step (usually a
/// wider expression) and keeps its place in line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingStep {
    /// Who may take the task during this step.
    pub expr: SkillExpr,
    /// How long this step lasts; `None` (only for the last step) means until the task leaves.
    pub expires_after_ms: Option<u64>,
}

/// Where a task goes when it leaves a queue early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitAction {
    /// The task ends with a [`LeaveReason`](crate::LeaveReason).
    Leave,
    /// The task moves to this queue.
    Overflow(QueueId),
}

/// Layer 3, emotion: agitated customers go to soothing agents for a while.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmotionPolicy {
    /// A task whose agitation is above this (0..=1) is agitated.
    pub threshold: f32,
    /// While the policy applies, only agents with `soothing >= min_soothing` (1..=5) are
    /// eligible, on top of the step's skills.
    pub min_soothing: u8,
    /// How long the policy applies, counted from the moment the task is first seen agitated
    /// while waiting. Afterwards the task falls back to plain skills for good.
    pub window_ms: u64,
}

/// A queue's definition. Build with [`QueueConfig::new`] and adjust the public fields.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    /// The queue's id.
    pub id: QueueId,
    /// Routing steps, widening over the wait.
    pub steps: Vec<RoutingStep>,
    /// Agent selection.
    pub strategy: Strategy,
    /// The service-level target T: a task answered within this many milliseconds of entering
    /// the queue counts as answered in time.
    pub service_level_ms: u64,
    /// Priority points a waiting task gains per minute of waiting (0 = no aging). See the
    /// crate docs for the ordering this gives.
    pub aging_per_minute: u32,
    /// After waiting this long in the queue, the task leaves or overflows.
    pub max_wait: Option<(u64, ExitAction)>,
    /// What happens to tasks when no eligible agent is logged in (not offline): `None` waits.
    /// Applied on entry and when the last agent logs out.
    pub when_no_agents: Option<ExitAction>,
    /// The most tasks that may wait (or be offered) in this queue; more are refused with
    /// [`RouterError::QueueFull`].
    pub max_length: Option<u32>,
    /// How long an agent stays in wrap-up on the task's channel after completing a task.
    pub wrap_up_ms: u64,
    /// How long an offer may stay unanswered (at least 1 ms). An offer whose deadline
    /// saturates to [`Timestamp::END`](crate::Timestamp::END) never times out.
    pub offer_timeout_ms: u64,
    /// After rejecting or missing an offer from this queue, the agent gets no offers for
    /// this long.
    pub reject_delay_ms: u64,
    /// Layer 3, emotion.
    pub emotion: Option<EmotionPolicy>,
}

impl QueueConfig {
    /// A queue with one step matching every agent, longest-idle selection, a 20 s service
    /// level target, aging of one point per minute, 20 s offers, 5 s reject delay and no
    /// wrap-up.
    #[must_use]
    pub fn new(id: QueueId) -> Self {
        QueueConfig {
            id,
            steps: vec![RoutingStep {
                expr: SkillExpr::Any,
                expires_after_ms: None,
            }],
            strategy: Strategy::LongestIdle,
            service_level_ms: 20_000,
            aging_per_minute: 1,
            max_wait: None,
            when_no_agents: None,
            max_length: None,
            wrap_up_ms: 0,
            offer_timeout_ms: 20_000,
            reject_delay_ms: 5_000,
            emotion: None,
        }
    }

    /// This queue with a single step.
    #[must_use]
    pub fn with_expr(mut self, expr: SkillExpr) -> Self {
        self.steps = vec![RoutingStep {
            expr,
            expires_after_ms: None,
        }];
        self
    }
}

/// An agent's definition. Upserting an agent keeps its status, state and tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent's id.
    pub id: AgentId,
    /// Skills with levels 1..=5.
    pub skills: Vec<(SkillId, u8)>,
    /// How well the agent calms agitated customers, 0..=5.
    #[serde(default)]
    pub soothing: u8,
    /// How many tasks of each channel the agent handles at once (reservations and wrap-up
    /// count). Lowering it below the current load revokes nothing; the agent just gets no
    /// new offers on that channel until the load drops under it.
    pub capacity: PerChannel<u8>,
}

impl AgentConfig {
    /// An agent with no skills, no soothing, and capacity 1 for voice only.
    #[must_use]
    pub fn new(id: AgentId) -> Self {
        AgentConfig {
            id,
            skills: Vec::new(),
            soothing: 0,
            capacity: PerChannel {
                voice: 1,
                ..PerChannel::default()
            },
        }
    }
}

/// A preferred agent for a task (the last agent who spoke to this customer, say): only that
/// agent is offered the task until the timeout, then normal routing applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferredAgent {
    /// The agent.
    pub agent: AgentId,
    /// How long to wait for that agent, from entering the queue.
    pub timeout_ms: u64,
}

/// A task to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// The task's id, unique among live tasks.
    pub id: TaskId,
    /// The queue to enter.
    pub queue: QueueId,
    /// The medium.
    pub channel: Channel,
    /// Base priority (layer 2, customer value).
    pub priority: Priority,
    /// 0 (calm) to 1 (furious); see [`EmotionPolicy`].
    pub agitation: f32,
    /// Extra skills this task needs on top of the queue's steps.
    pub required: Option<SkillExpr>,
    /// A preferred agent.
    pub preferred: Option<PreferredAgent>,
    /// The customer's call leg, for voice tasks.
    pub customer_leg: Option<LegId>,
    /// Opaque context handed to the agent with the offer (a ticket, say).
    pub context: Arc<str>,
}

impl NewTask {
    /// A voice task with priority 0, calm, no extras.
    #[must_use]
    pub fn new(id: TaskId, queue: QueueId) -> Self {
        NewTask {
            id,
            queue,
            channel: Channel::Voice,
            priority: Priority(0),
            agitation: 0.0,
            required: None,
            preferred: None,
            customer_leg: None,
            context: Arc::from(""),
        }
    }
}

/// Customer-value tags (`vip`, `high_net_worth`, `long_standing`) mapped to priority points;
/// a task's priority is the sum of its tags' points.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ValueTags(pub BTreeMap<String, u32>);

impl ValueTags {
    /// The priority for these tags.
    ///
    /// # Errors
    /// [`RouterError::UnknownTag`] for a tag with no mapping.
    pub fn priority<'a>(
        &self,
        tags: impl IntoIterator<Item = &'a str>,
    ) -> Result<Priority, RouterError> {
        let mut sum = 0u32;
        for tag in tags {
            let points = self.0.get(tag).ok_or_else(|| RouterError::UnknownTag {
                tag: tag.to_owned(),
            })?;
            sum = sum.saturating_add(*points);
        }
        Ok(Priority(sum))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_tags_sum() {
        let tags = ValueTags(
            [("vip".to_owned(), 100), ("long_standing".to_owned(), 20)]
                .into_iter()
                .collect(),
        );
        assert_eq!(tags.priority(["vip", "long_standing"]), Ok(Priority(120)));
        assert_eq!(tags.priority([]), Ok(Priority(0)));
        assert!(matches!(
            tags.priority(["gold"]),
            Err(RouterError::UnknownTag { .. })
        ));
    }
}
