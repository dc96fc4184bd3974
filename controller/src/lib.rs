//! strata-controller: Strata's cluster metadata (brokers, topics, partitions, leader epochs,
//! in-sync replicas, producer-id blocks) kept by an openraft state machine and served over
//! tonic gRPC to brokers and peer controllers.
//!
//! This crate is filled by the controller issue; today it only reserves its place in the
//! workspace so the dependency arrows (`broker` → `controller`) are fixed from the start.
