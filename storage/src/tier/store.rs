//! Opening the object store a URL names.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
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

/// Opens the store and returns it with the key prefix under which Strata writes.
pub fn open(config: &StoreConfig) -> Result<(Arc<dyn ObjectStore>, Path), TierError> {
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
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad(format!("{:?} names no bucket", config.url)));
            }
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_region(config.region.clone().unwrap_or_else(|| "us-east-1".into()))
                .with_virtual_hosted_style_request(!config.path_style)
                .with_allow_http(config.allow_http);
            if let Some(e) = &config.endpoint {
                b = b.with_endpoint(e);
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
        let (_, p) = open(&url("memory://a/b")).expect("memory");
        assert_eq!(p.as_ref(), "a/b");
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, p) = open(&url(&format!("file://{}", dir.path().display()))).expect("file");
        assert_eq!(p.as_ref(), "");
        let (_, p) = open(&StoreConfig {
            url: "s3://bucket/strata/data".into(),
            endpoint: Some("http://127.0.0.1:9000".into()),
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            path_style: true,
            allow_http: true,
            ..StoreConfig::default()
        })
        .expect("s3");
        assert_eq!(p.as_ref(), "strata/data");
        for bad in ["nowhere", "ftp://x", "file://relative", "s3:///x"] {
            assert!(
                matches!(open(&url(bad)), Err(TierError::Config { .. })),
                "{bad}"
            );
        }
    }
}
