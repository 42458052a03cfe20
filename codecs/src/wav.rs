//! `wav` (placeholder until implemented).
