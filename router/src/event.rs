//! Events: every transition the router makes, in one total order.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::types::{AgentId, Channel, LegId, Priority, QueueId, TaskId, Timestamp};

/// An agent's own choice: whether it wants work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Ready for offers.
    Available,
    /// Logged in but taking no new offers, in every queue. Tasks in hand continue.
    Away {
        /// Why.
        reason: AwayReason,
    },
    /// Logged out. Tasks in hand continue.
    Offline,
}

impl Status {
    /// Whether the agent takes offers.
    #[must_use]
    pub fn is_available(&self) -> bool {
        matches!(self, Status::Available)
    }

    /// Whether the agent is logged in (available or away).
    #[must_use]
    pub fn is_logged_in(&self) -> bool {
        !matches!(self, Status::Offline)
    }
}

/// Why an agent is away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AwayReason {
    /// The agent's own reason code (break, lunch, training …).
    Code(String),
    /// The router set the agent away after too many offers in a row timed out.
    MissedOffers,
}

/// What the router did with an agent (as opposed to [`Status`], the agent's choice). For an
/// agent handling several tasks at once this is the most engaged of them: busy over reserved
/// over wrap-up over idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// No tasks, offers or wrap-up.
    Idle,
    /// Holding at least one offer, handling no task.
    Reserved,
    /// Handling at least one task.
    Busy,
    /// Only wrapping up.
    WrapUp,
}

/// Why outstanding offers were withdrawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RescindReason {
    /// Ring-all: another agent accepted first.
    AcceptedElsewhere,
    /// The task ended (hang-up, cancel, leave).
    TaskEnded,
    /// The task overflowed to another queue.
    Overflowed,
    /// The agent went away or offline, or was removed.
    AgentUnavailable,
}

/// Why a task left its queue without being answered (other than a hang-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LeaveReason {
    /// It waited the queue's maximum wait.
    MaxWait,
    /// No eligible agent was logged in.
    NoAgents,
    /// It overflowed more often than allowed, or into a full queue.
    OverflowLimit,
}

/// One router transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A task entered a queue (on enqueue or overflow).
    TaskQueued {
        /// The task.
        task: TaskId,
        /// The queue.
        queue: QueueId,
        /// Its channel.
        channel: Channel,
        /// Its base priority.
        priority: Priority,
    },
    /// A waiting task moved to the next routing step of its queue.
    TaskStepChanged {
        /// The task.
        task: TaskId,
        /// The queue.
        queue: QueueId,
        /// The new step's index.
        step: u16,
    },
    /// A task was reserved for an agent, who must accept or reject it before `expires_at`.
    TaskOffered {
        /// The task.
        task: TaskId,
        /// The agent.
        agent: AgentId,
        /// The queue.
        queue: QueueId,
        /// The channel.
        channel: Channel,
        /// When the offer times out.
        expires_at: Timestamp,
        /// The task's context blob, for the agent's desk.
        context: Arc<str>,
    },
    /// The agent accepted the offer.
    OfferAccepted {
        /// The task.
        task: TaskId,
        /// The agent.
        agent: AgentId,
    },
    /// The agent rejected the offer; the task is back in its place in line.
    OfferRejected {
        /// The task.
        task: TaskId,
        /// The agent.
        agent: AgentId,
    },
    /// The offer was not answered in time; the task is back in its place in line.
    OfferTimedOut {
        /// The task.
        task: TaskId,
        /// The agent.
        agent: AgentId,
    },
    /// The router withdrew an outstanding offer.
    OfferRescinded {
        /// The task.
        task: TaskId,
        /// The agent.
        agent: AgentId,
        /// Why.
        reason: RescindReason,
    },
    /// The task now belongs to the agent: everything needed to bridge the customer.
    TaskAssigned {
        /// The task.
        task: TaskId,
        /// The agent.
        agent: AgentId,
        /// The queue.
        queue: QueueId,
        /// The channel.
        channel: Channel,
        /// The customer's leg, if the task named one.
        customer_leg: Option<LegId>,
        /// Milliseconds from entering the queue to the accept.
        waited_ms: u64,
    },
    /// The task moved to another queue.
    TaskOverflowed {
        /// The task.
        task: TaskId,
        /// The queue it left.
        from: QueueId,
        /// The queue it entered.
        to: QueueId,
    },
    /// End: the customer hung up or the task was cancelled before it was assigned.
    TaskAbandoned {
        /// The task.
        task: TaskId,
        /// The queue.
        queue: QueueId,
        /// Milliseconds waited in the queue.
        waited_ms: u64,
    },
    /// End: the task left its queue unanswered.
    TaskLeft {
        /// The task.
        task: TaskId,
        /// The queue.
        queue: QueueId,
        /// Why.
        reason: LeaveReason,
        /// Milliseconds waited in the queue.
        waited_ms: u64,
    },
    /// End: the agent finished the task (wrap-up may follow).
    TaskCompleted {
        /// The task.
        task: TaskId,
        /// The agent.
        agent: AgentId,
        /// The queue.
        queue: QueueId,
    },
    /// An agent's status changed (by the agent, or by the router after missed offers).
    AgentStatusChanged {
        /// The agent.
        agent: AgentId,
        /// The new status.
        status: Status,
    },
    /// An agent's state changed.
    AgentStateChanged {
        /// The agent.
        agent: AgentId,
        /// The new state.
        state: AgentState,
    },
}

impl Event {
    /// The task this event is about, if any.
    #[must_use]
    pub fn task(&self) -> Option<TaskId> {
        match self {
            Event::TaskQueued { task, .. }
            | Event::TaskStepChanged { task, .. }
            | Event::TaskOffered { task, .. }
            | Event::OfferAccepted { task, .. }
            | Event::OfferRejected { task, .. }
            | Event::OfferTimedOut { task, .. }
            | Event::OfferRescinded { task, .. }
            | Event::TaskAssigned { task, .. }
            | Event::TaskOverflowed { task, .. }
            | Event::TaskAbandoned { task, .. }
            | Event::TaskLeft { task, .. }
            | Event::TaskCompleted { task, .. } => Some(*task),
            Event::AgentStatusChanged { .. } | Event::AgentStateChanged { .. } => None,
        }
    }

    /// Whether this event ends its task (completed, abandoned or left). Every task ends
    /// exactly once.
    #[must_use]
    pub fn is_task_end(&self) -> bool {
        matches!(
            self,
            Event::TaskCompleted { .. } | Event::TaskAbandoned { .. } | Event::TaskLeft { .. }
        )
    }
}

/// An [`Event`] with its place in the router's total order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Sequence number: 0, 1, 2, … without gaps.
    pub seq: u64,
    /// The router time of the transition.
    pub at: Timestamp,
    /// The transition.
    pub event: Event,
}
