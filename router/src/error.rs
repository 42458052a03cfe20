//! The router's error type.

use thiserror::Error;

use crate::expr::ExprError;
use crate::types::{AgentId, QueueId, SkillId, TaskId};

/// Everything the router can refuse. A refused input leaves the router unchanged.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum RouterError {
    /// No agent with this id.
    #[error("unknown agent {agent}")]
    UnknownAgent {
        /// The id given.
        agent: AgentId,
    },
    /// No queue with this id.
    #[error("unknown queue {queue}")]
    UnknownQueue {
        /// The id given.
        queue: QueueId,
    },
    /// No live task with this id.
    #[error("unknown task {task}")]
    UnknownTask {
        /// The id given.
        task: TaskId,
    },
    /// A live task already has this id.
    #[error("task {task} already exists")]
    DuplicateTask {
        /// The id given.
        task: TaskId,
    },
    /// An agent lists the same skill twice.
    #[error("agent {agent} lists skill {skill} twice")]
    DuplicateSkill {
        /// The agent.
        agent: AgentId,
        /// The skill.
        skill: SkillId,
    },
    /// A skill level outside 1..=5 in an agent's skills, or a soothing level above 5.
    #[error("agent {agent}: level {level} is out of range 1..=5")]
    InvalidLevel {
        /// The agent.
        agent: AgentId,
        /// The level given.
        level: u8,
    },
    /// A skill id this router's registry did not issue.
    #[error("skill {skill} is not registered")]
    UnknownSkill {
        /// The id given.
        skill: SkillId,
    },
    /// A skill name that is not `[A-Za-z_][A-Za-z0-9_.-]*`.
    #[error("invalid skill name {name:?}")]
    InvalidSkillName {
        /// The name given.
        name: String,
    },
    /// The skill registry is full.
    #[error("more than {max} skills")]
    TooManySkills {
        /// The limit.
        max: usize,
    },
    /// A skill expression that does not parse or is too deep.
    #[error("invalid skill expression")]
    InvalidExpression {
        /// Where and why.
        #[source]
        source: ExprError,
    },
    /// A queue configuration that cannot work.
    #[error("queue {queue}: {problem}")]
    InvalidQueue {
        /// The queue.
        queue: QueueId,
        /// What is wrong.
        problem: QueueProblem,
    },
    /// Agitation must be a number in 0..=1.
    #[error("task {task}: agitation {value} is not in 0..=1")]
    InvalidAgitation {
        /// The task.
        task: TaskId,
        /// The value given.
        value: f32,
    },
    /// The queue holds its maximum number of waiting tasks.
    #[error("queue {queue} is full ({max} tasks)")]
    QueueFull {
        /// The queue.
        queue: QueueId,
        /// Its maximum length.
        max: u32,
    },
    /// A router-wide limit (see [`RouterConfig`](crate::RouterConfig)) is reached.
    #[error("capacity exceeded: at most {limit} {what}")]
    CapacityExceeded {
        /// Which limit.
        what: Limit,
        /// The limit.
        limit: usize,
    },
    /// The agent holds no outstanding offer of this task.
    #[error("no offer of task {task} to agent {agent}")]
    NoSuchOffer {
        /// The task.
        task: TaskId,
        /// The agent.
        agent: AgentId,
    },
    /// The task is not assigned to an agent, so it cannot be completed.
    #[error("task {task} is not assigned")]
    NotAssigned {
        /// The task.
        task: TaskId,
    },
    /// The agent still handles tasks (or holds offers) and cannot be removed.
    #[error("agent {agent} still handles {tasks} tasks")]
    AgentHasTasks {
        /// The agent.
        agent: AgentId,
        /// How many.
        tasks: usize,
    },
    /// The queue still holds live tasks and cannot be removed.
    #[error("queue {queue} still holds {tasks} tasks")]
    QueueNotEmpty {
        /// The queue.
        queue: QueueId,
        /// How many.
        tasks: usize,
    },
    /// Another queue overflows into this one, so it cannot be removed.
    #[error("queue {queue} is an overflow target of queue {by}")]
    QueueInUse {
        /// The queue.
        queue: QueueId,
        /// The queue that refers to it.
        by: QueueId,
    },
    /// A customer-value tag with no priority mapping.
    #[error("unknown customer-value tag {tag:?}")]
    UnknownTag {
        /// The tag.
        tag: String,
    },
    /// A staffing input that is not a positive finite number (or a target outside 0..1).
    #[error("staffing input {what} = {value} is out of range")]
    InvalidWorkload {
        /// Which input.
        what: &'static str,
        /// The value given.
        value: f64,
    },
    /// No staffing level up to the search limit meets the target.
    #[error("no staffing up to {max_agents} agents meets the target")]
    Unreachable {
        /// The largest staffing tried.
        max_agents: u32,
    },
}

/// A router-wide limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Limit {
    /// Live tasks.
    #[error("tasks")]
    Tasks,
    /// Agents.
    #[error("agents")]
    Agents,
    /// Queues.
    #[error("queues")]
    Queues,
}

/// Why a queue configuration was refused.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum QueueProblem {
    /// A queue needs at least one routing step.
    #[error("no routing steps")]
    NoSteps,
    /// More routing steps than [`MAX_STEPS`](crate::MAX_STEPS).
    #[error("more than {max} routing steps")]
    TooManySteps {
        /// The limit.
        max: usize,
    },
    /// Only the last step may wait forever; a step before it needs an expiry.
    #[error("step {step} has no expiry but is not the last")]
    StepNeverExpires {
        /// The step's index.
        step: usize,
    },
    /// A step's skill expression is invalid.
    #[error("step {step}: {source}")]
    Expression {
        /// The step's index.
        step: usize,
        /// Why.
        source: ExprError,
    },
    /// A step expression names a skill this router did not issue.
    #[error("step {step} names unregistered skill {skill}")]
    UnknownSkill {
        /// The step's index.
        step: usize,
        /// The skill.
        skill: SkillId,
    },
    /// A queue cannot overflow into itself.
    #[error("overflows into itself")]
    OverflowToSelf,
    /// The overflow target does not exist.
    #[error("overflow target {target} does not exist")]
    UnknownOverflowTarget {
        /// The target.
        target: QueueId,
    },
    /// The emotion threshold must be in 0..=1 and the soothing level in 1..=5.
    #[error("emotion policy out of range")]
    EmotionPolicy,
    /// Offers need a timeout of at least one millisecond.
    #[error("offer timeout is zero")]
    ZeroOfferTimeout,
    /// The aging rate is above [`MAX_AGING_PER_MINUTE`](crate::MAX_AGING_PER_MINUTE).
    #[error("aging rate {rate} is too high")]
    AgingTooHigh {
        /// The rate given.
        rate: u32,
    },
}
