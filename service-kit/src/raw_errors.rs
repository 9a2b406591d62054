//! JSON bodies for the answers hyper writes by itself.
//!
//! When hyper cannot parse a request (a malformed line or header, a URI or
//! a head over [`MAX_HEAD_BYTES`](crate::server::MAX_HEAD_BYTES)) it
//! answers 400, 414 or 431 with an empty body before any of our code sees
//! the request, and closes the connection; it has no hook for that answer.
//! [`JsonRawErrors`] sits between hyper and the socket and, when hyper
//! writes such a head, writes the same status with the JSON error body every
//! other answer has. Nothing else is touched: every response our routes and
//! layers produce has a body, so an empty-bodied 400/414/431 can only be
//! hyper's own.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An IO stream whose writes of hyper's own parse-error answers are
/// replaced by the same answer with a JSON body.
pub struct JsonRawErrors<IO> {
    inner: IO,
    /// The replacement being written, how much of it is written, and how
    /// many bytes of hyper's answer it stands for.
    replacing: Option<(Vec<u8>, usize, usize)>,
}

impl<IO> JsonRawErrors<IO> {
    pub fn new(inner: IO) -> Self {
        Self {
            inner,
            replacing: None,
        }
    }
}

/// The JSON answer standing for `head` when it is one of hyper's own.
fn replacement(head: &[u8]) -> Option<Vec<u8>> {
    let (code, message) = match head.get(..13)? {
        b"HTTP/1.1 400 " => ("bad_request", "the request could not be parsed"),
        b"HTTP/1.1 414 " => ("uri_too_long", "the request URI is too long"),
        b"HTTP/1.1 431 " => (
            "headers_too_large",
            "the request line and headers are over 32 KiB",
        ),
        _ => return None,
    };
    let head = std::str::from_utf8(head).ok()?;
    let (status, headers) = head.strip_suffix("\r\n\r\n")?.split_once("\r\n")?;
    let mut empty = false;
    let mut kept = String::new();
    for line in headers.split("\r\n") {
        let name = line.split(':').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("content-length") {
            empty = line.split(':').nth(1).map(str::trim) == Some("0");
        } else if !name.eq_ignore_ascii_case("connection") {
            kept.push_str(line);
            kept.push_str("\r\n");
        }
    }
    if !empty {
        return None;
    }
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    Some(
        format!(
            "{status}\r\n{kept}content-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<IO: AsyncRead + Unpin> AsyncRead for JsonRawErrors<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for JsonRawErrors<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_none() {
            match replacement(buf) {
                Some(answer) => this.replacing = Some((answer, 0, buf.len())),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        // Hyper calls again with the same bytes until told they are
        // written: the replacement is written in their place first.
        while let Some((answer, written, stands_for)) = &mut this.replacing {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &answer[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
            if *written == answer.len() {
                let done = *stands_for;
                this.replacing = None;
                return Poll::Ready(Ok(done));
            }
        }
        unreachable!("the loop returns once the replacement is written")
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // Not vectored: hyper then writes each head in one buffer, which is
    // what is recognised above.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::replacement;

    #[test]
    fn only_an_empty_bodied_400_414_or_431_is_replaced() {
        let hypers = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\
                       date: Tue, 24 Nov 2026 15:00:00 GMT\r\n\r\n";
        let answer = String::from_utf8(replacement(hypers).expect("replaced")).expect("utf-8");
        let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("\r\ndate: Tue, 24 Nov 2026 15:00:00 GMT\r\n"));
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())));
        assert!(head.contains("\r\ncontent-type: application/json\r\n"));
        let body: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(body["error"]["code"], "headers_too_large");
        // Answers of ours have bodies; other statuses are never touched.
        for other in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 57\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}",
        ] {
            assert_eq!(
                replacement(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }
}
