//! Scenarios: small worlds driven step by step in virtual time.

use super::{Harness, capacity, chat, ends};
use crate::{
    AgentConfig, AgentId, AgentState, AwayReason, Channel, EmotionPolicy, Event, ExitAction,
    LeaveReason, NewTask, PreferredAgent, Priority, QueueConfig, QueueId, QueueProblem,
    RescindReason, RouterConfig, RouterError, RoutingStep, SkillExpr, Status, Strategy, TaskId,
    TaskPhase, Timestamp,
};

fn queue(h: &mut Harness, cfg: QueueConfig) {
    h.run(|r, now| r.handle_upsert_queue(now, cfg)).unwrap();
}

fn expr(h: &mut Harness, text: &str) -> SkillExpr {
    h.r.parse_expr(text).unwrap()
}

#[test]
fn offer_accept_complete_wrap_up() {
    let mut h = Harness::new();
    let mut q = QueueConfig::new(QueueId(1));
    q.wrap_up_ms = 5_000;
    queue(&mut h, q);
    h.agent(10, &[]);
    h.now = 1_000;
    h.agent(11, &[]);
    h.now = 2_000;
    h.log.clear();
    h.enqueue(1, 1, 0).unwrap();
    assert_eq!(h.last_offer(), Some((1, 10)), "longest idle first");
    h.now = 3_000;
    h.accept(1, 10);
    h.now = 10_000;
    h.complete(1);
    let events: Vec<Event> = h.log.iter().map(|e| e.event.clone()).collect();
    assert!(matches!(events[0], Event::TaskQueued { .. }));
    assert!(
        matches!(events[1], Event::TaskOffered { expires_at, .. } if expires_at == Timestamp(22_000))
    );
    assert_eq!(
        events[2],
        Event::AgentStateChanged {
            agent: AgentId(10),
            state: AgentState::Reserved
        }
    );
    assert!(matches!(events[3], Event::OfferAccepted { .. }));
    assert!(matches!(
        events[4],
        Event::TaskAssigned {
            waited_ms: 1_000,
            ..
        }
    ));
    assert_eq!(
        events[5],
        Event::AgentStateChanged {
            agent: AgentId(10),
            state: AgentState::Busy
        }
    );
    assert!(matches!(events[6], Event::TaskCompleted { .. }));
    assert_eq!(
        events[7],
        Event::AgentStateChanged {
            agent: AgentId(10),
            state: AgentState::WrapUp
        }
    );
    // Agent 10 wraps up, so the next task goes to 11.
    h.enqueue(2, 1, 0).unwrap();
    assert_eq!(h.last_offer(), Some((2, 11)));
    assert_eq!(h.r.poll_timeout(), Some(Timestamp(15_000)));
    let ev = h.advance(5_000);
    assert!(ev.contains(&Event::AgentStateChanged {
        agent: AgentId(10),
        state: AgentState::Idle
    }));
    // Sequence numbers are gapless.
    for (i, e) in h.log.iter().enumerate() {
        assert_eq!(e.seq, h.log[0].seq + i as u64);
    }
}

#[test]
fn priority_then_aging_decide_the_order() {
    let mut h = Harness::new();
    queue(&mut h, QueueConfig::new(QueueId(1))); // aging 1 point per minute
    h.agent(10, &[]);
    h.enqueue(100, 1, 0).unwrap(); // occupies the agent
    h.accept(100, 10);
    h.enqueue(1, 1, 0).unwrap();
    h.now = 60_000;
    h.enqueue(2, 1, 5).unwrap(); // effective 5 vs task 1's 1
    h.now = 120_000;
    h.complete(100);
    assert_eq!(h.last_offer(), Some((2, 10)));
    h.accept(2, 10);
    // Task 1 has now waited 10 minutes (effective 10); a new priority-5 task loses to it.
    h.now = 600_000;
    h.enqueue(3, 1, 5).unwrap();
    h.complete(2);
    assert_eq!(h.last_offer(), Some((1, 10)));
    let view = h.r.task(TaskId(3)).unwrap();
    assert_eq!(view.effective_priority, 5.0);
    // A live priority change moves task 3 ahead of anything.
    h.run(|r, now| r.handle_priority(now, TaskId(3), Priority(1_000)))
        .unwrap();
    assert_eq!(h.r.task(TaskId(3)).unwrap().priority, Priority(1_000));
}

#[test]
fn a_step_expiry_widens_the_pool_and_keeps_the_place() {
    let mut h = Harness::new();
    let strict = expr(&mut h, "sales>=4");
    let wide = expr(&mut h, "sales");
    let mut q = QueueConfig::new(QueueId(1));
    q.steps = vec![
        RoutingStep {
            expr: strict,
            expires_after_ms: Some(10_000),
        },
        RoutingStep {
            expr: wide,
            expires_after_ms: None,
        },
    ];
    queue(&mut h, q);
    h.agent(10, &[("sales", 2)]);
    h.enqueue(1, 1, 0).unwrap();
    assert_eq!(h.last_offer(), None);
    assert_eq!(h.r.poll_timeout(), Some(Timestamp(10_000)));
    h.advance(9_999);
    assert_eq!(h.last_offer(), None);
    let ev = h.advance(1);
    assert_eq!(
        ev[0],
        Event::TaskStepChanged {
            task: TaskId(1),
            queue: QueueId(1),
            step: 1
        }
    );
    assert_eq!(h.last_offer(), Some((1, 10)));
}

#[test]
fn reject_returns_the_task_to_its_place_and_delays_the_agent() {
    let mut h = Harness::new();
    queue(&mut h, QueueConfig::new(QueueId(1))); // reject delay 5 s
    h.agent(10, &[]);
    h.enqueue(1, 1, 0).unwrap();
    h.now = 100;
    h.enqueue(2, 1, 0).unwrap();
    h.now = 1_000;
    h.reject(1, 10);
    assert_eq!(
        h.offers(),
        vec![(1, 10)],
        "no offer during the reject delay"
    );
    assert_eq!(h.r.poll_timeout(), Some(Timestamp(6_000)));
    h.advance(5_000);
    assert_eq!(
        h.last_offer(),
        Some((1, 10)),
        "task 1 kept its place ahead of task 2"
    );
    // A second agent takes task 2; after agent 10 rejects task 1 again, agent 11 gets it
    // as soon as it is free.
    h.agent(11, &[]);
    assert_eq!(h.last_offer(), Some((2, 11)));
    h.accept(2, 11);
    h.reject(1, 10);
    h.complete(2);
    assert_eq!(h.last_offer(), Some((1, 11)));
}

#[test]
fn missed_offers_set_the_agent_away() {
    let mut h = Harness::with_config(RouterConfig {
        max_missed_offers: 2,
        ..RouterConfig::default()
    });
    let mut q = QueueConfig::new(QueueId(1));
    q.offer_timeout_ms = 1_000;
    q.reject_delay_ms = 0;
    queue(&mut h, q);
    h.agent(10, &[]);
    h.enqueue(1, 1, 0).unwrap();
    let ev = h.advance(1_000);
    assert!(matches!(ev[0], Event::OfferTimedOut { .. }));
    assert_eq!(h.offers().len(), 2, "re-offered after a zero delay");
    let ev = h.advance(1_000);
    assert!(ev.contains(&Event::AgentStatusChanged {
        agent: AgentId(10),
        status: Status::Away {
            reason: AwayReason::MissedOffers
        }
    }));
    assert_eq!(
        h.r.task(TaskId(1)).unwrap().phase,
        TaskPhase::Waiting { step: 0 }
    );
    // Back to available: the task is offered again and the streak restarts.
    h.run(|r, now| r.handle_status(now, AgentId(10), Status::Available))
        .unwrap();
    assert_eq!(h.offers().len(), 3);
    assert_eq!(h.r.agent_view(AgentId(10)).unwrap().missed_in_row, 0);
}

#[test]
fn ring_all_offers_everyone_and_the_first_accept_wins() {
    let mut h = Harness::new();
    let mut q = QueueConfig::new(QueueId(1));
    q.strategy = Strategy::RingAll;
    queue(&mut h, q);
    for a in 10..13 {
        h.agent(a, &[]);
    }
    h.enqueue(1, 1, 0).unwrap();
    assert_eq!(h.offers(), vec![(1, 10), (1, 11), (1, 12)]);
    h.accept(1, 11);
    let rescinded: Vec<u64> = h
        .log
        .iter()
        .filter_map(|e| match e.event {
            Event::OfferRescinded {
                agent,
                reason: RescindReason::AcceptedElsewhere,
                ..
            } => Some(agent.0),
            _ => None,
        })
        .collect();
    assert_eq!(rescinded, vec![10, 12]);
    assert_eq!(h.count(|e| matches!(e, Event::TaskAssigned { .. })), 1);
    // Accepting a rescinded offer is refused.
    let err = h.run(|r, now| r.handle_accept(now, TaskId(1), AgentId(10)));
    assert_eq!(
        err,
        Err(RouterError::NoSuchOffer {
            task: TaskId(1),
            agent: AgentId(10)
        })
    );
    // Everyone rejects: the task is back in line once the last offer ends.
    h.enqueue(2, 1, 0).unwrap();
    h.reject(2, 10);
    assert!(matches!(
        h.r.task(TaskId(2)).unwrap().phase,
        TaskPhase::Offered { .. }
    ));
    h.reject(2, 12);
    assert_eq!(
        h.r.task(TaskId(2)).unwrap().phase,
        TaskPhase::Waiting { step: 0 }
    );
}

#[test]
fn cancel_ends_the_task_and_its_offers_at_once() {
    let mut h = Harness::new();
    let mut q = QueueConfig::new(QueueId(1));
    q.strategy = Strategy::RingAll;
    queue(&mut h, q);
    h.agent(10, &[]);
    h.agent(11, &[]);
    h.enqueue(1, 1, 0).unwrap();
    h.now = 2_000;
    h.cancel(1);
    let tail: Vec<Event> = h
        .log
        .iter()
        .rev()
        .take(5)
        .map(|e| e.event.clone())
        .collect();
    assert!(matches!(
        tail[0],
        Event::TaskAbandoned {
            waited_ms: 2_000,
            ..
        }
    ));
    assert_eq!(
        h.count(|e| matches!(
            e,
            Event::OfferRescinded {
                reason: RescindReason::TaskEnded,
                ..
            }
        )),
        2
    );
    assert!(h.r.task(TaskId(1)).is_none());
    assert_eq!(h.r.agent_view(AgentId(10)).unwrap().state, AgentState::Idle);
    // The id is free again.
    h.enqueue(1, 1, 0).unwrap();
    assert_eq!(ends(&h.log).get(&TaskId(1)), Some(&1));
}

#[test]
fn max_wait_overflows_then_leaves() {
    let mut h = Harness::new();
    let mut q2 = QueueConfig::new(QueueId(2));
    q2.max_wait = Some((10_000, ExitAction::Leave));
    queue(&mut h, q2);
    let mut q1 = QueueConfig::new(QueueId(1));
    q1.max_wait = Some((30_000, ExitAction::Overflow(QueueId(2))));
    queue(&mut h, q1);
    h.enqueue(1, 1, 0).unwrap();
    let ev = h.advance(30_000);
    assert_eq!(
        ev[..2],
        [
            Event::TaskOverflowed {
                task: TaskId(1),
                from: QueueId(1),
                to: QueueId(2)
            },
            Event::TaskQueued {
                task: TaskId(1),
                queue: QueueId(2),
                channel: Channel::Voice,
                priority: Priority(0)
            }
        ]
    );
    let ev = h.advance(10_000);
    assert_eq!(
        ev,
        vec![Event::TaskLeft {
            task: TaskId(1),
            queue: QueueId(2),
            reason: LeaveReason::MaxWait,
            waited_ms: 10_000
        }]
    );
    let s1 = h.r.queue_stats(QueueId(1)).unwrap();
    assert_eq!(s1.total.overflowed, 1);
    let s2 = h.r.queue_stats(QueueId(2)).unwrap();
    assert_eq!((s2.total.entered, s2.total.left), (1, 1));
}

#[test]
fn overflow_loops_stop_at_the_hop_limit() {
    let mut h = Harness::new();
    let mut a = QueueConfig::new(QueueId(1));
    a.max_wait = Some((1_000, ExitAction::Leave));
    queue(&mut h, a.clone());
    let mut b = QueueConfig::new(QueueId(2));
    b.max_wait = Some((1_000, ExitAction::Overflow(QueueId(1))));
    queue(&mut h, b);
    a.max_wait = Some((1_000, ExitAction::Overflow(QueueId(2))));
    queue(&mut h, a);
    assert_eq!(
        h.run(|r, now| r.handle_remove_queue(now, QueueId(2))),
        Err(RouterError::QueueInUse {
            queue: QueueId(2),
            by: QueueId(1)
        })
    );
    h.enqueue(1, 1, 0).unwrap();
    h.advance(100_000);
    assert_eq!(h.count(|e| matches!(e, Event::TaskOverflowed { .. })), 8);
    assert!(matches!(
        h.log.last().unwrap().event,
        Event::TaskLeft {
            reason: LeaveReason::OverflowLimit,
            ..
        }
    ));
}

#[test]
fn no_agents_logged_in() {
    let mut h = Harness::new();
    let sales = expr(&mut h, "sales");
    let mut q = QueueConfig::new(QueueId(1)).with_expr(sales);
    q.when_no_agents = Some(ExitAction::Leave);
    queue(&mut h, q);
    h.enqueue(1, 1, 0).unwrap();
    assert!(matches!(
        h.log.last().unwrap().event,
        Event::TaskLeft {
            reason: LeaveReason::NoAgents,
            ..
        }
    ));
    // An agent without the skill does not count.
    h.agent(9, &[]);
    h.enqueue(2, 1, 0).unwrap();
    assert!(h.r.task(TaskId(2)).is_none());
    h.agent(10, &[("sales", 1)]);
    h.enqueue(3, 1, 0).unwrap();
    h.accept(3, 10);
    h.enqueue(4, 1, 0).unwrap();
    // Away still counts as logged in.
    h.run(|r, now| {
        r.handle_status(
            now,
            AgentId(10),
            Status::Away {
                reason: AwayReason::Code("lunch".into()),
            },
        )
    })
    .unwrap();
    assert!(h.r.task(TaskId(4)).is_some());
    // The last agent logs out: the waiting task leaves; the assigned one continues.
    h.run(|r, now| r.handle_status(now, AgentId(10), Status::Offline))
        .unwrap();
    assert!(h.r.task(TaskId(4)).is_none());
    assert!(matches!(
        h.r.task(TaskId(3)).unwrap().phase,
        TaskPhase::Assigned { .. }
    ));
    h.complete(3);
    assert_eq!(ends(&h.log).values().sum::<usize>(), 4);
}

#[test]
fn max_queue_length() {
    let mut h = Harness::new();
    let mut q = QueueConfig::new(QueueId(1));
    q.max_length = Some(2);
    queue(&mut h, q);
    h.enqueue(1, 1, 0).unwrap();
    h.enqueue(2, 1, 0).unwrap();
    assert_eq!(
        h.enqueue(3, 1, 0),
        Err(RouterError::QueueFull {
            queue: QueueId(1),
            max: 2
        })
    );
    assert!(h.r.task(TaskId(3)).is_none());
}

fn emotion_queue(h: &mut Harness) {
    let mut q = QueueConfig::new(QueueId(1));
    q.emotion = Some(EmotionPolicy {
        threshold: 0.5,
        min_soothing: 3,
        window_ms: 10_000,
    });
    queue(h, q);
}

#[test]
fn agitated_customers_go_to_soothing_agents_for_a_while() {
    let mut h = Harness::new();
    emotion_queue(&mut h);
    h.agent_cfg(AgentConfig {
        soothing: 1,
        ..AgentConfig::new(AgentId(10))
    });
    h.now = 1;
    h.agent_cfg(AgentConfig {
        soothing: 4,
        ..AgentConfig::new(AgentId(11))
    });
    let angry = NewTask {
        agitation: 0.9,
        ..NewTask::new(TaskId(1), QueueId(1))
    };
    h.enqueue_task(angry.clone()).unwrap();
    assert_eq!(
        h.last_offer(),
        Some((1, 11)),
        "soothing agent despite shorter idle"
    );
    h.accept(1, 11);
    // No soothing agent free: the agitated task waits out the window, then anyone.
    h.enqueue_task(NewTask {
        id: TaskId(2),
        ..angry
    })
    .unwrap();
    assert_eq!(h.offers().len(), 1);
    h.advance(10_000);
    assert_eq!(h.last_offer(), Some((2, 10)));
}

#[test]
fn agitation_changes_live() {
    let mut h = Harness::new();
    emotion_queue(&mut h);
    h.agent_cfg(AgentConfig {
        soothing: 0,
        ..AgentConfig::new(AgentId(10))
    });
    h.enqueue(100, 1, 0).unwrap();
    h.accept(100, 10);
    h.enqueue(1, 1, 0).unwrap();
    h.run(|r, now| r.handle_agitation(now, TaskId(1), 0.8))
        .unwrap();
    h.now = 1_000;
    h.complete(100);
    assert_eq!(h.offers().len(), 1, "the calm agent may not take it now");
    // Calming down lifts the policy at once.
    h.run(|r, now| r.handle_agitation(now, TaskId(1), 0.2))
        .unwrap();
    assert_eq!(h.last_offer(), Some((1, 10)));
    assert!(matches!(
        h.run(|r, now| r.handle_agitation(now, TaskId(1), f32::NAN)),
        Err(RouterError::InvalidAgitation { .. })
    ));
}

#[test]
fn preferred_agent_then_anyone() {
    let mut h = Harness::new();
    queue(&mut h, QueueConfig::new(QueueId(1)));
    h.agent(10, &[]);
    h.agent(11, &[]);
    h.enqueue(100, 1, 0).unwrap(); // to 10
    h.enqueue(101, 1, 0).unwrap(); // to 11
    h.accept(100, 10);
    h.accept(101, 11);
    let t = NewTask {
        preferred: Some(PreferredAgent {
            agent: AgentId(11),
            timeout_ms: 5_000,
        }),
        ..NewTask::new(TaskId(1), QueueId(1))
    };
    h.enqueue_task(t.clone()).unwrap();
    h.now = 1_000;
    h.complete(100);
    assert_eq!(h.offers().len(), 2, "agent 10 is not preferred");
    h.now = 2_000;
    h.complete(101);
    assert_eq!(h.last_offer(), Some((1, 11)));
    h.accept(1, 11);
    // Timeout: the preference lapses and agent 10 takes it.
    h.enqueue_task(NewTask { id: TaskId(2), ..t }).unwrap();
    h.enqueue(3, 1, 0).unwrap();
    assert_eq!(h.last_offer(), Some((3, 10)));
    h.accept(3, 10);
    h.complete(3);
    assert_eq!(h.last_offer(), Some((3, 10)));
    h.advance(5_000);
    assert_eq!(h.last_offer(), Some((2, 10)));
}

#[test]
fn removing_a_preferred_agent_releases_its_tasks() {
    let mut h = Harness::new();
    queue(&mut h, QueueConfig::new(QueueId(1)));
    h.agent(10, &[]);
    h.agent(11, &[]);
    h.run(|r, now| r.handle_status(now, AgentId(11), Status::Offline))
        .unwrap();
    h.enqueue(100, 1, 0).unwrap();
    h.accept(100, 10);
    h.enqueue_task(NewTask {
        preferred: Some(PreferredAgent {
            agent: AgentId(11),
            timeout_ms: 60_000,
        }),
        ..NewTask::new(TaskId(1), QueueId(1))
    })
    .unwrap();
    h.complete(100);
    assert_eq!(h.offers().len(), 1);
    h.run(|r, now| r.handle_remove_agent(now, AgentId(11)))
        .unwrap();
    assert_eq!(h.last_offer(), Some((1, 10)));
    assert_eq!(
        h.run(|r, now| r.handle_remove_agent(now, AgentId(11))),
        Err(RouterError::UnknownAgent { agent: AgentId(11) })
    );
}

#[test]
fn most_skilled_wins() {
    let mut h = Harness::new();
    let e = expr(&mut h, "sales & (english | spanish)");
    let mut q = QueueConfig::new(QueueId(1)).with_expr(e);
    q.strategy = Strategy::MostSkilled;
    queue(&mut h, q);
    h.agent(10, &[("sales", 2), ("english", 5)]);
    h.agent(11, &[("sales", 5), ("english", 3)]);
    h.agent(12, &[("sales", 5), ("spanish", 1)]);
    h.enqueue(1, 1, 0).unwrap();
    assert_eq!(h.last_offer(), Some((1, 11)));
}

#[test]
fn least_occupied_spreads_chats() {
    let mut h = Harness::new();
    let mut q = QueueConfig::new(QueueId(1));
    q.strategy = Strategy::LeastOccupied;
    queue(&mut h, q);
    for a in [10, 11] {
        h.agent_cfg(AgentConfig {
            capacity: capacity(3),
            ..AgentConfig::new(AgentId(a))
        });
    }
    for t in 1..=5 {
        h.enqueue_task(chat(t, 1)).unwrap();
        h.accept(t, h.last_offer().unwrap().1);
    }
    let who: Vec<u64> = h.offers().iter().map(|o| o.1).collect();
    assert_eq!(who, vec![10, 11, 10, 11, 10]);
}

#[test]
fn chat_capacity_is_respected() {
    let mut h = Harness::new();
    queue(&mut h, QueueConfig::new(QueueId(1)));
    h.agent_cfg(AgentConfig {
        capacity: capacity(3),
        ..AgentConfig::new(AgentId(10))
    });
    for t in 1..=4 {
        h.enqueue_task(chat(t, 1)).unwrap();
    }
    assert_eq!(h.offers(), vec![(1, 10), (2, 10), (3, 10)]);
    // A voice call still fits: capacity is per channel.
    h.enqueue(9, 1, 0).unwrap();
    assert_eq!(h.last_offer(), Some((9, 10)));
    h.accept(2, 10);
    h.complete(2);
    assert_eq!(h.last_offer(), Some((4, 10)));
}

#[test]
fn round_robin_and_fewest_tasks() {
    let mut h = Harness::new();
    let mut q = QueueConfig::new(QueueId(1));
    q.strategy = Strategy::RoundRobin;
    queue(&mut h, q);
    let mut q2 = QueueConfig::new(QueueId(2));
    q2.strategy = Strategy::FewestTasks;
    queue(&mut h, q2);
    for a in 10..13 {
        h.agent(a, &[]);
    }
    for t in 1..=4 {
        h.enqueue(t, 1, 0).unwrap();
        let a = h.last_offer().unwrap().1;
        h.accept(t, a);
        h.complete(t);
    }
    let who: Vec<u64> = h.offers().iter().map(|o| o.1).collect();
    assert_eq!(who, vec![10, 11, 12, 10]);
    // Agent 13 has handled nothing, so it wins although it was idle the shortest time.
    h.now = 5_000;
    h.agent(13, &[]);
    h.enqueue(5, 2, 0).unwrap();
    assert_eq!(h.last_offer(), Some((5, 13)));
}

#[test]
fn a_task_can_require_more_skills() {
    let mut h = Harness::new();
    queue(&mut h, QueueConfig::new(QueueId(1)));
    h.agent(10, &[("english", 3)]);
    h.agent(11, &[("french", 2)]);
    let french = expr(&mut h, "french>=2");
    h.enqueue_task(NewTask {
        required: Some(french.clone()),
        ..NewTask::new(TaskId(1), QueueId(1))
    })
    .unwrap();
    assert_eq!(h.last_offer(), Some((1, 11)));
    h.accept(1, 11);
    h.enqueue_task(NewTask {
        required: Some(french),
        ..NewTask::new(TaskId(2), QueueId(1))
    })
    .unwrap();
    h.enqueue(3, 1, 0).unwrap();
    assert_eq!(
        h.last_offer(),
        Some((3, 10)),
        "task 2 skipped: agent 10 has no french"
    );
    h.complete(1);
    assert_eq!(h.last_offer(), Some((2, 11)));
}

#[test]
fn skill_and_queue_changes_rematch() {
    let mut h = Harness::new();
    let five = expr(&mut h, "sales>=5");
    queue(&mut h, QueueConfig::new(QueueId(1)).with_expr(five));
    h.agent(10, &[("sales", 3)]);
    h.enqueue(1, 1, 0).unwrap();
    h.enqueue(2, 1, 0).unwrap();
    assert_eq!(h.offers().len(), 0);
    // The agent is trained up.
    let sales = h.skill("sales");
    h.run(|r, now| {
        r.handle_upsert_agent(
            now,
            AgentConfig {
                skills: vec![(sales, 5)],
                ..AgentConfig::new(AgentId(10))
            },
        )
    })
    .unwrap();
    assert_eq!(h.last_offer(), Some((1, 10)));
    h.accept(1, 10);
    // The queue widens; a second agent qualifies.
    h.agent(11, &[("sales", 1)]);
    let any_sales = expr(&mut h, "sales");
    queue(&mut h, QueueConfig::new(QueueId(1)).with_expr(any_sales));
    assert_eq!(h.last_offer(), Some((2, 11)));
}

#[test]
fn statistics_and_expected_wait() {
    let mut h = Harness::new();
    queue(&mut h, QueueConfig::new(QueueId(1))); // SL 20 s
    h.agent(10, &[]);
    h.enqueue(1, 1, 0).unwrap();
    h.enqueue(2, 1, 0).unwrap();
    h.enqueue(3, 1, 0).unwrap();
    h.now = 5_000;
    h.accept(1, 10);
    h.advance(5_000);
    let s = h.r.queue_stats(QueueId(1)).unwrap();
    assert_eq!(
        (s.waiting, s.offered_now, s.longest_wait_ms),
        (2, 0, 10_000)
    );
    assert_eq!((s.agents.members, s.agents.busy), (1, 1));
    assert_eq!(s.occupancy, Some(1.0));
    h.complete(1);
    h.now = 29_000;
    h.accept(2, 10);
    h.now = 31_000;
    h.cancel(3);
    let s = h.r.queue_stats(QueueId(1)).unwrap();
    assert_eq!(s.window.offered, 3);
    assert_eq!(s.window.answered_within_sl, 1);
    assert_eq!(s.window.service_level, Some(1.0 / 3.0));
    assert_eq!(s.window.abandon_rate, Some(1.0 / 3.0));
    assert_eq!(s.window.asa_ms, Some(17_000.0));
    assert_eq!(s.window.aht_ms, Some(5_000.0));
    assert_eq!(s.longest_wait_ms, 0);
    // Two waiting tasks ahead, one server, AHT 5 s: (2 + 1) × 5 s.
    h.enqueue(4, 1, 0).unwrap();
    h.enqueue(5, 1, 0).unwrap();
    assert_eq!(
        h.r.expected_wait(QueueId(1), Channel::Voice, Priority(0)),
        Ok(Some(15_000))
    );
    assert_eq!(
        h.r.expected_wait(QueueId(1), Channel::Voice, Priority(100)),
        Ok(Some(5_000))
    );
    // After the window has passed, only the totals remember.
    h.advance(16 * 60_000);
    let s = h.r.queue_stats(QueueId(1)).unwrap();
    assert_eq!(s.window.offered, 0);
    assert_eq!(s.total.offered, 3);
}

#[test]
fn errors_are_typed_and_change_nothing() {
    let mut h = Harness::new();
    queue(&mut h, QueueConfig::new(QueueId(1)));
    assert_eq!(
        h.enqueue(1, 9, 0),
        Err(RouterError::UnknownQueue { queue: QueueId(9) })
    );
    h.enqueue(1, 1, 0).unwrap();
    assert_eq!(
        h.enqueue(1, 1, 0),
        Err(RouterError::DuplicateTask { task: TaskId(1) })
    );
    assert_eq!(
        h.run(|r, now| r.handle_complete(now, TaskId(1))),
        Err(RouterError::NotAssigned { task: TaskId(1) })
    );
    assert_eq!(
        h.run(|r, now| r.handle_cancel(now, TaskId(7))),
        Err(RouterError::UnknownTask { task: TaskId(7) })
    );
    assert!(matches!(
        h.enqueue_task(NewTask {
            agitation: 1.5,
            ..NewTask::new(TaskId(2), QueueId(1))
        }),
        Err(RouterError::InvalidAgitation { .. })
    ));
    assert!(matches!(
        h.r.parse_expr("sales >="),
        Err(RouterError::InvalidExpression { .. })
    ));
    let mut bad = QueueConfig::new(QueueId(2));
    bad.steps.insert(
        0,
        RoutingStep {
            expr: SkillExpr::Any,
            expires_after_ms: None,
        },
    );
    assert_eq!(
        h.run(|r, now| r.handle_upsert_queue(now, bad)),
        Err(RouterError::InvalidQueue {
            queue: QueueId(2),
            problem: QueueProblem::StepNeverExpires { step: 0 }
        })
    );
    let mut bad = QueueConfig::new(QueueId(2));
    bad.max_wait = Some((1, ExitAction::Overflow(QueueId(2))));
    assert!(matches!(
        h.run(|r, now| r.handle_upsert_queue(now, bad)),
        Err(RouterError::InvalidQueue {
            problem: QueueProblem::OverflowToSelf,
            ..
        })
    ));
    let x = h.skill("x");
    let dup = AgentConfig {
        skills: vec![(x, 1), (x, 2)],
        ..AgentConfig::new(AgentId(5))
    };
    assert!(matches!(
        h.run(|r, now| r.handle_upsert_agent(now, dup)),
        Err(RouterError::DuplicateSkill { .. })
    ));
    let level = AgentConfig {
        skills: vec![(x, 6)],
        ..AgentConfig::new(AgentId(5))
    };
    assert!(matches!(
        h.run(|r, now| r.handle_upsert_agent(now, level)),
        Err(RouterError::InvalidLevel { level: 6, .. })
    ));
    assert_eq!(
        h.run(|r, now| r.handle_remove_queue(now, QueueId(1))),
        Err(RouterError::QueueNotEmpty {
            queue: QueueId(1),
            tasks: 1
        })
    );
    h.cancel(1);
    h.run(|r, now| r.handle_remove_queue(now, QueueId(1)))
        .unwrap();
    assert_eq!(h.r.queue_ids().count(), 0);
    // A full router refuses new tasks.
    let mut h = Harness::with_config(RouterConfig {
        max_tasks: 1,
        ..RouterConfig::default()
    });
    queue(&mut h, QueueConfig::new(QueueId(1)));
    h.enqueue(1, 1, 0).unwrap();
    assert!(matches!(
        h.enqueue(2, 1, 0),
        Err(RouterError::CapacityExceeded { limit: 1, .. })
    ));
}

#[test]
fn time_never_goes_backwards_and_extreme_times_do_not_panic() {
    let mut h = Harness::new();
    let mut q = QueueConfig::new(QueueId(1));
    q.max_wait = Some((u64::MAX, ExitAction::Leave));
    q.aging_per_minute = crate::MAX_AGING_PER_MINUTE;
    queue(&mut h, q);
    h.agent(10, &[]);
    h.now = u64::MAX - 5;
    h.enqueue(1, 1, u32::MAX).unwrap();
    h.now = 3;
    h.enqueue(2, 1, 0).unwrap();
    assert_eq!(h.r.now(), Timestamp(u64::MAX - 5));
    h.now = u64::MAX;
    h.r.handle_timeout(Timestamp(u64::MAX));
    h.drain();
    assert!(h.r.task(TaskId(2)).is_some());
}

#[test]
fn timers_due_at_one_instant_change_state_together() {
    // At 10 s an offer of task 2 times out and task 1's emotion window ends. Task 1 is
    // ahead in line, so the freed agent must get task 1, not task 2 back.
    let mut h = Harness::new();
    let mut q = QueueConfig::new(QueueId(1));
    q.offer_timeout_ms = 10_000;
    q.reject_delay_ms = 0;
    q.emotion = Some(EmotionPolicy {
        threshold: 0.5,
        min_soothing: 3,
        window_ms: 10_000,
    });
    queue(&mut h, q);
    h.agent(10, &[]);
    h.enqueue_task(NewTask {
        agitation: 0.9,
        ..NewTask::new(TaskId(1), QueueId(1))
    })
    .unwrap();
    h.enqueue(2, 1, 0).unwrap();
    assert_eq!(h.offers(), vec![(2, 10)]);
    h.advance(10_000);
    assert_eq!(h.offers(), vec![(2, 10), (1, 10)]);
}
