//! `DefaultAttributes`: adds configured object attributes (the storage class) to every put and
//! multipart upload that does not set them itself. Everything else passes straight through.
//!
//! Must never: change payloads, modes or keys. Never stacked over a backend that rejects
//! attributes (object_store's local file system does), which is why [`super::config`] only uses
//! it for S3, GCS and Azure.

use std::fmt;

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    Attributes, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

use super::DynStore;

/// Adds default attributes to writes.
#[derive(Debug)]
pub(crate) struct DefaultAttributes {
    inner: DynStore,
    defaults: Attributes,
}

impl DefaultAttributes {
    /// Wraps `inner`; `defaults` are added to writes that do not set the same attribute.
    pub(crate) fn new(inner: DynStore, defaults: Attributes) -> Self {
        DefaultAttributes { inner, defaults }
    }

    /// Attributes setting only the storage class.
    #[cfg(test)]
    pub(crate) fn storage_class(class: &str) -> Attributes {
        use object_store::{Attribute, AttributeValue};
        let mut a = Attributes::new();
        a.insert(
            Attribute::StorageClass,
            AttributeValue::from(class.to_string()),
        );
        a
    }

    fn merge(&self, attrs: &mut Attributes) {
        for (k, v) in self.defaults.iter() {
            if attrs.get(k).is_none() {
                attrs.insert(k.clone(), v.clone());
            }
        }
    }
}

impl fmt::Display for DefaultAttributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DefaultAttributes({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for DefaultAttributes {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> Result<PutResult> {
        self.merge(&mut opts.attributes);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        mut opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.merge(&mut opts.attributes);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::{Attribute, ObjectStoreExt};
    use std::sync::{Arc, Mutex};

    /// Records the attributes of each put.
    #[derive(Debug, Default)]
    struct Spy {
        inner: InMemory,
        seen: Mutex<Vec<Attributes>>,
    }
    impl fmt::Display for Spy {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Spy")
        }
    }
    #[async_trait]
    impl ObjectStore for Spy {
        async fn put_opts(&self, l: &Path, p: PutPayload, o: PutOptions) -> Result<PutResult> {
            self.seen.lock().unwrap().push(o.attributes.clone());
            self.inner
                .put_opts(
                    l,
                    p,
                    PutOptions {
                        attributes: Attributes::new(),
                        ..o
                    },
                )
                .await
        }
        async fn put_multipart_opts(
            &self,
            l: &Path,
            o: PutMultipartOptions,
        ) -> Result<Box<dyn MultipartUpload>> {
            self.seen.lock().unwrap().push(o.attributes.clone());
            self.inner.put_multipart_opts(l, o).await
        }
        async fn get_opts(&self, l: &Path, o: GetOptions) -> Result<GetResult> {
            self.inner.get_opts(l, o).await
        }
        fn delete_stream(
            &self,
            l: BoxStream<'static, Result<Path>>,
        ) -> BoxStream<'static, Result<Path>> {
            self.inner.delete_stream(l)
        }
        fn list(&self, p: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
            self.inner.list(p)
        }
        async fn list_with_delimiter(&self, p: Option<&Path>) -> Result<ListResult> {
            self.inner.list_with_delimiter(p).await
        }
        async fn copy_opts(&self, f: &Path, t: &Path, o: CopyOptions) -> Result<()> {
            self.inner.copy_opts(f, t, o).await
        }
    }

    #[tokio::test]
    async fn storage_class_added_unless_set() {
        let spy = Arc::new(Spy::default());
        let store =
            DefaultAttributes::new(spy.clone(), DefaultAttributes::storage_class("STANDARD_IA"));
        store.put(&Path::from("a"), "x".into()).await.unwrap();
        let mut own = Attributes::new();
        own.insert(Attribute::StorageClass, "GLACIER".into());
        store
            .put_opts(
                &Path::from("b"),
                "x".into(),
                PutOptions {
                    attributes: own,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let seen = spy.seen.lock().unwrap();
        assert_eq!(
            seen[0].get(&Attribute::StorageClass).map(|v| v.as_ref()),
            Some("STANDARD_IA")
        );
        assert_eq!(
            seen[1].get(&Attribute::StorageClass).map(|v| v.as_ref()),
            Some("GLACIER")
        );
    }
}
