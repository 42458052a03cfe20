//! `tone` (placeholder until implemented).
