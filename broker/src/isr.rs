//! The leader's half of ISR management: every few seconds, each partition this broker leads
//! compares the in-sync replicas the metadata names with what its followers' fetches show
//! (`Partition::wanted_isr`: out after `replica_lag_time_max_ms` without catching up, back in
//! once caught up to the high watermark) and asks the controller for the change (AlterIsr,
//! checked against the partition epoch, so a stale leader's request is refused).

use std::sync::Arc;
use std::time::Duration;

use strata_controller::Command;

use crate::state::BrokerState;
use crate::supervisor::Outcome;

/// One pass over the partitions this broker leads.
pub(crate) async fn step(state: Arc<BrokerState>) -> Outcome {
    let lag = Duration::from_millis(state.config.topics.replica_lag_time_max_ms);
    let image = state.image();
    for part in state.partitions.hosted() {
        let Some(isr) = part.wanted_isr(lag) else {
            continue;
        };
        let Some(meta) = image.topic_by_id(part.topic_id).and_then(|t| {
            t.partitions
                .get(usize::try_from(part.index).unwrap_or(usize::MAX))
        }) else {
            continue;
        };
        // A fenced broker cannot join (the controller would refuse the whole change).
        let isr: Vec<i32> = isr
            .into_iter()
            .filter(|id| meta.isr.contains(id) || image.brokers.get(id).is_some_and(|b| !b.fenced))
            .collect();
        if isr == meta.isr {
            continue;
        }
        let command = Command::AlterIsr {
            topic: part.topic.clone(),
            partition: part.index,
            broker_id: state.id,
            broker_epoch: state.epoch(),
            leader_epoch: meta.leader_epoch,
            partition_epoch: meta.partition_epoch,
            isr: isr.clone(),
        };
        match state.controller.submit(&command).await {
            Ok(Ok(_)) => {
                tracing::info!(topic = %part.topic, partition = part.index, from = ?meta.isr,
                    to = ?isr, "in-sync replicas changed")
            }
            // Usually a newer leader or partition epoch, which the metadata on its way settles;
            // at warn, as a refusal that repeats keeps a replica out of the ISR for good.
            Ok(Err(e)) => tracing::warn!(topic = %part.topic, partition = part.index,
                wanted = ?isr, error = %e, "ISR change refused"),
            Err(e) => return Outcome::Retry(format!("the controller did not answer: {e}")),
        }
    }
    Outcome::Ok
}
