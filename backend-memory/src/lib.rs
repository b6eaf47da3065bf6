//! In-process coordination cluster for sharedstate, with fault injection.
#![deny(missing_docs)]
