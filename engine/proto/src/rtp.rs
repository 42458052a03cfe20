//! `rtp` (placeholder until implemented).
