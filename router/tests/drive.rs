//! The drive contract through the public API only: inputs as [`Input`] values (as the engine
//! queues them), events drained after every call, timers driven by `poll_timeout`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use switchboard_router::{
    AgentConfig, AgentId, Channel, Event, EventRecord, Input, LegId, NewTask, PerChannel, Priority,
    QueueConfig, QueueId, Router, RouterConfig, RoutingStep, Status, TaskId, Timestamp,
};

struct Driver {
    router: Router,
    log: Vec<EventRecord>,
}

impl Driver {
    fn input(&mut self, at: u64, input: Input) {
        self.router.handle_input(Timestamp(at), input).unwrap();
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(e) = self.router.poll_event() {
            self.log.push(e);
        }
    }

    /// Fires every timer up to `until`, at its own deadline.
    fn run_until(&mut self, until: u64) {
        while let Some(at) = self
            .router
            .poll_timeout()
            .filter(|t| t.as_millis() <= until)
        {
            self.router.handle_timeout(at);
            self.drain();
        }
        self.router.handle_timeout(Timestamp(until));
        self.drain();
    }
}

#[test]
fn a_chat_and_a_call_through_one_queue() {
    let mut d = Driver {
        router: Router::new(RouterConfig::default()),
        log: Vec::new(),
    };
    let billing = d.router.parse_expr("billing>=3 & !trainee").unwrap();
    let anyone = d.router.parse_expr("billing").unwrap();
    let skill = d.router.skill("billing").unwrap();
    let mut q = QueueConfig::new(QueueId(7));
    q.steps = vec![
        RoutingStep {
            expr: billing,
            expires_after_ms: Some(30_000),
        },
        RoutingStep {
            expr: anyone,
            expires_after_ms: None,
        },
    ];
    q.wrap_up_ms = 10_000;
    d.input(0, Input::UpsertQueue(q));
    d.input(
        0,
        Input::UpsertAgent(AgentConfig {
            skills: vec![(skill, 2)],
            capacity: PerChannel {
                voice: 1,
                chat: 2,
                ..PerChannel::default()
            },
            ..AgentConfig::new(AgentId(1))
        }),
    );
    d.input(
        0,
        Input::SetStatus {
            agent: AgentId(1),
            status: Status::Available,
        },
    );
    d.input(
        1_000,
        Input::Enqueue(NewTask {
            channel: Channel::Chat,
            context: Arc::from(r#"{"ticket":42}"#),
            ..NewTask::new(TaskId(1), QueueId(7))
        }),
    );
    d.input(
        2_000,
        Input::Enqueue(NewTask {
            priority: Priority(100),
            customer_leg: Some(LegId(9)),
            ..NewTask::new(TaskId(2), QueueId(7))
        }),
    );
    // Level 2 is too low for the first step: both wait until it expires.
    assert_eq!(d.router.poll_timeout(), Some(Timestamp(31_000)));
    d.run_until(40_000);
    let offered: Vec<(TaskId, Timestamp, Arc<str>)> = d
        .log
        .iter()
        .filter_map(|e| match &e.event {
            Event::TaskOffered { task, context, .. } => Some((*task, e.at, context.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        offered,
        vec![
            (TaskId(1), Timestamp(31_000), Arc::from(r#"{"ticket":42}"#)),
            (TaskId(2), Timestamp(32_000), Arc::from("")),
        ]
    );
    d.input(
        40_000,
        Input::Accept {
            task: TaskId(2),
            agent: AgentId(1),
        },
    );
    assert!(d.log.iter().any(|e| matches!(
        e.event,
        Event::TaskAssigned {
            customer_leg: Some(LegId(9)),
            waited_ms: 38_000,
            ..
        }
    )));
    // The chat offer was never answered: it times out 20 s after it was made, and after the
    // reject delay the agent is offered it again.
    d.run_until(60_000);
    let chat: Vec<(u64, &Event)> = d
        .log
        .iter()
        .filter(|e| e.event.task() == Some(TaskId(1)))
        .map(|e| (e.at.as_millis(), &e.event))
        .collect();
    assert!(
        matches!(chat[3], (51_000, Event::OfferTimedOut { .. })),
        "{chat:?}"
    );
    assert!(
        matches!(chat[4], (56_000, Event::TaskOffered { .. })),
        "{chat:?}"
    );
    d.input(60_000, Input::Complete { task: TaskId(2) });
    d.input(60_000, Input::Cancel { task: TaskId(1) });
    d.run_until(120_000);
    // One total order, gapless, in time order; every task ended once; JSON round-trips.
    for (i, pair) in d.log.windows(2).enumerate() {
        assert_eq!(pair[1].seq, pair[0].seq + 1, "gap after event {i}");
        assert!(pair[1].at >= pair[0].at);
    }
    let ends: Vec<TaskId> = d
        .log
        .iter()
        .filter(|e| e.event.is_task_end())
        .filter_map(|e| e.event.task())
        .collect();
    assert_eq!(ends, vec![TaskId(2), TaskId(1)]);
    assert_eq!(d.router.task_count(), 0);
    assert_eq!(d.router.poll_timeout(), None);
    let json = serde_json::to_string(&d.log).unwrap();
    let back: Vec<EventRecord> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, d.log);
    let stats = d.router.queue_stats(QueueId(7)).unwrap();
    assert_eq!((stats.total.answered, stats.total.abandoned), (1, 1));
    assert_eq!(stats.total.completed, 1);
    assert_eq!(stats.total.aht_ms, Some(30_000.0));
}
