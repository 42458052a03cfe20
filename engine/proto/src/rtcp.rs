//! `rtcp` (placeholder until implemented).
