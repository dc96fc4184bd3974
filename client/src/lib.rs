//! strata-client: an async Kafka-protocol client library (used by the broker for follower
//! fetching, by `stratactl` and by tests).
//!
//! This crate is filled by the client issue; today it only reserves its place in the workspace.
