//! One async function per behaviour, grouped by topic. Each takes a
//! [`BackendFactory`](crate::BackendFactory) and panics on failure.
