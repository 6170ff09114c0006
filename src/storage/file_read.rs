//! Reading local files in pieces: a download on fs, a spooled part on its way to
//! S3. What the kernel's caches hold is read on the caller's task (`openat2` with
//! `RESOLVE_CACHED`, `preadv2` with `RWF_NOWAIT`: each answers at once or refuses);
//! only what waits for the disk goes to the blocking pool. Every trip there wakes
//! two threads, and a 1 MiB download took seventeen (the open and sixteen reads):
//! wake-ups across cores, dearer with each core the server is given (issue 26).

use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;

/// The most bytes one read holds, so a download its client stopped reading holds no
/// more. Within the allocator's medium sizes, which it reuses at once; 128 KiB
/// reads, each freed on another thread than the one that made it, left 2 to 3 MiB
/// per large upload.
pub(super) const READ_CHUNK: usize = 64 * 1024;

/// Opens `path` to read it, with its length: on the caller's task when the path
/// resolves from the kernel's caches, else on the blocking pool (which also gives
/// any error). The length is the open file's own (`fstat`), never waiting for the disk.
pub(super) async fn open(path: &Path) -> io::Result<(std::fs::File, u64)> {
    let file = match open_cached(path) {
        Some(file) => file,
        None => {
            let path = path.to_owned();
            tokio::task::spawn_blocking(move || std::fs::File::open(path))
                .await
                .map_err(io::Error::other)??
        }
    };
    let length = file.metadata()?.len();
    Ok((file, length))
}

/// The file at `path` (opened now, so it outlives a removal of its name) and its
/// length, streamed from start to end as [`read_range`] streams it.
pub fn read_file(
    path: &Path,
) -> io::Result<(
    u64,
    impl Stream<Item = io::Result<Bytes>> + Send + Unpin + use<>,
)> {
    let file = std::fs::File::open(path)?;
    let length = file.metadata()?.len();
    Ok((length, read_range(file, 0..length)))
}

/// `range` of `file` in pieces of at most [`READ_CHUNK`], each read into a buffer
/// made on the caller's side: tokio's file makes its buffer on the pool's thread,
/// whose allocator then keeps a page for it (a file per S3 part left such a page on
/// each of dozens of threads, 1 MiB more per upload in flight). A file shorter than
/// `range` ends the stream with `UnexpectedEof`, never with fewer bytes.
pub(super) fn read_range(
    file: std::fs::File,
    range: Range<u64>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + Unpin + use<> {
    let reads = futures::stream::try_unfold((Arc::new(file), range), |(file, range)| async move {
        let left = range.end.saturating_sub(range.start);
        let length = usize::try_from(left).map_or(READ_CHUNK, |left| left.min(READ_CHUNK));
        if length == 0 {
            return Ok(None);
        }
        let mut buffer = vec![0u8; length];
        let read = match read_cached(&file, &mut buffer, range.start) {
            Some(read) => read,
            None => {
                let reader = Arc::clone(&file);
                let offset = range.start;
                let read;
                (buffer, read) = tokio::task::spawn_blocking(move || {
                    let read = reader.read_at(&mut buffer, offset);
                    (buffer, read)
                })
                .await
                .map_err(io::Error::other)?;
                read?
            }
        };
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file ended before the bytes it was to hold",
            ));
        }
        buffer.truncate(read);
        let rest = range.start + read as u64..range.end;
        Ok(Some((Bytes::from(buffer), (file, rest))))
    });
    Box::pin(reads)
}

/// Opens `path` if the kernel resolves it without waiting for the disk; `None`
/// for anything else (not cached, a kernel before 5.12, an error to report).
#[cfg(target_os = "linux")]
fn open_cached(path: &Path) -> Option<std::fs::File> {
    use rustix::fs::{CWD, Mode, OFlags, ResolveFlags, openat2};
    let flags = OFlags::RDONLY | OFlags::CLOEXEC;
    openat2(CWD, path, flags, Mode::empty(), ResolveFlags::CACHED)
        .ok()
        .map(std::fs::File::from)
}

#[cfg(not(target_os = "linux"))]
fn open_cached(_path: &Path) -> Option<std::fs::File> {
    None
}

/// Reads at `offset` what the page cache holds there, without waiting; `None`
/// when nothing is (or the filesystem cannot say), so the read waits elsewhere.
/// Zero bytes means the end of the file.
#[cfg(target_os = "linux")]
fn read_cached(file: &std::fs::File, buffer: &mut [u8], offset: u64) -> Option<usize> {
    use rustix::io::{IoSliceMut, ReadWriteFlags, preadv2};
    preadv2(
        file,
        &mut [IoSliceMut::new(buffer)],
        offset,
        ReadWriteFlags::NOWAIT,
    )
    .ok()
}

#[cfg(not(target_os = "linux"))]
fn read_cached(_file: &std::fs::File, _buffer: &mut [u8], _offset: u64) -> Option<usize> {
    None
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;

    fn sample(length: usize) -> Vec<u8> {
        (0..length).map(|at| (at % 251) as u8).collect()
    }

    async fn read(file: std::fs::File, range: Range<u64>) -> io::Result<Vec<u8>> {
        let pieces: Vec<Bytes> = read_range(file, range).try_collect().await?;
        assert!(pieces.iter().all(|piece| piece.len() <= READ_CHUNK));
        Ok(pieces.concat())
    }

    /// The file's pages dropped from the page cache, so each read waits for the
    /// disk and goes to the blocking pool.
    fn uncached(path: &Path) -> std::fs::File {
        let file = std::fs::File::open(path).expect("open");
        file.sync_all().expect("sync");
        #[cfg(target_os = "linux")]
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).expect("fadvise");
        file
    }

    #[tokio::test]
    async fn every_range_reads_the_same_cached_or_from_the_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("file");
        let bytes = sample(3 * READ_CHUNK + 1_234);
        std::fs::write(&path, &bytes).expect("write");
        let length = bytes.len() as u64;
        for range in [
            0..length,
            0..1,
            5..READ_CHUNK as u64 + 7,
            length - 10..length,
            length..length,
        ] {
            let expected = &bytes[range.start as usize..range.end as usize];
            let (cached, _) = open(&path).await.expect("open");
            assert_eq!(read(cached, range.clone()).await.expect("read"), expected);
            let from_disk = uncached(&path);
            assert_eq!(
                read(from_disk, range.clone()).await.expect("read"),
                expected
            );
        }
        let (length, whole) = read_file(&path).expect("open");
        assert_eq!(length, bytes.len() as u64);
        let whole: Vec<Bytes> = whole.try_collect().await.expect("read");
        assert_eq!(whole.concat(), bytes);
    }

    #[tokio::test]
    async fn a_file_shorter_than_its_range_is_an_error_not_fewer_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("file");
        std::fs::write(&path, sample(READ_CHUNK + 10)).expect("write");
        for file in [open(&path).await.expect("open").0, uncached(&path)] {
            let err = read(file, 0..2 * READ_CHUNK as u64)
                .await
                .expect_err("cut short");
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        }
        let missing = open(&dir.path().join("missing"))
            .await
            .expect_err("missing");
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }
}
