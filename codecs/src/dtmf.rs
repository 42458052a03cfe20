//! `dtmf` (placeholder until implemented).
