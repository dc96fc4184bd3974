//! strata-tests: black-box integration tests of Strata — in-process clusters, real Kafka clients
//! (librdkafka through the rdkafka crate), testcontainers deployments and fault injection.
//!
//! The tests live under `tests/tests/`; this library holds the helpers they share. It is filled
//! as the broker, tiering and deployment issues land.
