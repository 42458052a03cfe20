//! `g722` (placeholder until implemented).
