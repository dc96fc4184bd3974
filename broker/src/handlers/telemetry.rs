//! GetTelemetrySubscriptions and PushTelemetry (KIP-714), answered by [`crate::telemetry`].

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::messages::{
    GetTelemetrySubscriptionsRequest, GetTelemetrySubscriptionsResponse, PushTelemetryRequest,
    PushTelemetryResponse,
};

use super::str_bytes;
use crate::protocol::{Frame, FrameError};
use crate::state::BrokerState;
use crate::telemetry::Push;

pub(super) async fn get_telemetry_subscriptions(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: GetTelemetrySubscriptionsRequest = frame.decode()?;
    let sub = state
        .telemetry
        .subscribe(req.client_instance_id, Instant::now());
    frame.respond(
        &GetTelemetrySubscriptionsResponse::default()
            .with_client_instance_id(sub.client_instance_id)
            .with_subscription_id(sub.subscription_id)
            .with_accepted_compression_types(sub.accepted_compression)
            .with_push_interval_ms(sub.push_interval_ms)
            .with_telemetry_max_bytes(sub.max_bytes)
            // Cumulative sums: the latest pushed value is the total, as exported.
            .with_delta_temporality(false)
            .with_requested_metrics(sub.requested.iter().map(|m| str_bytes(m)).collect()),
    )
}

pub(super) async fn push_telemetry(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: PushTelemetryRequest = frame.decode()?;
    let push = Push {
        client_instance_id: req.client_instance_id,
        client_id: frame.header.client_id.as_deref().unwrap_or_default(),
        subscription_id: req.subscription_id,
        terminating: req.terminating,
        compression: req.compression_type,
        metrics: &req.metrics,
    };
    let error = state.telemetry.push(&push, Instant::now());
    state.metrics.error_code(frame.api, error);
    state
        .metrics
        .telemetry_bytes
        .inc_by(req.metrics.len() as u64);
    frame.respond(&PushTelemetryResponse::default().with_error_code(error))
}
