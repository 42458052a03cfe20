//! Identifiers, channels, priorities and time.
//!
//! Ids are chosen by the business layer (agents, queues, tasks, legs) or handed out by the
//! router's skill registry ([`SkillId`]); raw integers appear only at the edges.

use std::fmt;
use std::ops::{Index, IndexMut};

use serde::{Deserialize, Serialize};

/// A point in time in milliseconds since an epoch the caller chooses.
///
/// The router never reads a clock: every `handle_*` call takes the current time. Times that go
/// backwards are treated as the latest time already seen.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The epoch.
    pub const ZERO: Timestamp = Timestamp(0);

    /// The end of time. Deadlines that saturate to it never fire.
    pub const END: Timestamp = Timestamp(u64::MAX);

    /// Milliseconds since the epoch.
    #[must_use]
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// This time plus `ms` milliseconds, saturating at the end of time.
    #[must_use]
    pub const fn saturating_add_ms(self, ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to this time, or zero if `earlier` is later.
    #[must_use]
    pub const fn millis_since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

id_newtype!(
    /// An agent, as the business layer names it.
    AgentId,
    "agent:"
);
id_newtype!(
    /// A queue, as the business layer names it.
    QueueId,
    "queue:"
);
id_newtype!(
    /// A task (a call, chat, email, social message or callback), as the business layer names
    /// it. Unique among live tasks; an id may be reused once its task has ended.
    TaskId,
    "task:"
);
id_newtype!(
    /// The engine's id of a customer's call leg, carried with a voice task so that the engine
    /// can bridge the customer to the agent when the offer is accepted.
    LegId,
    "leg:"
);

/// An interned skill name; see [`Skills`](crate::Skills). Only meaningful with the registry
/// that issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SkillId(pub(crate) u16);

impl SkillId {
    /// The dense index of this skill (0, 1, 2, … in interning order).
    #[must_use]
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for SkillId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The highest skill level; levels run from 1 to this. An agent without a skill has level 0.
pub const MAX_LEVEL: u8 = 5;

/// A task's base priority: larger is more important. The business layer maps customer-value
/// tags (VIP, high net worth, long-standing) to numbers, for example with
/// [`ValueTags`](crate::ValueTags).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Priority(pub u32);

/// The medium of a task. Every channel can share one queue; agents have a capacity per
/// channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// A phone call.
    Voice,
    /// A chat session.
    Chat,
    /// An email.
    Email,
    /// A social-media message.
    Social,
    /// A scheduled call back to the customer.
    Callback,
}

impl Channel {
    /// Every channel, in index order.
    pub const ALL: [Channel; 5] = [
        Channel::Voice,
        Channel::Chat,
        Channel::Email,
        Channel::Social,
        Channel::Callback,
    ];

    /// The number of channels.
    pub const COUNT: usize = 5;

    /// The dense index of this channel (0 to 4).
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Channel::Voice => "voice",
            Channel::Chat => "chat",
            Channel::Email => "email",
            Channel::Social => "social",
            Channel::Callback => "callback",
        })
    }
}

/// One value per [`Channel`], such as an agent's capacity (`voice: 1, chat: 3, email: 5`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)]
pub struct PerChannel<T> {
    pub voice: T,
    pub chat: T,
    pub email: T,
    pub social: T,
    pub callback: T,
}

impl<T: Copy> PerChannel<T> {
    /// The same value on every channel.
    #[must_use]
    pub const fn splat(value: T) -> Self {
        PerChannel {
            voice: value,
            chat: value,
            email: value,
            social: value,
            callback: value,
        }
    }

    /// Each channel with its value, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Channel, T)> + '_ {
        Channel::ALL.into_iter().map(|c| (c, self[c]))
    }
}

impl<T> Index<Channel> for PerChannel<T> {
    type Output = T;
    fn index(&self, channel: Channel) -> &T {
        match channel {
            Channel::Voice => &self.voice,
            Channel::Chat => &self.chat,
            Channel::Email => &self.email,
            Channel::Social => &self.social,
            Channel::Callback => &self.callback,
        }
    }
}

impl<T> IndexMut<Channel> for PerChannel<T> {
    fn index_mut(&mut self, channel: Channel) -> &mut T {
        match channel {
            Channel::Voice => &mut self.voice,
            Channel::Chat => &mut self.chat,
            Channel::Email => &mut self.email,
            Channel::Social => &mut self.social,
            Channel::Callback => &mut self.callback,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_indexes_every_channel() {
        let mut cap = PerChannel::splat(0u8);
        for (i, c) in Channel::ALL.into_iter().enumerate() {
            assert_eq!(c.index(), i);
            cap[c] = i as u8;
        }
        assert_eq!(
            cap.iter().map(|(_, v)| v).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn timestamps_saturate() {
        assert_eq!(
            Timestamp(u64::MAX).saturating_add_ms(5),
            Timestamp(u64::MAX)
        );
        assert_eq!(Timestamp(3).millis_since(Timestamp(10)), 0);
        assert_eq!(Timestamp(10).millis_since(Timestamp(3)), 7);
    }

    #[test]
    fn capacity_deserialises_with_defaults() {
        let cap: PerChannel<u8> = serde_json::from_str(r#"{"voice":1,"chat":3}"#).unwrap();
        assert_eq!(cap.voice, 1);
        assert_eq!(cap.chat, 3);
        assert_eq!(cap.email, 0);
    }
}
