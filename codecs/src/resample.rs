//! `resample` (placeholder until implemented).
