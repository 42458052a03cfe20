//! The media call: members, hears-matrix, the 20 ms tick.

/// Settings of a media call.
#[derive(Debug, Clone)]
pub struct MediaCallConfig {}

/// A call's decoded media.
#[derive(Debug)]
pub struct MediaCall {}
