//! placeholder
/// Settings of a leg input.
#[derive(Debug, Clone)]
pub struct InputConfig {}
/// Counters of a leg input.
#[derive(Debug, Clone, Default)]
pub struct InputStats {}
/// One leg's decoded input.
#[derive(Debug)]
pub struct LegInput {}
