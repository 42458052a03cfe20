//! `stats` (placeholder until implemented).
