//! Opening the object store a URL names.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::client::SpawnedReqwestConnector;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;

use super::TierError;

/// Where remote data goes. `url` is `file:///abs/dir`, `s3://bucket/prefix` or
/// `memory://prefix`; the S3 settings apply to `s3://` only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreConfig {
    /// The store and key prefix.
    pub url: String,
    /// An S3-compatible endpoint (MinIO, s3s); empty for AWS.
    pub endpoint: Option<String>,
    /// S3 region.
    pub region: Option<String>,
    /// Static credentials; otherwise the environment's (AWS_*).
    pub access_key_id: Option<String>,
    /// Static credentials.
    pub secret_access_key: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), as MinIO and most S3-compatible servers
    /// want.
    pub path_style: bool,
    /// Allow `http://` endpoints.
    pub allow_http: bool,
}

impl StoreConfig {
    /// The bucket of an `s3://` URL.
    fn bucket(&self) -> Option<&str> {
        let rest = self.url.strip_prefix("s3://")?;
        let bucket = rest.split_once('/').map_or(rest, |(b, _)| b);
        (!bucket.is_empty()).then_some(bucket)
    }

    fn region_or_default(&self) -> String {
        self.region.clone().unwrap_or_else(|| "us-east-1".into())
    }
}

/// Opens the store and returns it with the key prefix under which Strata writes. With `io`,
/// an S3 store's HTTP requests and responses run on that runtime (see [`super::background`]),
/// whichever task makes them.
pub fn open(
    config: &StoreConfig,
    io: Option<&tokio::runtime::Handle>,
) -> Result<(Arc<dyn ObjectStore>, Path), TierError> {
    let bad = |reason: String| TierError::Config {
        key: "object_store.url",
        reason,
    };
    let (scheme, rest) = config
        .url
        .split_once("://")
        .ok_or_else(|| bad(format!("{:?} has no scheme", config.url)))?;
    match scheme {
        "memory" => Ok((Arc::new(InMemory::new()), Path::from(rest))),
        "file" => {
            if !rest.starts_with('/') {
                return Err(bad(format!(
                    "{:?}: file:// needs an absolute path",
                    config.url
                )));
            }
            std::fs::create_dir_all(rest).map_err(|e| bad(format!("creating {rest}: {e}")))?;
            let fs = LocalFileSystem::new_with_prefix(rest)?.with_automatic_cleanup(true);
            Ok((Arc::new(fs), Path::default()))
        }
        "s3" => {
            let prefix = rest.split_once('/').map_or("", |(_, p)| p);
            let bucket = config
                .bucket()
                .ok_or_else(|| bad(format!("{:?} names no bucket", config.url)))?;
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_region(config.region_or_default())
                .with_virtual_hosted_style_request(!config.path_style)
                .with_allow_http(config.allow_http);
            if let Some(e) = &config.endpoint {
                b = b.with_endpoint(e);
            }
            if let Some(io) = io {
                b = b.with_http_connector(SpawnedReqwestConnector::new(io.clone()));
            }
            if let (Some(k), Some(s)) = (&config.access_key_id, &config.secret_access_key) {
                b = b.with_access_key_id(k).with_secret_access_key(s);
            }
            Ok((Arc::new(b.build()?), Path::from(prefix)))
        }
        other => Err(bad(format!(
            "unsupported scheme {other:?}: use file, s3 or memory"
        ))),
    }
}

/// Creates the bucket of an `s3://` URL unless it exists already (owned by these
/// credentials). object_store has no bucket calls, so this one goes through aws-sdk-s3, with
/// the configured credentials or else `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
/// `AWS_SESSION_TOKEN`. Other schemes have no buckets: nothing to do.
pub async fn create_bucket(config: &StoreConfig) -> Result<(), TierError> {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};

    let Some(bucket) = config.bucket() else {
        return Ok(());
    };
    let unusable = |reason: String| TierError::Unreachable {
        url: config.url.clone(),
        reason,
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let key = config
        .access_key_id
        .clone()
        .or_else(|| env("AWS_ACCESS_KEY_ID"));
    let secret = config
        .secret_access_key
        .clone()
        .or_else(|| env("AWS_SECRET_ACCESS_KEY"));
    let (Some(key), Some(secret)) = (key, secret) else {
        return Err(unusable(
            "create_bucket needs credentials: set object_store.access_key_id and \
             secret_access_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                .into(),
        ));
    };
    let region = config.region_or_default();
    let mut b = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.clone()))
        .credentials_provider(Credentials::new(
            key,
            secret,
            env("AWS_SESSION_TOKEN"),
            None,
            "strata-config",
        ))
        .force_path_style(config.path_style);
    if let Some(e) = &config.endpoint {
        b = b.endpoint_url(e);
    }
    let client = aws_sdk_s3::Client::from_conf(b.build());
    let reachable = || async { client.head_bucket().bucket(bucket).send().await.is_ok() };
    if reachable().await {
        return Ok(());
    }
    let mut request = client.create_bucket().bucket(bucket);
    // us-east-1 is the one region that takes no location constraint.
    if region != "us-east-1" {
        request = request.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(region.as_str()))
                .build(),
        );
    }
    match request.send().await {
        Ok(_) => {
            tracing::info!(bucket, "created the object store bucket");
            Ok(())
        }
        Err(e) => match e.into_service_error() {
            // Created meanwhile (some servers answer "exists" for the caller's own bucket):
            // fine if these credentials can use it.
            e if (e.is_bucket_already_owned_by_you() || e.is_bucket_already_exists())
                && reachable().await =>
            {
                Ok(())
            }
            e => Err(unusable(format!(
                "creating bucket {bucket}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            ))),
        },
    }
}

/// Checks that `store` honours create-only puts, which manifest fencing rests on: a probe
/// object under `prefix` is created twice, and the second must be refused. Some
/// S3-compatible servers accept the conditional header and ignore it; two brokers could then
/// both commit the same manifest version. `url` names the store in the error; a store that
/// does not answer is `Store`, one that answers wrongly `Unreachable`.
pub async fn check_create_only(
    store: &dyn ObjectStore,
    prefix: &Path,
    url: &str,
) -> Result<(), TierError> {
    use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

    let key = prefix
        .clone()
        .join("_strata")
        .join(format!("create-only-probe-{}", uuid::Uuid::new_v4()));
    let create = || PutOptions::from(PutMode::Create);
    let unusable = |reason: String| TierError::Unreachable {
        url: url.to_owned(),
        reason,
    };
    store
        .put_opts(&key, PutPayload::from_static(b"1"), create())
        .await?;
    let second = store
        .put_opts(&key, PutPayload::from_static(b"2"), create())
        .await;
    let _ = store.delete(&key).await;
    match second {
        Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
        Ok(_) => Err(unusable(
            "it accepted a second create-only put of the same key, so it ignores conditional \
             writes and two brokers could both commit one manifest version; use a store that \
             honours If-None-Match, or set object_store.verify_create_only = false to start \
             anyway (unsafe unless a single broker ever writes to this prefix)"
                .into(),
        )),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(u: &str) -> StoreConfig {
        StoreConfig {
            url: u.into(),
            ..StoreConfig::default()
        }
    }

    #[test]
    fn urls_pick_the_store_and_prefix() {
        let (_, p) = open(&url("memory://a/b"), None).expect("memory");
        assert_eq!(p.as_ref(), "a/b");
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, p) = open(&url(&format!("file://{}", dir.path().display())), None).expect("file");
        assert_eq!(p.as_ref(), "");
        let (_, p) = open(
            &StoreConfig {
                url: "s3://bucket/strata/data".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                access_key_id: Some("k".into()),
                secret_access_key: Some("s".into()),
                path_style: true,
                allow_http: true,
                ..StoreConfig::default()
            },
            None,
        )
        .expect("s3");
        assert_eq!(p.as_ref(), "strata/data");
        for bad in ["nowhere", "ftp://x", "file://relative", "s3:///x"] {
            assert!(
                matches!(open(&url(bad), None), Err(TierError::Config { .. })),
                "{bad}"
            );
        }
    }
}
