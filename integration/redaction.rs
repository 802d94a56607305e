//! End to end: the `redaction` and `attributes` processors in the running binary.

mod common;
