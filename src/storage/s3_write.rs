//! New S3 objects from a stream of known length, without a part in memory.
//! OpenDAL's writer gathers each part in a buffer before sending it (S3 takes no
//! part under 5 MiB but the last), which cost 12 to 43 MiB per upload in flight;
//! here each request's body streams from the source as it is read, its length
//! known in advance and its payload unsigned (as AWS's SDKs stream). An object of
//! up to one part is a single PUT; a larger one a multipart upload of
//! `S3_PART_SIZE_BYTES` parts, aborted when anything fails. Both carry
//! `If-None-Match: *`, as OpenDAL's writes do.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::StreamWriteError;
use super::chunked::write_file;
use super::fs_write::io_error;
use super::s3_api::{Payload, Retry, S3Api, S3ApiError, Tries, encode};

/// A request with a body may take this long, plus a second per MiB it carries.
const BASE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a request carrying `length` bytes may take ([`BASE_TIMEOUT`]).
fn body_timeout(length: u64) -> Duration {
    BASE_TIMEOUT + Duration::from_secs(length / (1024 * 1024))
}

/// Pieces of a body in flight between the source and the HTTP client.
const PIECES_IN_FLIGHT: usize = 2;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InitiateMultipartUploadResult {
    upload_id: String,
}

/// The source, with what was read past the end of the last body.
struct Source<S> {
    stream: S,
    leftover: Option<Bytes>,
}

impl<S, E> Source<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    fn new(stream: S) -> Self {
        Self {
            stream,
            leftover: None,
        }
    }

    async fn next(&mut self) -> Option<Result<Bytes, StreamWriteError>> {
        if let Some(leftover) = self.leftover.take() {
            return Some(Ok(leftover));
        }
        let next = self.stream.next().await?;
        Some(next.map_err(|err| StreamWriteError::Body(err.to_string())))
    }

    /// After the last body: the source must have nothing more.
    async fn expect_end(&mut self) -> Result<(), StreamWriteError> {
        match self.next().await {
            None => Ok(()),
            Some(Err(err)) => Err(err),
            Some(Ok(_)) => Err(StreamWriteError::Body(
                "the stream is longer than its announced length".into(),
            )),
        }
    }

    /// Sends exactly `length` bytes of the source into `pieces`; a source that
    /// breaks or ends early breaks the body too, so the store never takes it.
    async fn feed(
        &mut self,
        length: u64,
        pieces: mpsc::Sender<std::io::Result<Bytes>>,
    ) -> Result<(), StreamWriteError> {
        let mut left = length;
        while left > 0 {
            let failure = match self.next().await {
                Some(Ok(mut piece)) => {
                    if piece.len() as u64 > left {
                        self.leftover = Some(piece.split_off(left as usize));
                    }
                    left -= piece.len() as u64;
                    // A closed channel: the request failed, and says why.
                    if pieces.send(Ok(piece)).await.is_err() {
                        return Ok(());
                    }
                    continue;
                }
                Some(Err(err)) => err,
                None => StreamWriteError::Body(format!(
                    "the stream ended {left} bytes before its announced length"
                )),
            };
            let _ = pieces
                .send(Err(std::io::Error::other(failure.to_string())))
                .await;
            return Err(failure);
        }
        Ok(())
    }
}

/// A request body fed through a channel, of a known length.
struct ChannelBody {
    pieces: mpsc::Receiver<std::io::Result<Bytes>>,
    length: u64,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.pieces
            .poll_recv(cx)
            .map(|piece| piece.map(|piece| piece.map(http_body::Frame::data)))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.length)
    }
}

/// A store's refusal as a write error; `412 Precondition Failed` is the object
/// that already exists.
fn store_error(operation: &'static str, err: S3ApiError) -> StreamWriteError {
    let kind = match &err {
        S3ApiError::Refused { status, .. }
            if *status == reqwest::StatusCode::PRECONDITION_FAILED =>
        {
            opendal::ErrorKind::ConditionNotMatch
        }
        _ => opendal::ErrorKind::Unexpected,
    };
    StreamWriteError::Storage(opendal::Error::new(kind, operation).set_source(err))
}

/// The headers of a request that makes a new object of `content_type`, or nothing
/// when one exists (`If-None-Match: *`): a single PUT, a multipart completion.
fn new_object(content_type: &str) -> Vec<(http::HeaderName, String)> {
    vec![
        (http::header::CONTENT_TYPE, content_type.to_owned()),
        (http::header::IF_NONE_MATCH, "*".to_owned()),
    ]
}

/// `range` of `file` as a stream, from a handle of its own (reads name their
/// offsets, so handles never disturb each other).
fn read_again(
    file: &std::fs::File,
    range: std::ops::Range<u64>,
) -> Result<impl Stream<Item = std::io::Result<Bytes>> + Unpin + use<>, StreamWriteError> {
    let file = file.try_clone().map_err(super::read_failed)?;
    Ok(super::file_read::read_range(file, range))
}

/// After a failed write: whether to try it again ([`Tries::again`]), when the
/// store's failure is one that `retry` allows; never when the source failed.
async fn again(tries: &mut Tries, err: &StreamWriteError, retry: Retry) -> bool {
    let StreamWriteError::Storage(err) = err else {
        return false;
    };
    let failure = std::error::Error::source(err).and_then(|source| source.downcast_ref());
    match failure {
        Some(failure) => tries.again(failure, retry).await,
        None => false,
    }
}

/// A multipart upload under way: where its parts go, and what its completion
/// lists.
struct Multipart {
    url: String,
    completion: String,
    parts: u64,
}

/// A part of a stream of unknown length, spooled to a temporary file (removed when
/// dropped) so that its length is known before its first byte goes up.
struct SpooledPart {
    path: tempfile::TempPath,
    length: u64,
    /// Whether the stream goes on after it.
    more: bool,
}

impl<S, E> Source<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    /// Spools the next `part_size` bytes at most into the new file `path`, refusing
    /// the stream once it has more than `allowed` bytes left.
    async fn spool_part(
        &mut self,
        path: std::path::PathBuf,
        part_size: u64,
        allowed: u64,
    ) -> Result<SpooledPart, StreamWriteError> {
        let part = futures::stream::unfold((&mut *self, part_size), |(source, left)| async move {
            if left == 0 {
                return None;
            }
            let mut piece = match source.next().await? {
                Ok(piece) => piece,
                Err(err) => return Some((Err(err), (source, 0))),
            };
            if piece.len() as u64 > left {
                source.leftover = Some(piece.split_off(left as usize));
            }
            let left = left - piece.len() as u64;
            Some((Ok(piece), (source, left)))
        });
        let (path, length) = write_file(path, Box::pin(part), allowed, false).await?;
        let path = tempfile::TempPath::try_from_path(path)
            .map_err(|err| StreamWriteError::Storage(io_error(err)))?;
        let more = length == part_size && self.has_more().await?;
        if more && length >= allowed {
            return Err(StreamWriteError::TooLarge);
        }
        Ok(SpooledPart { path, length, more })
    }

    /// Whether anything is left, keeping it for the next read.
    async fn has_more(&mut self) -> Result<bool, StreamWriteError> {
        loop {
            match self.next().await {
                None => return Ok(false),
                Some(Err(err)) => return Err(err),
                Some(Ok(piece)) if piece.is_empty() => continue,
                Some(Ok(piece)) => {
                    self.leftover = Some(piece);
                    return Ok(true);
                }
            }
        }
    }
}

impl S3Api {
    /// Writes the new object `key` (attache's key, without the prefix) from the
    /// `size` bytes of `body`, never holding more than a few of its pieces.
    pub async fn put_sized<S, E>(
        &self,
        key: &str,
        body: S,
        size: u64,
        part_size: u64,
        content_type: &str,
    ) -> Result<(), StreamWriteError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let url = self.object_url(&self.bucket_key(key));
        let mut source = Source::new(body);
        if size <= part_size {
            let headers = new_object(content_type);
            self.send_body(&url, headers, &mut source, size)
                .await
                .map_err(|err| err.unwrap_or_else(|err| store_error("write an object", err)))?;
            return source.expect_end().await;
        }
        self.multipart(key, &url, content_type, async |upload| {
            let mut offset = 0;
            while offset < size {
                let length = part_size.min(size - offset);
                self.send_part(upload, &mut source, length).await?;
                offset += length;
            }
            source.expect_end().await
        })
        .await
    }

    /// Writes the new object `key` from a stream of unknown length (at most `max`
    /// bytes): S3 needs each request's length before its body, so each part is
    /// spooled to a temporary file from `spool`, then sent from it while the next
    /// one arrives (two parts on disk at most, none in memory). Its length.
    pub async fn put_spooling<S, E>(
        &self,
        key: &str,
        body: S,
        max: u64,
        part_size: u64,
        content_type: &str,
        spool: impl Fn() -> std::path::PathBuf,
    ) -> Result<u64, StreamWriteError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut source = Source::new(body);
        let first = source.spool_part(spool(), part_size, max).await?;
        let url = self.object_url(&self.bucket_key(key));
        if !first.more {
            let file = std::fs::File::open(&first.path).map_err(super::read_failed)?;
            self.put_once_from(&url, &file, first.length, content_type)
                .await?;
            return Ok(first.length);
        }
        let mut written = 0;
        self.multipart(key, &url, content_type, async |upload| {
            let mut part = first;
            loop {
                let file = std::fs::File::open(&part.path).map_err(super::read_failed)?;
                let send = self.send_file_part(upload, &file, 0..part.length);
                if !part.more {
                    send.await?;
                    written += part.length;
                    return Ok(());
                }
                // The next part arrives while this one goes up; either failing
                // stops the other.
                let allowed = max - written - part.length;
                let next = source.spool_part(spool(), part_size, allowed);
                let ((), next) = tokio::try_join!(send, next)?;
                written += part.length;
                part = next;
            }
        })
        .await?;
        Ok(written)
    }

    /// A multipart upload of the object at `url`: begun, given its parts by
    /// `parts`, then completed; aborted when anything fails.
    async fn multipart(
        &self,
        key: &str,
        url: &str,
        content_type: &str,
        parts: impl AsyncFnOnce(&mut Multipart) -> Result<(), StreamWriteError>,
    ) -> Result<(), StreamWriteError> {
        let mut upload = self.begin(url, content_type).await?;
        let mut done = parts(&mut upload).await;
        if done.is_ok() {
            done = self.complete(&upload).await;
        }
        if done.is_err() {
            self.abort_failed(key, &upload).await;
        }
        done
    }

    /// Begins a multipart upload of the object at `url`.
    async fn begin(&self, url: &str, content_type: &str) -> Result<Multipart, StreamWriteError> {
        let headers = vec![(http::header::CONTENT_TYPE, content_type.to_owned())];
        let text = self
            .ask(
                &format!("{url}?uploads"),
                headers,
                Payload::Empty,
                // A first try that landed leaves an upload that `storage sweep` aborts.
                Retry::IfTransient,
                "begin a multipart upload",
            )
            .await?;
        let upload_id = quick_xml::de::from_str::<InitiateMultipartUploadResult>(&text)
            .map_err(|err| {
                let err = S3ApiError::Unreadable(err.to_string());
                store_error("begin a multipart upload", err)
            })?
            .upload_id;
        Ok(Multipart {
            url: format!("{url}?uploadId={}", encode(&upload_id)),
            completion: String::from("<CompleteMultipartUpload>"),
            parts: 0,
        })
    }

    /// Writes the new object `key` from the local file at `path` (opened now, so it
    /// outlives a removal of its name). A file can be read again: a request that
    /// fails passingly is sent again from it ([`Tries`]). Its length.
    pub async fn put_local(
        &self,
        key: &str,
        path: &std::path::Path,
        part_size: u64,
        content_type: &str,
    ) -> Result<u64, StreamWriteError> {
        let file = std::fs::File::open(path).map_err(super::read_failed)?;
        let size = file.metadata().map_err(super::read_failed)?.len();
        let url = self.object_url(&self.bucket_key(key));
        if size <= part_size {
            self.put_once_from(&url, &file, size, content_type).await?;
            return Ok(size);
        }
        self.multipart(key, &url, content_type, async |upload| {
            let mut offset = 0;
            while offset < size {
                let length = part_size.min(size - offset);
                self.send_file_part(upload, &file, offset..offset + length)
                    .await?;
                offset += length;
            }
            Ok(())
        })
        .await?;
        Ok(size)
    }

    /// Writes the new object `key` from `bytes` in one PUT, unless it exists; tried
    /// again only when the store surely did not act.
    pub async fn put_bytes(
        &self,
        key: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<(), StreamWriteError> {
        let url = self.object_url(&self.bucket_key(key));
        let headers = new_object(content_type);
        let timeout = body_timeout(bytes.len() as u64);
        let payload = Payload::Bytes(bytes);
        let answer = self
            .execute(
                http::Method::PUT,
                &url,
                headers,
                payload,
                timeout,
                Retry::IfNotApplied,
            )
            .await
            .map_err(|err| store_error("write an object", err))?;
        // Read to its end, the connection goes back to the pool.
        let _ = answer.bytes().await;
        Ok(())
    }

    /// One PUT of the object at `url` from the first `size` bytes of `file`, unless
    /// it exists; tried again only when the store surely did not act, as a second
    /// try after a first that landed would find the object.
    async fn put_once_from(
        &self,
        url: &str,
        file: &std::fs::File,
        size: u64,
        content_type: &str,
    ) -> Result<(), StreamWriteError> {
        let mut tries = Tries::default();
        loop {
            let headers = new_object(content_type);
            let mut source = Source::new(read_again(file, 0..size)?);
            let sent = self
                .send_body(url, headers, &mut source, size)
                .await
                .map_err(|err| err.unwrap_or_else(|err| store_error("write an object", err)));
            match sent {
                Err(err) if again(&mut tries, &err, Retry::IfNotApplied).await => continue,
                sent => return sent.map(drop),
            }
        }
    }

    /// Sends `range` of `file` as the upload's next part, read again for each try:
    /// a part sent twice under one number replaces the first.
    async fn send_file_part(
        &self,
        upload: &mut Multipart,
        file: &std::fs::File,
        range: std::ops::Range<u64>,
    ) -> Result<(), StreamWriteError> {
        let mut tries = Tries::default();
        loop {
            let length = range.end - range.start;
            let mut source = Source::new(read_again(file, range.clone())?);
            match self.send_part(upload, &mut source, length).await {
                Err(err) if again(&mut tries, &err, Retry::IfTransient).await => continue,
                sent => return sent,
            }
        }
    }

    /// Sends the next `length` bytes of `source` as the upload's next part.
    async fn send_part<S, E>(
        &self,
        upload: &mut Multipart,
        source: &mut Source<S>,
        length: u64,
    ) -> Result<(), StreamWriteError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let number = upload.parts + 1;
        let url = format!("{}&partNumber={number}", upload.url);
        let answer = self
            .send_body(&url, Vec::new(), source, length)
            .await
            .map_err(|err| err.unwrap_or_else(|err| store_error("write a part", err)))?;
        let etag = answer
            .headers()
            .get(http::header::ETAG)
            .and_then(|etag| etag.to_str().ok())
            .ok_or_else(|| {
                let err = S3ApiError::Unreadable("a part came back without an ETag".into());
                store_error("write a part", err)
            })?;
        upload.completion.push_str(&format!(
            "<Part><PartNumber>{number}</PartNumber><ETag>{}</ETag></Part>",
            quick_xml::escape::escape(etag)
        ));
        upload.parts = number;
        // Read to its end, the connection goes back to the pool for the next part.
        let _ = answer.bytes().await;
        Ok(())
    }

    /// Completes the upload: its parts become the object, unless it exists.
    async fn complete(&self, upload: &Multipart) -> Result<(), StreamWriteError> {
        let headers = new_object("application/xml");
        let completion = format!("{}</CompleteMultipartUpload>", upload.completion);
        let payload = Payload::Bytes(completion.into());
        // Conditional: a second try after a first that landed would find the object.
        let answer = self
            .ask(
                &upload.url,
                headers,
                payload,
                Retry::IfNotApplied,
                "complete a multipart upload",
            )
            .await?;
        // S3 may answer 200 and still fail, with an error in the body.
        if answer.contains("<Error>") {
            let err = S3ApiError::Unreadable(answer);
            return Err(store_error("complete a multipart upload", err));
        }
        Ok(())
    }

    /// Aborts a failed upload, so that its parts do not linger; if the store does
    /// not answer, `storage sweep` aborts it later.
    async fn abort_failed(&self, key: &str, upload: &Multipart) {
        let aborted = self
            .execute(
                http::Method::DELETE,
                &upload.url,
                Vec::new(),
                Payload::Empty,
                BASE_TIMEOUT,
                Retry::IfTransient,
            )
            .await;
        if let Err(err) = aborted {
            tracing::warn!(key, error = %err, "cannot abort a failed multipart upload; `storage sweep` will");
        }
    }

    /// A POST of `payload` to `url`, tried again as `retry` allows; the answer's
    /// text. `operation` names it in errors.
    async fn ask(
        &self,
        url: &str,
        headers: Vec<(http::HeaderName, String)>,
        payload: Payload,
        retry: Retry,
        operation: &'static str,
    ) -> Result<String, StreamWriteError> {
        let answer = self
            .execute(
                http::Method::POST,
                url,
                headers,
                payload,
                BASE_TIMEOUT,
                retry,
            )
            .await
            .map_err(|err| store_error(operation, err))?;
        answer
            .text()
            .await
            .map_err(|err| store_error(operation, err.into()))
    }

    /// A PUT to `url` whose body is the next `length` bytes of `source`; the
    /// source's failure (`Err(Err)`) or the store's (`Err(Ok)`).
    async fn send_body<S, E>(
        &self,
        url: &str,
        mut headers: Vec<(http::HeaderName, String)>,
        source: &mut Source<S>,
        length: u64,
    ) -> Result<reqwest::Response, Result<StreamWriteError, S3ApiError>>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (pieces, receiver) = mpsc::channel(PIECES_IN_FLIGHT);
        let body = reqwest::Body::wrap(ChannelBody {
            pieces: receiver,
            length,
        });
        headers.push((http::header::CONTENT_LENGTH, length.to_string()));
        let timeout = body_timeout(length);
        // A stream is sent once: a caller that can read it again tries again.
        let request = self.attempt(
            http::Method::PUT,
            url,
            &headers,
            Payload::Streamed(body),
            timeout,
        );
        // The request ends the feed: a store that answered early (503) and then
        // stalled without reading holds the body, and a feed that waited for it
        // would wait for ever, past the request's own timeout.
        let feed = source.feed(length, pieces);
        tokio::pin!(request, feed);
        let mut fed = None;
        let answer = loop {
            tokio::select! {
                answer = &mut request => break answer,
                done = &mut feed, if fed.is_none() => fed = Some(done),
            }
        };
        match (fed, answer) {
            (Some(Err(err)), _) => Err(Ok(err)),
            (_, Err(err)) => Err(Err(err)),
            (Some(Ok(())), Ok(answer)) => Ok(answer),
            // An answer before the whole body: the source is not where the next
            // body begins, so nothing more may be sent from it.
            (None, Ok(_)) => Err(Ok(StreamWriteError::Body(
                "the store answered before the body was sent".into(),
            ))),
        }
    }
}
