//! DescribeClientQuotas and AlterClientQuotas over the quotas in the cluster metadata (see
//! [`crate::quota`] for how they are enforced).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::{
    AlterClientQuotasRequest, AlterClientQuotasResponse, DescribeClientQuotasRequest,
    DescribeClientQuotasResponse, alter_client_quotas_response, describe_client_quotas_response,
};
use kafka_protocol::protocol::StrBytes;
use strata_controller::Command;
use strata_controller::command::QuotaOps;
use strata_controller::model::{QuotaEntity, QuotaValue};

use super::acls::submit;
use super::str_bytes;
use crate::protocol::{Frame, FrameError};
use crate::quota::{
    CLIENT_ID, CONNECTION_CREATION_RATE, CONSUMER_BYTE_RATE, CONTROLLER_MUTATION_RATE, IP,
    PRODUCER_BYTE_RATE, REQUEST_PERCENTAGE, USER,
};
use crate::security::acl::{Resource, code};
use crate::state::BrokerState;

const INVALID_REQUEST: i16 = 42;

/// DescribeClientQuotas' match types.
const MATCH_EXACT: i8 = 0;
const MATCH_DEFAULT: i8 = 1;
const MATCH_SPECIFIED: i8 = 2;

/// An entity from its `(type, name)` pairs, checked as Kafka does: known types, each once,
/// `ip` alone and naming an address.
fn entity<'a>(
    pairs: impl Iterator<Item = (&'a StrBytes, Option<&'a StrBytes>)>,
) -> Result<QuotaEntity, String> {
    let mut map = BTreeMap::new();
    for (kind, name) in pairs {
        let kind = kind.as_str();
        if ![USER, CLIENT_ID, IP].contains(&kind) {
            return Err(format!("entity type {kind:?} is not supported"));
        }
        if map
            .insert(kind.to_owned(), name.map(|n| n.to_string()))
            .is_some()
        {
            return Err(format!("entity type {kind:?} is given twice"));
        }
    }
    if map.is_empty() {
        return Err("the entity names no type".into());
    }
    if let Some(ip) = map.get(IP) {
        if map.len() > 1 {
            return Err("an ip entity cannot be combined with a user or client id".into());
        }
        if let Some(ip) = ip
            && ip.parse::<std::net::IpAddr>().is_err()
        {
            return Err(format!("{ip:?} is not an IP address"));
        }
    }
    Ok(QuotaEntity(map))
}

/// Why `value` cannot be quota `key` of `entity`, if it cannot.
fn invalid_value(entity: &QuotaEntity, key: &str, value: Option<f64>) -> Option<String> {
    let ip = entity.0.contains_key(IP);
    let whole = match key {
        PRODUCER_BYTE_RATE | CONSUMER_BYTE_RATE if !ip => true,
        REQUEST_PERCENTAGE if !ip => false,
        CONNECTION_CREATION_RATE if ip => true,
        CONTROLLER_MUTATION_RATE if !ip => {
            return Some(format!(
                "{key} is not enforced by this broker; it is not accepted rather than ignored"
            ));
        }
        _ => {
            return Some(format!(
                "{key:?} is not a quota of {} entities",
                if ip { "ip" } else { "user and client-id" }
            ));
        }
    };
    let value = value?;
    if !value.is_finite() || value <= 0.0 {
        return Some(format!("{key} must be a positive number, not {value}"));
    }
    if whole && value.fract() != 0.0 {
        return Some(format!("{key} must be a whole number, not {value}"));
    }
    None
}

pub(super) async fn alter_client_quotas(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: AlterClientQuotasRequest = frame.decode()?;
    let allowed = super::allowed(state, frame, code::ALTER_CONFIGS, Resource::Cluster);
    let checked: Vec<Result<(QuotaEntity, QuotaOps), (i16, String)>> = req
        .entries
        .iter()
        .map(|e| {
            if !allowed {
                return Err((
                    code::CLUSTER_AUTHORIZATION_FAILED,
                    "ALTER_CONFIGS on the cluster is needed".into(),
                ));
            }
            let entity = entity(
                e.entity
                    .iter()
                    .map(|d| (&d.entity_type, d.entity_name.as_ref())),
            )
            .map_err(|why| (INVALID_REQUEST, why))?;
            let mut ops = Vec::new();
            for op in &e.ops {
                let value = (!op.remove).then_some(op.value);
                if let Some(why) = invalid_value(&entity, op.key.as_str(), value) {
                    return Err((INVALID_REQUEST, why));
                }
                ops.push((op.key.to_string(), value.map(QuotaValue)));
            }
            Ok((entity, ops))
        })
        .collect();
    let valid: Vec<_> = checked.iter().filter_map(|c| c.clone().ok()).collect();
    let stored = match valid.is_empty() || req.validate_only {
        true => Ok(()),
        false => submit(state, Command::AlterClientQuotas { entries: valid }).await,
    };
    let entries = req
        .entries
        .iter()
        .zip(checked)
        .map(|(asked, result)| {
            let entity = asked
                .entity
                .iter()
                .map(|d| {
                    alter_client_quotas_response::EntityData::default()
                        .with_entity_type(d.entity_type.clone())
                        .with_entity_name(d.entity_name.clone())
                })
                .collect();
            let entry = alter_client_quotas_response::EntryData::default().with_entity(entity);
            match result.err().or_else(|| stored.clone().err()) {
                None => entry,
                Some((code, message)) => entry
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(&message))),
            }
        })
        .collect();
    frame.respond(&AlterClientQuotasResponse::default().with_entries(entries))
}

/// Whether `entity` has what `component` asks of its type.
fn component_matches(entity: &QuotaEntity, kind: &str, match_type: i8, name: Option<&str>) -> bool {
    match (entity.0.get(kind), match_type) {
        (Some(Some(n)), MATCH_EXACT) => name == Some(n.as_str()),
        (Some(None), MATCH_DEFAULT) => true,
        (Some(Some(_)), MATCH_SPECIFIED) => true,
        _ => false,
    }
}

pub(super) async fn describe_client_quotas(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: DescribeClientQuotasRequest = frame.decode()?;
    let refuse = |code: i16, message: String| {
        frame.respond(
            &DescribeClientQuotasResponse::default()
                .with_error_code(code)
                .with_error_message(Some(str_bytes(&message))),
        )
    };
    if !super::allowed(state, frame, code::DESCRIBE_CONFIGS, Resource::Cluster) {
        return refuse(
            code::CLUSTER_AUTHORIZATION_FAILED,
            "DESCRIBE_CONFIGS on the cluster is needed".into(),
        );
    }
    let mut kinds = Vec::new();
    for c in &req.components {
        let kind = c.entity_type.as_str();
        if ![USER, CLIENT_ID, IP].contains(&kind) {
            return refuse(
                INVALID_REQUEST,
                format!("entity type {kind:?} is not supported"),
            );
        }
        if kinds.contains(&kind) {
            return refuse(
                INVALID_REQUEST,
                format!("entity type {kind:?} is filtered twice"),
            );
        }
        if ![MATCH_EXACT, MATCH_DEFAULT, MATCH_SPECIFIED].contains(&c.match_type) {
            return refuse(
                INVALID_REQUEST,
                format!("match type {} is not supported", c.match_type),
            );
        }
        if c.match_type == MATCH_EXACT && c._match.is_none() {
            return refuse(INVALID_REQUEST, "an exact match needs a name".into());
        }
        kinds.push(kind);
    }
    if kinds.contains(&IP) && kinds.len() > 1 {
        return refuse(
            INVALID_REQUEST,
            "an ip filter cannot be combined with a user or client id".into(),
        );
    }
    let image = state.image();
    let entries = image
        .quotas
        .iter()
        .filter(|q| {
            req.components.iter().all(|c| {
                component_matches(
                    &q.entity,
                    c.entity_type.as_str(),
                    c.match_type,
                    c._match.as_ref().map(|m| m.as_str()),
                )
            }) && (!req.strict || q.entity.0.len() == req.components.len())
        })
        .map(|q| {
            let entity = q
                .entity
                .0
                .iter()
                .map(|(kind, name)| {
                    describe_client_quotas_response::EntityData::default()
                        .with_entity_type(str_bytes(kind))
                        .with_entity_name(name.as_deref().map(str_bytes))
                })
                .collect();
            let values = q
                .values
                .iter()
                .map(|(key, value)| {
                    describe_client_quotas_response::ValueData::default()
                        .with_key(str_bytes(key))
                        .with_value(value.0)
                })
                .collect();
            describe_client_quotas_response::EntryData::default()
                .with_entity(entity)
                .with_values(values)
        })
        .collect();
    frame.respond(&DescribeClientQuotasResponse::default().with_entries(Some(entries)))
}
