//! `l16` (placeholder until implemented).
