//! The metadata image this broker follows from the controller, and its version for waiters.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use strata_controller::MetadataImage;
use tokio::sync::watch;

#[derive(Debug)]
pub(crate) struct MetadataView {
    image: RwLock<Arc<MetadataImage>>,
    version: watch::Sender<u64>,
}

impl Default for MetadataView {
    fn default() -> Self {
        Self {
            image: RwLock::new(Arc::new(MetadataImage::default())),
            version: watch::channel(0).0,
        }
    }
}

impl MetadataView {
    /// The current image.
    pub(crate) fn image(&self) -> Arc<MetadataImage> {
        self.image.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Makes `image` the current one and wakes those waiting for its version.
    pub(crate) fn publish(&self, image: MetadataImage) {
        let version = image.version;
        *self.image.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(image);
        self.version.send_replace(version);
    }

    /// Waits until the image reaches `version` (or `timeout` passes); whether it did.
    pub(crate) async fn wait_for_version(&self, version: u64, timeout: Duration) -> bool {
        let mut rx = self.version.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v >= version))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}
