//! `session` (placeholder until implemented).
