//! SCRAM users: DescribeUserScramCredentials and AlterUserScramCredentials. The password
//! never leaves the client: it sends a random salt and the salted password (as Kafka's
//! tools do), from which the broker keeps only the derived keys.

use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, DescribeUserScramCredentialsRequest,
};
use kafka_protocol::protocol::StrBytes;

use crate::scram::{self, ScramHash};
use crate::{Client, ClientError};

/// A user and the SCRAM mechanisms it has credentials for, with their iteration counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramUser {
    pub name: String,
    pub credentials: Vec<(String, i32)>,
}

fn mechanism(name: &str) -> Result<ScramHash, ClientError> {
    ScramHash::of_mechanism(name).ok_or_else(|| {
        ClientError::NotApplicable(format!(
            "{name} is not a SCRAM mechanism (SCRAM-SHA-256 or SCRAM-SHA-512)"
        ))
    })
}

impl Client {
    /// Sets `user`'s password for `mechanism` (creating the user), derived with
    /// `iterations` rounds.
    pub async fn set_scram_password(
        &self,
        user: &str,
        mechanism_name: &str,
        password: &str,
        iterations: u32,
    ) -> Result<(), ClientError> {
        let hash = mechanism(mechanism_name)?;
        let salt = scram::random_bytes(32);
        let salted = hash.salted_password(password.as_bytes(), &salt, iterations);
        let upsert = ScramCredentialUpsertion::default()
            .with_name(StrBytes::from_string(user.to_owned()))
            .with_mechanism(hash.kafka_type())
            .with_iterations(i32::try_from(iterations).unwrap_or(i32::MAX))
            .with_salt(salt.into())
            .with_salted_password(salted.into());
        let req = AlterUserScramCredentialsRequest::default().with_upsertions(vec![upsert]);
        self.alter_scram(req, user).await
    }

    /// Removes `user`'s credential for `mechanism` (the user goes with its last one).
    pub async fn delete_scram(&self, user: &str, mechanism_name: &str) -> Result<(), ClientError> {
        let hash = mechanism(mechanism_name)?;
        let deletion = ScramCredentialDeletion::default()
            .with_name(StrBytes::from_string(user.to_owned()))
            .with_mechanism(hash.kafka_type());
        let req = AlterUserScramCredentialsRequest::default().with_deletions(vec![deletion]);
        self.alter_scram(req, user).await
    }

    async fn alter_scram(
        &self,
        req: AlterUserScramCredentialsRequest,
        user: &str,
    ) -> Result<(), ClientError> {
        let resp = self.connection().send(&req).await?;
        for r in resp.results {
            if r.error_code != 0 {
                let what = format!("user {}", r.user.as_str());
                return Err(crate::refused(&what, r.error_code, r.error_message));
            }
        }
        tracing::debug!(user, "SCRAM credentials altered");
        Ok(())
    }

    /// The SCRAM users (`None`: all of them).
    pub async fn describe_scram(
        &self,
        users: Option<&[String]>,
    ) -> Result<Vec<ScramUser>, ClientError> {
        let req = DescribeUserScramCredentialsRequest::default().with_users(users.map(|us| {
            us.iter()
                .map(|u| UserName::default().with_name(StrBytes::from_string(u.clone())))
                .collect()
        }));
        let resp = self.connection().send(&req).await?;
        crate::check("DescribeUserScramCredentials", resp.error_code)?;
        let mut out = Vec::new();
        for r in resp.results {
            crate::check(format!("describing user {}", r.user.as_str()), r.error_code)?;
            out.push(ScramUser {
                name: r.user.to_string(),
                credentials: r
                    .credential_infos
                    .iter()
                    .map(|c| {
                        let name = ScramHash::of_kafka_type(c.mechanism)
                            .map_or("unknown", ScramHash::mechanism);
                        (name.to_owned(), c.iterations)
                    })
                    .collect(),
            });
        }
        Ok(out)
    }
}
