//! `relay` (placeholder until implemented).
