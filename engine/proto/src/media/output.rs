//! placeholder
/// One leg's encoded output.
#[derive(Debug)]
pub struct LegOutput {}
