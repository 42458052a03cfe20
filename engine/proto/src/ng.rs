//! `ng` (placeholder until implemented).
