//! Client quotas: DescribeClientQuotas and AlterClientQuotas.

use std::collections::BTreeMap;

use kafka_protocol::messages::describe_client_quotas_request::ComponentData;
use kafka_protocol::messages::{
    AlterClientQuotasRequest, DescribeClientQuotasRequest, alter_client_quotas_request,
};
use kafka_protocol::protocol::StrBytes;

use crate::{Client, ClientError, refused};

/// What a quota applies to: entity type (`user`, `client-id`, `ip`) → name, `None` being
/// that type's default.
pub type QuotaEntity = BTreeMap<String, Option<String>>;

/// An entity and its quotas by name.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientQuota {
    pub entity: QuotaEntity,
    pub values: BTreeMap<String, f64>,
}

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

/// `user=alice,client-id=<default>`.
pub fn entity_text(entity: &QuotaEntity) -> String {
    entity
        .iter()
        .map(|(kind, name)| format!("{kind}={}", name.as_deref().unwrap_or("<default>")))
        .collect::<Vec<_>>()
        .join(",")
}

impl Client {
    /// Sets (`Some`) and removes (`None`) quotas of `entity`.
    pub async fn alter_quotas(
        &self,
        entity: &QuotaEntity,
        ops: &[(String, Option<f64>)],
    ) -> Result<(), ClientError> {
        let entry = alter_client_quotas_request::EntryData::default()
            .with_entity(
                entity
                    .iter()
                    .map(|(kind, name)| {
                        alter_client_quotas_request::EntityData::default()
                            .with_entity_type(text(kind))
                            .with_entity_name(name.as_deref().map(text))
                    })
                    .collect(),
            )
            .with_ops(
                ops.iter()
                    .map(|(key, value)| {
                        alter_client_quotas_request::OpData::default()
                            .with_key(text(key))
                            .with_value(value.unwrap_or(0.0))
                            .with_remove(value.is_none())
                    })
                    .collect(),
            );
        let req = AlterClientQuotasRequest::default().with_entries(vec![entry]);
        let resp = self.connection().send(&req).await?;
        for e in resp.entries {
            if e.error_code != 0 {
                return Err(refused(&entity_text(entity), e.error_code, e.error_message));
            }
        }
        Ok(())
    }

    /// The quotas of entities that have every `(type, name)` given (a name of `None`: the
    /// type's default), all of them when none is given.
    pub async fn describe_quotas(
        &self,
        filter: &QuotaEntity,
    ) -> Result<Vec<ClientQuota>, ClientError> {
        let components = filter
            .iter()
            .map(|(kind, name)| {
                ComponentData::default()
                    .with_entity_type(text(kind))
                    .with_match_type(if name.is_some() { 0 } else { 1 })
                    .with_match(name.as_deref().map(text))
            })
            .collect();
        let req = DescribeClientQuotasRequest::default().with_components(components);
        let resp = self.connection().send(&req).await?;
        if resp.error_code != 0 {
            return Err(refused("quotas", resp.error_code, resp.error_message));
        }
        Ok(resp
            .entries
            .unwrap_or_default()
            .into_iter()
            .map(|e| ClientQuota {
                entity: e
                    .entity
                    .into_iter()
                    .map(|d| {
                        (
                            d.entity_type.to_string(),
                            d.entity_name.map(|n| n.to_string()),
                        )
                    })
                    .collect(),
                values: e
                    .values
                    .into_iter()
                    .map(|v| (v.key.to_string(), v.value))
                    .collect(),
            })
            .collect())
    }
}
