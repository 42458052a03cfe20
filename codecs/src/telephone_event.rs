//! `telephone_event` (placeholder until implemented).
