//! `switchboard-load`: the Switchboard load harness.
fn main() {}
