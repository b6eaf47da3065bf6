//! etcd v3 backend for sharedstate (etcd-client).
#![deny(missing_docs)]
