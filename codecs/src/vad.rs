//! `vad` (placeholder until implemented).
