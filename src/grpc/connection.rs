//! The TCP connection Check is served over.
//!
//! It tells HTTP/2 that it has no vectored writes. h2 then copies a DATA payload under 1 KiB into
//! its write buffer, where with vectored writes it chains any payload of 256 bytes or more and
//! must flush before it can buffer another frame. A CheckResponse is usually just over 256 bytes,
//! so each answer went out in two `writev` calls: HEADERS and DATA, then the 10-byte trailers
//! frame (`grpc-status`). Now it is one write; copying a few hundred bytes costs less than a
//! system call.
//!
//! It also tells the [`AnswerGate`] when bytes go out.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::answer_gate::AnswerGate;

/// A [`TcpStream`] without vectored writes, that opens the answer gate (if any) when it writes.
pub struct CheckConnection {
    stream: TcpStream,
    gate: Option<Arc<AnswerGate>>,
}

impl CheckConnection {
    pub fn new(stream: TcpStream, gate: Option<Arc<AnswerGate>>) -> Self {
        Self { stream, gate }
    }
}

impl AsyncRead for CheckConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CheckConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let (Poll::Ready(Ok(1..)), Some(gate)) = (&written, &self.gate) {
            gate.written();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl Connected for CheckConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn relays_both_ways_and_reports_no_vectored_writes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream.write_all(b"request").await.unwrap();
            let mut answer = vec![0; 6];
            stream.read_exact(&mut answer).await.unwrap();
            answer
        });
        let gate = Arc::new(AnswerGate::new());
        gate.leave(true);
        let mut connection =
            CheckConnection::new(listener.accept().await.unwrap().0, Some(Arc::clone(&gate)));
        assert!(!connection.is_write_vectored());
        assert_eq!(
            connection.connect_info().remote_addr().map(|a| a.ip()),
            Some(address.ip())
        );
        let mut request = vec![0; 7];
        connection.read_exact(&mut request).await.unwrap();
        assert_eq!(request, b"request");
        connection.write_all(b"answer").await.unwrap();
        connection.flush().await.unwrap();
        assert_eq!(client.await.unwrap(), b"answer");
        assert!(!gate.is_closed(), "a write opens the gate");
    }
}
