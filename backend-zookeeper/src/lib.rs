//! ZooKeeper backend for sharedstate (zookeeper-client).
#![deny(missing_docs)]
