//! Live stdout/stderr: every `fd_write` of the guest becomes one message on
//! a bounded channel, and a forwarding thread hands it to the caller's
//! [`OutputSink`] while the guest keeps running.
//!
//! One channel carries both streams, so the sink sees them interleaved in
//! exactly the order the guest wrote them. The channel is bounded: a guest
//! that writes faster than the sink drains is slowed down, not buffered
//! without end in the seller's memory.

use bytes::Bytes;
use std::pin::Pin;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Which standard stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StdStream {
    /// File descriptor 1.
    Stdout,
    /// File descriptor 2.
    Stderr,
}

/// Receives a job's output as the guest writes it.
pub trait OutputSink: Sync {
    /// Called once per guest write, in order, from a helper thread.
    fn write(&self, stream: StdStream, data: &[u8]);
}

/// One guest write.
pub(crate) type Chunk = (StdStream, Bytes);

/// Chunks in flight between the guest and the sink before the guest waits.
pub(crate) const QUEUE_CHUNKS: usize = 64;

/// Largest single write accepted from the guest (WASI splits larger ones).
const MAX_CHUNK: usize = 64 * 1024;

/// Delivers every chunk from `chunks` to `sink` until all senders are gone.
pub(crate) fn forward(chunks: Receiver<Chunk>, sink: &dyn OutputSink) {
    super::thread_hook::on_helper_thread_start();
    for (stream, data) in chunks {
        sink.write(stream, &data);
    }
}

/// A guest stdout or stderr that feeds the forwarding channel.
#[derive(Clone)]
pub(crate) struct ChannelStream {
    stream: StdStream,
    tx: SyncSender<Chunk>,
}

impl ChannelStream {
    /// The guest's `stream`, sending into `tx`.
    pub(crate) fn new(stream: StdStream, tx: SyncSender<Chunk>) -> Self {
        ChannelStream { stream, tx }
    }

    fn send(&self, bytes: Bytes) -> Result<(), StreamError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.tx
            .send((self.stream, bytes))
            .map_err(|_| StreamError::Closed)
    }
}

impl IsTerminal for ChannelStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for ChannelStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for ChannelStream {
    async fn ready(&mut self) {}
}

impl OutputStream for ChannelStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.send(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        // Every write is already on its way to the sink.
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_CHUNK)
    }
}

impl tokio::io::AsyncWrite for ChannelStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = buf.len().min(MAX_CHUNK);
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        match self
            .tx
            .try_send((self.stream, Bytes::copy_from_slice(&buf[..n])))
        {
            Ok(()) => Poll::Ready(Ok(n)),
            // Only the WASIp3 path uses this; there is no waker tied to the
            // channel, so fall back to the blocking send rather than spin.
            Err(TrySendError::Full(chunk)) => match self.tx.send(chunk) {
                Ok(()) => Poll::Ready(Ok(n)),
                Err(_) => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
            },
            Err(TrySendError::Disconnected(_)) => {
                Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(StdStream, Vec<u8>)>>);

    impl OutputSink for Recorder {
        fn write(&self, stream: StdStream, data: &[u8]) {
            self.0.lock().unwrap().push((stream, data.to_vec()));
        }
    }

    #[test]
    fn writes_from_both_streams_arrive_in_order() {
        let (tx, rx) = sync_channel(QUEUE_CHUNKS);
        let mut out = ChannelStream::new(StdStream::Stdout, tx.clone());
        let mut err = ChannelStream::new(StdStream::Stderr, tx);
        out.write(Bytes::from_static(b"one")).unwrap();
        err.write(Bytes::from_static(b"two")).unwrap();
        out.write(Bytes::new()).unwrap();
        out.write(Bytes::from_static(b"three")).unwrap();
        drop((out, err));
        let sink = Recorder::default();
        forward(rx, &sink);
        let got = sink.0.into_inner().unwrap();
        assert_eq!(
            got,
            vec![
                (StdStream::Stdout, b"one".to_vec()),
                (StdStream::Stderr, b"two".to_vec()),
                (StdStream::Stdout, b"three".to_vec()),
            ]
        );
    }

    #[test]
    fn writing_after_the_sink_is_gone_reports_closed() {
        let (tx, rx) = sync_channel(1);
        drop(rx);
        let mut out = ChannelStream::new(StdStream::Stdout, tx);
        assert!(matches!(
            out.write(Bytes::from_static(b"x")),
            Err(StreamError::Closed)
        ));
    }
}
