//! The client's HTTP/2 connection preface and first SETTINGS frame, read by
//! the listener itself.
//!
//! hyper's HTTP/2 handshake has no deadline, and its keepalive PINGs start
//! only after it: a socket that sends one byte would hold its connection
//! forever. So the listener reads the preface under its own deadline and
//! hands hyper a [`Rewind`] reader that replays those bytes first.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// RFC 9113 §3.4: what every HTTP/2 client sends first.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const FRAME_SETTINGS: u8 = 0x4;
const FLAG_ACK: u8 = 0x1;
/// Each setting is a 16-bit identifier and a 32-bit value.
const SETTING_LEN: usize = 6;
/// The largest frame a client may send before it has seen our SETTINGS
/// (the initial SETTINGS_MAX_FRAME_SIZE, RFC 9113 §6.5.2): h2 accepts no
/// more, and it bounds what one pending connection can make us buffer.
const MAX_SETTINGS_PAYLOAD: usize = 16_384;

/// Why a connection's first bytes are not an HTTP/2 client's.
#[derive(Debug, thiserror::Error)]
pub enum PrefaceError {
    #[error("not an HTTP/2 connection preface")]
    NotHttp2,
    #[error("the first HTTP/2 frame is not SETTINGS")]
    NotSettings,
    #[error("a SETTINGS payload of {0} bytes")]
    BadSettingsLength(usize),
    #[error("closed before the end of the HTTP/2 preface")]
    Closed,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads the client preface and its first SETTINGS frame, and returns every
/// byte read: exactly those two, nothing past them (reads ask for no more).
/// Refuses a wrong first byte at once rather than waiting for the deadline.
pub async fn read_preface<S: AsyncRead + Unpin>(io: &mut S) -> Result<Vec<u8>, PrefaceError> {
    let mut buf = Vec::with_capacity(PREFACE.len() + FRAME_HEADER_LEN);
    while buf.len() < PREFACE.len() {
        fill(io, &mut buf, PREFACE.len()).await?;
        if !PREFACE.starts_with(&buf) {
            return Err(PrefaceError::NotHttp2);
        }
    }
    fill(io, &mut buf, PREFACE.len() + FRAME_HEADER_LEN).await?;
    let payload_len = settings_payload_len(&buf[PREFACE.len()..])?;
    let total = PREFACE.len() + FRAME_HEADER_LEN + payload_len;
    buf.reserve_exact(payload_len);
    fill(io, &mut buf, total).await?;
    Ok(buf)
}

/// Checks a frame header is an initial SETTINGS frame; its payload length.
fn settings_payload_len(header: &[u8]) -> Result<usize, PrefaceError> {
    let &[l0, l1, l2, kind, flags, s0, s1, s2, s3] = header else {
        return Err(PrefaceError::NotSettings);
    };
    let len = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
    // The stream identifier, without its reserved high bit.
    let stream = u32::from_be_bytes([s0 & 0x7f, s1, s2, s3]);
    if kind != FRAME_SETTINGS || flags & FLAG_ACK != 0 || stream != 0 {
        return Err(PrefaceError::NotSettings);
    }
    if len % SETTING_LEN != 0 || len > MAX_SETTINGS_PAYLOAD {
        return Err(PrefaceError::BadSettingsLength(len));
    }
    Ok(len)
}

/// Reads until `buf` holds `want` bytes, never past it. While the preface
/// is incomplete it returns after each read, for the caller to check it.
async fn fill<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    want: usize,
) -> Result<(), PrefaceError> {
    const CHUNK: usize = 512;
    let mut chunk = [0u8; CHUNK];
    loop {
        let missing = want.saturating_sub(buf.len());
        if missing == 0 {
            return Ok(());
        }
        let n = io.read(&mut chunk[..missing.min(CHUNK)]).await?;
        if n == 0 {
            return Err(PrefaceError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() < PREFACE.len() {
            // Let the caller check the preface so far.
            return Ok(());
        }
    }
}

/// A reader that first replays bytes already read from `inner`.
#[derive(Debug)]
pub struct Rewind<S> {
    replay: Vec<u8>,
    replayed: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(replay: Vec<u8>, inner: S) -> Self {
        Rewind {
            replay,
            replayed: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let rest = this.replay.get(this.replayed..).unwrap_or_default();
        if rest.is_empty() || buf.remaining() == 0 {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        this.replayed += n;
        if this.replayed == this.replay.len() {
            // Replayed: give the memory back for the life of the connection.
            this.replay = Vec::new();
            this.replayed = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(payload_len: usize) -> Vec<u8> {
        let mut frame = vec![
            (payload_len >> 16) as u8,
            (payload_len >> 8) as u8,
            payload_len as u8,
            FRAME_SETTINGS,
            0,
            0,
            0,
            0,
            0,
        ];
        frame.extend(std::iter::repeat_n(7u8, payload_len));
        frame
    }

    async fn read_all(bytes: &[u8]) -> Result<Vec<u8>, PrefaceError> {
        let mut io = bytes;
        read_preface(&mut io).await
    }

    #[tokio::test]
    async fn reads_exactly_the_preface_and_first_settings() {
        let mut wire = PREFACE.to_vec();
        wire.extend(settings(12));
        let first = wire.clone();
        wire.extend(b"HEADERS-follow");
        let mut io = &wire[..];
        assert_eq!(read_preface(&mut io).await.unwrap(), first);
        assert_eq!(io, b"HEADERS-follow", "nothing past SETTINGS is consumed");
        // An empty SETTINGS frame is valid too.
        let mut empty = PREFACE.to_vec();
        empty.extend(settings(0));
        assert_eq!(read_all(&empty).await.unwrap(), empty);
    }

    #[tokio::test]
    async fn refuses_what_is_not_an_http2_client() {
        assert!(matches!(
            read_all(b"GET / HTTP/1.1\r\n").await,
            Err(PrefaceError::NotHttp2)
        ));
        assert!(matches!(read_all(b"P").await, Err(PrefaceError::Closed)));
        let mut ping = PREFACE.to_vec();
        ping.extend([0, 0, 8, 0x6, 0, 0, 0, 0, 0]);
        assert!(matches!(
            read_all(&ping).await,
            Err(PrefaceError::NotSettings)
        ));
        let mut ack = PREFACE.to_vec();
        ack.extend([0, 0, 0, FRAME_SETTINGS, FLAG_ACK, 0, 0, 0, 0]);
        assert!(matches!(
            read_all(&ack).await,
            Err(PrefaceError::NotSettings)
        ));
        let mut on_stream = PREFACE.to_vec();
        on_stream.extend([0, 0, 0, FRAME_SETTINGS, 0, 0, 0, 0, 1]);
        assert!(matches!(
            read_all(&on_stream).await,
            Err(PrefaceError::NotSettings)
        ));
        for len in [5, MAX_SETTINGS_PAYLOAD + 6, 0xff_ffff] {
            let mut wire = PREFACE.to_vec();
            wire.extend(&settings(len)[..FRAME_HEADER_LEN]);
            assert!(
                matches!(read_all(&wire).await, Err(PrefaceError::BadSettingsLength(l)) if l == len),
                "{len}"
            );
        }
        let mut short = PREFACE.to_vec();
        short.extend(&settings(12)[..15]);
        assert!(matches!(read_all(&short).await, Err(PrefaceError::Closed)));
    }

    #[tokio::test]
    async fn a_wrong_first_byte_is_refused_without_waiting_for_more() {
        // The peer sent one wrong byte and keeps the connection open.
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"G")
            .await
            .unwrap();
        assert!(matches!(
            read_preface(&mut server).await,
            Err(PrefaceError::NotHttp2)
        ));
        drop(client);
    }

    #[tokio::test]
    async fn rewind_replays_then_reads_on() {
        let inner: &[u8] = b" world";
        let mut rewind = Rewind::new(b"hello".to_vec(), inner);
        let mut small = [0u8; 3];
        let n = rewind.read(&mut small).await.unwrap();
        assert_eq!(&small[..n], b"hel");
        let mut rest = Vec::new();
        rewind.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"lo world");
    }
}
