//! End to end: the `cost`, `resource` and `memory_limiter` processors in the running binary.

mod common;
