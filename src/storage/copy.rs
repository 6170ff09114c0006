//! Digests and copies between stores, read as streams: the size and sha256 of an
//! object, and `storage migrate`'s copy of one into another store.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::{COPY_CHUNK, Storage, StorageKey, StreamWriteError};

/// Why an object was not copied from one store to another, and which side failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("reading the source failed: {0}")]
    Source(#[source] opendal::Error),
    #[error("writing the destination failed: {0}")]
    Destination(#[source] opendal::Error),
}

/// The size and sha256 of an object's bytes, as read back from a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    pub size: u64,
    pub sha256: String,
}

/// The size and sha256 of bytes read chunk by chunk.
#[derive(Default)]
struct Digesting {
    hasher: sha2::Sha256,
    size: u64,
}

impl Digesting {
    fn update(&mut self, chunk: &[u8]) {
        use sha2::Digest as _;
        self.size += chunk.len() as u64;
        self.hasher.update(chunk);
    }

    fn finish(self) -> Digest {
        use sha2::Digest as _;
        Digest {
            size: self.size,
            sha256: hex::encode(self.hasher.finalize()),
        }
    }
}

/// A broken read stream as an OpenDAL error.
fn read_failed(err: std::io::Error) -> opendal::Error {
    opendal::Error::new(opendal::ErrorKind::Unexpected, "reading an object failed").set_source(err)
}

impl Storage {
    /// The size and sha256 of a stored object, read as a stream; `None` when there is
    /// no such object.
    pub async fn digest(&self, key: &StorageKey) -> opendal::Result<Option<Digest>> {
        let mut stream = match self.stream(key, opendal::BytesRange::from(..)).await {
            Ok(stream) => stream,
            Err(err) if err.kind() == opendal::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let mut digest = Digesting::default();
        while let Some(chunk) = stream.next().await {
            digest.update(&chunk.map_err(read_failed)?);
        }
        Ok(Some(digest.finish()))
    }

    /// The first `len` bytes of an object, which must have as many.
    pub async fn read_head(&self, key: &StorageKey, len: u64) -> opendal::Result<Bytes> {
        let mut stream = self
            .stream(key, opendal::BytesRange::new(0, Some(len)))
            .await?;
        let mut head = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            head.extend_from_slice(&chunk.map_err(read_failed)?);
        }
        Ok(head.freeze())
    }

    /// Shows every chunk of an object, in order, to `inspect`, holding one at a time.
    pub async fn inspect(
        &self,
        key: &StorageKey,
        mut inspect: impl FnMut(&[u8]),
    ) -> opendal::Result<()> {
        let mut stream = self.stream(key, opendal::BytesRange::from(..)).await?;
        while let Some(chunk) = stream.next().await {
            inspect(&chunk.map_err(read_failed)?);
        }
        Ok(())
    }

    /// Copies `from`, of `size` bytes, into the new object `to` of this store as a
    /// stream ([`Storage::put_exact`]: a multipart upload on S3 when larger than a
    /// part), showing every chunk to `inspect` on the way: memory stays flat
    /// whatever the size. A broken read, or one of another length, leaves nothing
    /// at `to`.
    pub async fn copy_new(
        &self,
        from: &StorageKey,
        to: &StorageKey,
        size: u64,
        content_type: &str,
        mut inspect: impl FnMut(&[u8]),
    ) -> Result<u64, StreamWriteError> {
        let stream = self
            .stream(from, opendal::BytesRange::from(..))
            .await
            .map_err(StreamWriteError::Storage)?;
        let stream = std::pin::pin!(stream.inspect(|chunk| {
            if let Ok(chunk) = chunk {
                inspect(chunk);
            }
        }));
        self.put_exact(to, stream, size, content_type).await
    }

    /// Copies `key` from `source` into this store as a stream, replacing what is
    /// there, and returns the digest of the bytes read from the source.
    pub async fn copy_from(
        &self,
        source: &Storage,
        key: &StorageKey,
        content_type: &str,
    ) -> Result<Digest, CopyError> {
        let mut stream = source
            .stream(key, opendal::BytesRange::from(..))
            .await
            .map_err(CopyError::Source)?;
        let mut writer = self
            .operator
            .writer_with(key.as_str())
            .content_type(content_type)
            .chunk(self.part_size.unwrap_or(COPY_CHUNK))
            .await
            .map_err(CopyError::Destination)?;
        let mut digest = Digesting::default();
        while let Some(chunk) = stream.next().await {
            let written = match chunk {
                Ok(chunk) => {
                    digest.update(&chunk);
                    writer.write(chunk).await.map_err(CopyError::Destination)
                }
                Err(err) => Err(CopyError::Source(read_failed(err))),
            };
            if let Err(err) = written {
                // The bucket keeps what was there before an aborted multipart upload.
                let _ = writer.abort().await;
                return Err(err);
            }
        }
        writer.close().await.map_err(CopyError::Destination)?;
        Ok(digest.finish())
    }
}
