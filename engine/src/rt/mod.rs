//! The runtime: the only I/O in the engine. Placeholder until implemented.
