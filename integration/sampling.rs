//! End to end: the `probabilistic_sampler` and `tail_sampling` processors in the running binary.

mod common;
