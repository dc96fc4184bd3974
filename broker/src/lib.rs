//! strata-broker: the Kafka protocol server, partitions, replication and the group and
//! transaction coordinators; home of the `strata` server binary.
//!
//! This crate is filled by the broker issue; today it only reserves its place in the workspace.
