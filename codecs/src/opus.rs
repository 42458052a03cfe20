//! `opus` (placeholder until implemented).
