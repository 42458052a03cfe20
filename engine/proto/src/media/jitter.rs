//! placeholder
/// Settings of a jitter buffer.
#[derive(Debug, Clone)]
pub struct JitterConfig {}
/// A jitter buffer.
#[derive(Debug)]
pub struct JitterBuffer {}
