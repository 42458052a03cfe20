//! `bencode` (placeholder until implemented).
