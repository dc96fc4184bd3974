//! SaslHandshake and SaslAuthenticate (over [`crate::security::sasl`]), and the SCRAM
//! credentials' admin APIs: DescribeUserScramCredentials and AlterUserScramCredentials.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use strata_client::scram::{self, ScramHash};
use strata_controller::Command;
use strata_controller::model::ScramCredential;

use super::Reply;
use super::str_bytes;
use crate::protocol::{Frame, FrameError};
use crate::security::Session;
use crate::security::acl::{self, Resource};
use crate::security::sasl::{Failure, Mechanism, Step, Verifiers, code};
use crate::state::BrokerState;

/// Kafka's error codes of the credential APIs.
const RESOURCE_NOT_FOUND: i16 = 91;
const DUPLICATE_RESOURCE: i16 = 92;
const UNACCEPTABLE_CREDENTIAL: i16 = 93;

pub(super) async fn sasl_handshake(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: SaslHandshakeRequest = frame.decode()?;
    let session = &frame.session;
    let enabled = &state.config.kafka.sasl.mechanisms;
    let listed = enabled.iter().map(|m| str_bytes(m)).collect();
    let answer = SaslHandshakeResponse::default().with_mechanisms(listed);
    if !session.listener.protocol.sasl() {
        session.close_after_reply();
        return frame.respond(&answer.with_error_code(code::ILLEGAL_SASL_STATE));
    }
    // Re-authentication (KIP-368) is SaslAuthenticate's: bare tokens could be taken for the
    // requests in flight on an authenticated connection.
    if frame.version == 0 && session.authenticated() && session.listener.protocol.sasl() {
        session.close_after_reply();
        return frame.respond(&answer.with_error_code(code::ILLEGAL_SASL_STATE));
    }
    let chosen = Mechanism::of_name(req.mechanism.as_str())
        .filter(|m| enabled.iter().any(|e| e == m.name()));
    let Some(mechanism) = chosen else {
        tracing::info!(peer = %session.peer, mechanism = %req.mechanism.as_str(),
            "SASL mechanism not enabled; closing");
        session.close_after_reply();
        return frame.respond(&answer.with_error_code(code::UNSUPPORTED_SASL_MECHANISM));
    };
    // v0: the tokens follow as bare frames (see `sasl_token`).
    let error = match session.choose(mechanism, frame.version == 0) {
        Ok(()) => 0,
        Err(Failure { code, .. }) => code,
    };
    frame.respond(&answer.with_error_code(error))
}

/// One step of the connection's SASL exchange with `token`; a failure is answered after
/// `kafka.sasl.failed_authentication_delay_ms` (the connection then closes).
async fn step(state: &BrokerState, session: &Arc<Session>, token: Bytes) -> Result<Step, Failure> {
    let session = session.clone();
    let image = state.image();
    let sasl = &state.config.kafka.sasl;
    let lifetime = Duration::from_millis(sasl.max_reauth_ms);
    let now = tokio::time::Instant::now();
    // PLAIN derives a salted password (thousands of HMACs): off the async workers.
    let peer = session.peer;
    let jwt = state.jwt.clone();
    let stepped = tokio::task::spawn_blocking(move || {
        let lookup =
            |user: &str, hash: ScramHash| image.scram.get(user)?.get(hash.mechanism()).cloned();
        let verifiers = Verifiers {
            scram: &lookup,
            jwt: jwt.as_deref(),
        };
        session.step(&token, &verifiers, lifetime, now)
    })
    .await
    .unwrap_or_else(|_| {
        Err(Failure {
            code: code::SASL_AUTHENTICATION_FAILED,
            message: "authentication failed".into(),
        })
    });
    if let Err(Failure { message, .. }) = &stepped {
        tracing::info!(%peer, %message, "SASL authentication failed; closing");
        tokio::time::sleep(Duration::from_millis(sasl.failed_authentication_delay_ms)).await;
    }
    stepped
}

/// A bare SASL token after a SaslHandshake v0: answered with the next bare token (the
/// connection closes on a failure, as Kafka's does: v0 has no error to answer with).
pub(crate) async fn sasl_token(
    state: &Arc<BrokerState>,
    session: &Arc<Session>,
    token: Bytes,
) -> Result<Option<Reply>, FrameError> {
    let next = match step(state, session, token).await {
        Ok(Step::Continue(next)) => next,
        Ok(Step::Done { token, .. }) => token,
        Err(Failure { message, .. }) => return Err(FrameError::NotAdmitted(message)),
    };
    let mut out = Vec::with_capacity(next.len() + 4);
    out.extend_from_slice(&(next.len() as u32).to_be_bytes());
    out.extend_from_slice(&next);
    Ok(Some(Bytes::from(out).into()))
}

pub(super) async fn sasl_authenticate(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: SaslAuthenticateRequest = frame.decode()?;
    let stepped = step(state, &frame.session, req.auth_bytes.clone()).await;
    let resp = match stepped {
        Ok(Step::Continue(challenge)) => {
            SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(challenge))
        }
        Ok(Step::Done { token, lifetime_ms }) => {
            tracing::debug!(peer = %frame.session.peer, principal = %frame.session.principal(),
                "SASL authentication succeeded");
            SaslAuthenticateResponse::default()
                .with_auth_bytes(Bytes::from(token))
                .with_session_lifetime_ms(lifetime_ms)
        }
        Err(Failure { code, message }) => SaslAuthenticateResponse::default()
            .with_error_code(code)
            .with_error_message(Some(str_bytes(&message))),
    };
    frame.respond(&resp)
}

pub(super) async fn describe_user_scram_credentials(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: DescribeUserScramCredentialsRequest = frame.decode()?;
    if !super::allowed(state, frame, acl::code::DESCRIBE, Resource::Cluster) {
        return frame.respond(
            &DescribeUserScramCredentialsResponse::default()
                .with_error_code(acl::code::CLUSTER_AUTHORIZATION_FAILED),
        );
    }
    let image = state.image();
    let describe = |user: &str, error: Option<(i16, String)>| {
        let result = DescribeUserScramCredentialsResult::default().with_user(str_bytes(user));
        if let Some((code, message)) = error {
            return result
                .with_error_code(code)
                .with_error_message(Some(str_bytes(&message)));
        }
        let infos = image
            .scram
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|(mechanism, c)| {
                let hash = ScramHash::of_mechanism(mechanism)?;
                Some(
                    CredentialInfo::default()
                        .with_mechanism(hash.kafka_type())
                        .with_iterations(c.iterations),
                )
            })
            .collect();
        result.with_credential_infos(infos)
    };
    let results = match &req.users {
        None => image.scram.keys().map(|u| describe(u, None)).collect(),
        Some(users) => {
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for u in users {
                *counts.entry(u.name.as_str()).or_default() += 1;
            }
            counts
                .into_iter()
                .map(|(user, n)| {
                    let error = if n > 1 {
                        Some((
                            DUPLICATE_RESOURCE,
                            format!("Cannot describe user {user} twice"),
                        ))
                    } else if !image.scram.contains_key(user) {
                        Some((
                            RESOURCE_NOT_FOUND,
                            format!(
                                "Attempt to describe a user credential that does not exist: {user}"
                            ),
                        ))
                    } else {
                        None
                    };
                    describe(user, error)
                })
                .collect()
        }
    };
    frame.respond(&DescribeUserScramCredentialsResponse::default().with_results(results))
}

/// One user's requested changes: `(mechanism, credential)` to set, mechanisms to remove.
#[derive(Default)]
struct UserChanges {
    upsert: Vec<(ScramHash, ScramCredential)>,
    delete: Vec<ScramHash>,
    error: Option<(i16, String)>,
}

pub(super) async fn alter_user_scram_credentials(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: AlterUserScramCredentialsRequest = frame.decode()?;
    if !super::allowed(state, frame, acl::code::ALTER, Resource::Cluster) {
        let results = req
            .deletions
            .iter()
            .map(|d| &d.name)
            .chain(req.upsertions.iter().map(|u| &u.name))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|user| {
                AlterUserScramCredentialsResult::default()
                    .with_user(user.clone())
                    .with_error_code(acl::code::CLUSTER_AUTHORIZATION_FAILED)
            })
            .collect();
        return frame.respond(&AlterUserScramCredentialsResponse::default().with_results(results));
    }
    let image = state.image();
    let mut users: BTreeMap<String, UserChanges> = BTreeMap::new();
    let mut seen: BTreeSet<(String, i8)> = BTreeSet::new();
    let entries = req
        .deletions
        .iter()
        .map(|d| (d.name.to_string(), d.mechanism, None))
        .chain(
            req.upsertions
                .iter()
                .map(|u| (u.name.to_string(), u.mechanism, Some(u))),
        );
    for (user, mechanism, upsert) in entries {
        let changes = users.entry(user.clone()).or_default();
        let fail = |code: i16, message: String| Some((code, message));
        let hash = ScramHash::of_kafka_type(mechanism);
        let error = if user.is_empty() {
            fail(UNACCEPTABLE_CREDENTIAL, "Username must not be empty".into())
        } else if !seen.insert((user.clone(), mechanism)) {
            fail(
                DUPLICATE_RESOURCE,
                "A user credential cannot be altered twice in the same request".into(),
            )
        } else if hash.is_none() {
            fail(
                code::UNSUPPORTED_SASL_MECHANISM,
                format!("Unknown SCRAM mechanism {mechanism}"),
            )
        } else {
            None
        };
        if changes.error.is_none() {
            changes.error = error;
        }
        let Some(hash) = hash else { continue };
        match upsert {
            None if image
                .scram
                .get(&user)
                .is_none_or(|c| !c.contains_key(hash.mechanism())) =>
            {
                changes.error.get_or_insert((
                    RESOURCE_NOT_FOUND,
                    "Attempt to delete a user credential that does not exist".into(),
                ));
            }
            None => changes.delete.push(hash),
            Some(u) => {
                let iterations = u32::try_from(u.iterations).unwrap_or(0);
                let problem = if iterations < scram::MIN_ITERATIONS {
                    Some(format!(
                        "Too few iterations: at least {}",
                        scram::MIN_ITERATIONS
                    ))
                } else if iterations > scram::MAX_ITERATIONS {
                    Some(format!(
                        "Too many iterations: at most {}",
                        scram::MAX_ITERATIONS
                    ))
                } else if u.salt.is_empty() || u.salted_password.len() != hash.digest_len() {
                    Some(format!(
                        "A salt and a {}-byte salted password are needed",
                        hash.digest_len()
                    ))
                } else {
                    None
                };
                if let Some(message) = problem {
                    changes
                        .error
                        .get_or_insert((UNACCEPTABLE_CREDENTIAL, message));
                    continue;
                }
                let (stored_key, server_key) = hash.keys(&u.salted_password);
                changes.upsert.push((
                    hash,
                    ScramCredential {
                        salt: u.salt.to_vec(),
                        stored_key,
                        server_key,
                        iterations: u.iterations,
                    },
                ));
            }
        }
    }
    // Users without errors change together; the others not at all (as in Kafka).
    let mut command_upsert = Vec::new();
    let mut command_delete = Vec::new();
    for (user, c) in &users {
        if c.error.is_some() {
            continue;
        }
        command_delete.extend(
            c.delete
                .iter()
                .map(|h| (user.clone(), h.mechanism().to_owned())),
        );
        command_upsert.extend(
            c.upsert
                .iter()
                .map(|(h, cred)| (user.clone(), h.mechanism().to_owned(), cred.clone())),
        );
    }
    let mut failed: Option<(i16, String)> = None;
    if !command_upsert.is_empty() || !command_delete.is_empty() {
        let command = Command::AlterScramCredentials {
            upsert: command_upsert,
            delete: command_delete,
        };
        match state.controller.submit(&command).await {
            Ok(Ok(applied)) => {
                // Logins on this broker see the change at once.
                state
                    .wait_for_version(applied.version, Duration::from_secs(5))
                    .await;
            }
            Ok(Err(e)) => {
                failed = Some((
                    crate::protocol::command_error_code(&e).code(),
                    e.to_string(),
                ))
            }
            Err(e) => {
                failed = Some((
                    kafka_protocol::ResponseError::NotController.code(),
                    format!("the controller did not answer: {e}"),
                ))
            }
        }
    }
    let results = users
        .into_iter()
        .map(|(user, c)| {
            let result = AlterUserScramCredentialsResult::default().with_user(str_bytes(&user));
            match c.error.or_else(|| failed.clone()) {
                Some((code, message)) => result
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(&message))),
                None => result,
            }
        })
        .collect();
    frame.respond(&AlterUserScramCredentialsResponse::default().with_results(results))
}
