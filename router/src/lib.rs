//! # switchboard-router
//!
//! The ACD router: queues, agents, tasks, skills, priorities and offers, as a pure,
//! deterministic state machine with no I/O and no clock (time is an argument). The engine
//! runs one [`Router`] per shard on one thread; nothing here spawns, locks or reads a clock
//! (this crate's `clippy.toml` bans it).
//!
//! ## Drive contract
//!
//! Like str0m: **mutate** with `Router::handle_*(now, …)`, **drain**
//! [`Router::poll_event`] until `None`, **wait** until [`Router::poll_timeout`] and call
//! [`Router::handle_timeout`]. Every transition is an [`Event`] with a sequence number in one
//! total order. The same inputs at the same times give the same events, whatever the
//! caller's polling cadence (timers fire at their own deadlines).
//!
//! ## Model
//!
//! * **Agents** have skills with levels 1–5, a `soothing` level, and a capacity per
//!   [`Channel`]. Their [`Status`] (available, away with a reason, offline) is their own
//!   choice; their [`AgentState`] (idle, reserved, busy, wrap-up) is what the router did.
//!   Offers, tasks in hand and wrap-ups all count against the channel's capacity.
//! * **Queues** ([`QueueConfig`]) hold routing steps, each a [`SkillExpr`] with an expiry
//!   (layer 1, skills): while a task's wait is inside a step, agents matching its expression
//!   are eligible; when it expires the next step applies and the task keeps its place in
//!   line.
//! * **Tasks** carry a base [`Priority`] (layer 2, customer value) that ages with wait, and
//!   an `agitation` (layer 3, emotion) that sends them to soothing agents for a bounded time
//!   (see [`EmotionPolicy`]). Both can change while the task waits.
//! * **Offers** reserve an agent with a timeout. Accept assigns; reject or timeout puts the
//!   task back in its old place and gives the agent the queue's reject delay; after
//!   [`RouterConfig::max_missed_offers`] timeouts in a row the agent is set away. A cancel
//!   ends the task and all its offers at once. Completion starts the queue's wrap-up.
//!
//! ## Ordering, aging and why it is indexable
//!
//! A waiting task's effective priority at time `now` is
//!
//! ```text
//! effective(now) = priority + rate × (now − created_at)        (rate: points per minute)
//! ```
//!
//! Within a queue every task ages at the same rate, so comparing two tasks at any time gives
//! `priority_a − rate·created_a  vs  priority_b − rate·created_b`: `now` cancels out. The
//! router therefore keeps each queue's tasks in ordered sets keyed by the time-invariant
//! `priority·60000 − rate·created_at_ms` (integers, 1/60000 point per unit, so a rate in
//! points per minute is whole units per millisecond), then by enqueue order (first come,
//! first served among equals). The order never needs refreshing as time passes; a priority
//! change re-inserts one task. Across queues with different rates the router compares the
//! head of each set at `now`. With a positive rate no task starves: a task created at `c`
//! with priority `p` is ahead of every task created after `c + (P_max − p)/rate` minutes, so
//! only finitely many tasks can pass it.
//!
//! A task's place in line uses its *first* enqueue time, also after an overflow; its routing
//! steps, maximum wait and service-level clock restart in each queue it enters.
//!
//! ## Matching and its indexes
//!
//! Eligibility of an agent for a task depends only on the task's queue, step, emotion
//! phase, channel and (rarely) its own extra requirement, and on the agent's skills,
//! soothing, status and free capacity. So:
//!
//! * waiting tasks live in *lanes* per (queue, step, emotion phase, channel) — plus lanes
//!   per extra requirement and per preferred agent — each ordered as above;
//! * agents that take offers and have room live in *pools* per (queue, step, emotion phase,
//!   channel), ordered by the queue's [`Strategy`]; an agent's memberships are computed when
//!   its skills or the queue change, never per decision.
//!
//! A new waiting task takes the first agent of its pool (or every agent, for ring-all); an
//! agent that gets room compares only the heads of the lanes it belongs to. Neither scans
//! agents or tasks. After every input no waiting task has an eligible agent that could take
//! it, and every offer goes to the best task for that agent and the best agent for that
//! task, in that order of precedence. Agents freed by the same input look for work in the
//! order they were freed.
//!
//! ## Also here
//!
//! * [`QueueStats`]: live and sliding-window statistics, and
//!   [`Router::expected_wait`] for position announcements.
//! * [`staffing`]: Erlang B, C and A forecasts.

#![warn(missing_docs)]

mod config;
mod error;
mod event;
mod expr;
mod idmap;
mod router;
pub mod staffing;
mod stats;
mod types;

#[cfg(test)]
mod tests;

pub use config::{
    AgentConfig, EmotionPolicy, ExitAction, MAX_AGING_PER_MINUTE, MAX_STEPS, NewTask,
    PreferredAgent, QueueConfig, RouterConfig, RoutingStep, Strategy, ValueTags,
};
pub use error::{Limit, QueueProblem, RouterError};
pub use event::{AgentState, AwayReason, Event, EventRecord, LeaveReason, RescindReason, Status};
pub use expr::{Cmp, ExprError, ExprErrorKind, MAX_EXPR_DEPTH, MAX_SKILLS, SkillExpr, Skills};
pub use router::{AgentView, Input, Router, TaskPhase, TaskView};
pub use stats::{AgentCounts, PeriodStats, QueueStats};
pub use types::{
    AgentId, Channel, LegId, MAX_LEVEL, PerChannel, Priority, QueueId, SkillId, TaskId, Timestamp,
};
