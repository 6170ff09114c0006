//! Real filesystem paths for tools that need one (scanners, converters): the file
//! itself on fs, a temporary copy on S3.

use super::{Storage, StorageKey};

/// A path on the local filesystem holding an object's bytes; a temporary copy is
/// removed when this is dropped.
pub struct LocalFile {
    path: std::path::PathBuf,
    _copy: Option<tempfile::TempPath>,
}

impl LocalFile {
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Storage {
    /// Streams a whole object into `file` without holding it in memory.
    pub async fn download_to(
        &self,
        key: &StorageKey,
        file: &mut tokio::fs::File,
    ) -> std::io::Result<()> {
        let stream = self
            .stream(key, opendal::BytesRange::from(..))
            .await
            .map_err(std::io::Error::other)?;
        let mut reader = tokio_util::io::StreamReader::new(stream);
        tokio::io::copy(&mut reader, file).await?;
        tokio::io::AsyncWriteExt::flush(file).await
    }

    /// A real filesystem path to an object, for tools that need one (scanners,
    /// converters): the file itself on fs, a temporary copy removed on drop on s3.
    pub async fn local_path(&self, key: &StorageKey) -> std::io::Result<LocalFile> {
        if let Some(root) = &self.fs_root {
            let path = root.join(key.as_str());
            tokio::fs::metadata(&path).await?;
            return Ok(LocalFile { path, _copy: None });
        }
        let copy = tempfile::NamedTempFile::new_in(super::temp::folder()?)?.into_temp_path();
        let mut file = tokio::fs::File::create(&copy).await?;
        self.download_to(key, &mut file).await?;
        Ok(LocalFile {
            path: copy.to_path_buf(),
            _copy: Some(copy),
        })
    }
}
