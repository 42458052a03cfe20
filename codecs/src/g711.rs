//! `g711` (placeholder until implemented).
