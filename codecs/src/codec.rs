//! `codec` (placeholder until implemented).
