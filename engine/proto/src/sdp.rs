//! `sdp` (placeholder until implemented).
