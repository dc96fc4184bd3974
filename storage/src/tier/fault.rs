//! A fault-injecting [`ObjectStore`] layer: wraps a store and, while a fault is set, makes
//! every request fail, hang or run slowly. Tests put it between a broker and its store to
//! show what an outage does (and does not) do.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// What the layer does to each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Requests pass through.
    Healthy,
    /// Requests fail with an error, as a store that refuses connections does.
    Fail,
    /// Requests never answer, as a store behind a dropped network path.
    Hang,
    /// Requests answer after this delay.
    Slow(Duration),
    /// Requests pass, but create-only puts overwrite: a server that accepts conditional
    /// headers and ignores them.
    IgnoresConditions,
}

/// Switches the fault of the [`FaultyStore`] it came from.
#[derive(Debug, Clone)]
pub struct FaultSwitch(Arc<Mutex<Fault>>);

impl FaultSwitch {
    /// Sets the fault for requests from now on.
    pub fn set(&self, fault: Fault) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = fault;
    }

    fn get(&self) -> Fault {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies the current fault to one request.
    async fn gate(&self) -> Result<()> {
        match self.get() {
            Fault::Healthy | Fault::IgnoresConditions => Ok(()),
            Fault::Fail => Err(object_store::Error::Generic {
                store: "faulty",
                source: "injected fault: the object store is unavailable".into(),
            }),
            Fault::Hang => futures::future::pending().await,
            Fault::Slow(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
        }
    }
}

/// The fault-injecting layer.
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    switch: FaultSwitch,
}

impl FaultyStore {
    /// Wraps `inner`, healthy at first.
    pub fn new(inner: Arc<dyn ObjectStore>) -> (Self, FaultSwitch) {
        let switch = FaultSwitch(Arc::new(Mutex::new(Fault::Healthy)));
        (
            Self {
                inner,
                switch: switch.clone(),
            },
            switch,
        )
    }
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({:?}, {})", self.switch.get(), self.inner)
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> Result<PutResult> {
        self.switch.gate().await?;
        if self.switch.get() == Fault::IgnoresConditions {
            opts.mode = object_store::PutMode::Overwrite;
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.switch.gate().await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.switch.gate().await?;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let switch = self.switch.clone();
        let inner = self.inner.clone();
        gated(switch, move || inner.delete_stream(locations))
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let switch = self.switch.clone();
        let listed = self.inner.list(prefix);
        gated(switch, move || listed)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.switch.gate().await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.switch.gate().await?;
        self.inner.copy_opts(from, to, options).await
    }
}

/// A stream that applies the fault once, before its first item.
fn gated<T: Send + 'static>(
    switch: FaultSwitch,
    then: impl FnOnce() -> BoxStream<'static, Result<T>> + Send + 'static,
) -> BoxStream<'static, Result<T>> {
    futures::stream::once(async move {
        match switch.gate().await {
            Ok(()) => then(),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    })
    .flatten()
    .boxed()
}
