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
use super::s3_api::{Payload, S3Api, S3ApiError, encode};

/// A request with a body may take this long, plus a second per MiB it carries.
const BASE_TIMEOUT: Duration = Duration::from_secs(30);

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
        let mut source = Source {
            stream: body,
            leftover: None,
        };
        if size <= part_size {
            let headers = vec![
                (http::header::CONTENT_TYPE, content_type.to_owned()),
                (http::header::IF_NONE_MATCH, "*".to_owned()),
            ];
            self.send_body(&url, headers, &mut source, size)
                .await
                .map_err(|err| err.unwrap_or_else(|err| store_error("write an object", err)))?;
            return source.expect_end().await;
        }
        let headers = vec![(http::header::CONTENT_TYPE, content_type.to_owned())];
        let text = self
            .ask(
                &format!("{url}?uploads"),
                headers,
                Payload::Empty,
                "begin a multipart upload",
            )
            .await?;
        let upload_id = quick_xml::de::from_str::<InitiateMultipartUploadResult>(&text)
            .map_err(|err| {
                let err = S3ApiError::Unreadable(err.to_string());
                store_error("begin a multipart upload", err)
            })?
            .upload_id;
        let upload_url = format!("{url}?uploadId={}", encode(&upload_id));
        let written = self
            .write_parts(&upload_url, &mut source, size, part_size)
            .await;
        if written.is_err()
            && let Err(err) = self
                .execute(
                    http::Method::DELETE,
                    &upload_url,
                    Vec::new(),
                    Payload::Empty,
                    BASE_TIMEOUT,
                )
                .await
        {
            tracing::warn!(key, error = %err, "cannot abort a failed multipart upload; `storage sweep` will");
        }
        written
    }

    /// The parts of the multipart upload at `upload_url`, then its completion.
    async fn write_parts<S, E>(
        &self,
        upload_url: &str,
        source: &mut Source<S>,
        size: u64,
        part_size: u64,
    ) -> Result<(), StreamWriteError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut completion = String::from("<CompleteMultipartUpload>");
        let mut offset = 0;
        for number in 1u64.. {
            if offset >= size {
                break;
            }
            let length = part_size.min(size - offset);
            let url = format!("{upload_url}&partNumber={number}");
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
            completion.push_str(&format!(
                "<Part><PartNumber>{number}</PartNumber><ETag>{}</ETag></Part>",
                quick_xml::escape::escape(etag)
            ));
            // Read to its end, the connection goes back to the pool for the next part.
            let _ = answer.bytes().await;
            offset += length;
        }
        completion.push_str("</CompleteMultipartUpload>");
        source.expect_end().await?;
        let headers = vec![
            (http::header::CONTENT_TYPE, "application/xml".to_owned()),
            (http::header::IF_NONE_MATCH, "*".to_owned()),
        ];
        let payload = Payload::Bytes(completion.into_bytes());
        let answer = self
            .ask(upload_url, headers, payload, "complete a multipart upload")
            .await?;
        // S3 may answer 200 and still fail, with an error in the body.
        if answer.contains("<Error>") {
            let err = S3ApiError::Unreadable(answer);
            return Err(store_error("complete a multipart upload", err));
        }
        Ok(())
    }

    /// A POST of `payload` to `url`; the answer's text. `operation` names it in
    /// errors.
    async fn ask(
        &self,
        url: &str,
        headers: Vec<(http::HeaderName, String)>,
        payload: Payload,
        operation: &'static str,
    ) -> Result<String, StreamWriteError> {
        let answer = self
            .execute(http::Method::POST, url, headers, payload, BASE_TIMEOUT)
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
        let timeout = BASE_TIMEOUT + Duration::from_secs(length / (1024 * 1024));
        let request = self.execute(
            http::Method::PUT,
            url,
            headers,
            Payload::Streamed(body),
            timeout,
        );
        let (answer, fed) = tokio::join!(request, source.feed(length, pieces));
        fed.map_err(Ok)?;
        answer.map_err(Err)
    }
}
