//! Runnable sharedstate examples; see the `examples/` targets.
#![deny(missing_docs)]
