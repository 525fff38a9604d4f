//! The one length-prefixed message of a unary gRPC request, assembled from
//! DATA frames as they arrive, with the size limit enforced from the 5-byte
//! prefix so an oversized message is refused before any of it is buffered.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Buf, Bytes, BytesMut};
use http_body::Body;

use super::Malformed;

/// Compressed flag (1 byte) + big-endian message length (4 bytes).
const PREFIX_LEN: usize = 5;

/// Reads the request body until it yields one complete message and ends, or
/// until it is known to be malformed: then it returns at once, without
/// reading (or waiting for) the rest of the stream.
pub(super) async fn read_message<B>(
    body: &mut B,
    limit: usize,
    peak: &AtomicUsize,
) -> Result<Bytes, Malformed>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut framer = Framer::new(limit);
    loop {
        match std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            None => return framer.finish(),
            Some(Err(_)) => return Err(Malformed::Interrupted),
            Some(Ok(frame)) => {
                // Request trailers carry nothing for a unary call.
                if let Ok(data) = frame.into_data() {
                    let frame_len = data.len();
                    let pushed = framer.push(data);
                    // The frame stays alive while it is copied from.
                    record_peak(peak, framer.held() + frame_len);
                    pushed?;
                }
            }
        }
    }
}

/// Raises `peak` to `held`; a plain load first keeps the shared cache line
/// read-only in the steady state.
fn record_peak(peak: &AtomicUsize, held: usize) {
    if held > peak.load(Ordering::Relaxed) {
        peak.fetch_max(held, Ordering::Relaxed);
    }
}

/// The framing state machine, fed one DATA frame at a time.
#[derive(Debug)]
pub(super) struct Framer {
    limit: usize,
    state: State,
}

#[derive(Debug)]
enum State {
    Prefix {
        bytes: [u8; PREFIX_LEN],
        filled: usize,
    },
    /// `partial` stays empty while no byte of the message has arrived, so a
    /// message inside one frame is sliced out of it without a copy.
    Message {
        len: usize,
        partial: BytesMut,
    },
    Done(Bytes),
}

impl Framer {
    pub(super) fn new(limit: usize) -> Self {
        Framer {
            limit,
            state: State::Prefix {
                bytes: [0; PREFIX_LEN],
                filled: 0,
            },
        }
    }

    /// Bytes of the message this framer holds (reserved or complete).
    pub(super) fn held(&self) -> usize {
        match &self.state {
            State::Prefix { .. } => 0,
            State::Message { partial, .. } => partial.capacity(),
            State::Done(message) => message.len(),
        }
    }

    pub(super) fn push(&mut self, mut chunk: Bytes) -> Result<(), Malformed> {
        while chunk.has_remaining() {
            match &mut self.state {
                State::Prefix { bytes, filled } => {
                    let n = (PREFIX_LEN - *filled).min(chunk.len());
                    bytes[*filled..*filled + n].copy_from_slice(&chunk[..n]);
                    chunk.advance(n);
                    *filled += n;
                    if *filled == PREFIX_LEN {
                        let prefix = *bytes;
                        self.state = start_message(prefix, self.limit)?;
                    }
                }
                State::Message { len, partial } if partial.is_empty() && chunk.len() >= *len => {
                    self.state = State::Done(chunk.split_to(*len));
                }
                State::Message { len, partial } => {
                    if partial.is_empty() {
                        // Exactly the announced length, which is within the limit.
                        *partial = BytesMut::with_capacity(*len);
                    }
                    let n = (*len - partial.len()).min(chunk.len());
                    partial.extend_from_slice(&chunk[..n]);
                    chunk.advance(n);
                    if partial.len() == *len {
                        self.state = State::Done(std::mem::take(partial).freeze());
                    }
                }
                State::Done(_) => return Err(Malformed::Extra),
            }
        }
        Ok(())
    }

    /// The message, once the stream has ended.
    pub(super) fn finish(self) -> Result<Bytes, Malformed> {
        match self.state {
            State::Done(message) => Ok(message),
            State::Prefix { filled: 0, .. } => Err(Malformed::Missing),
            State::Prefix { .. } | State::Message { .. } => Err(Malformed::Truncated),
        }
    }
}

/// What follows a complete prefix, decided before any of the message is read.
fn start_message(prefix: [u8; PREFIX_LEN], limit: usize) -> Result<State, Malformed> {
    let [flag, len @ ..] = prefix;
    if flag != 0 {
        return Err(Malformed::Compressed { flag });
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(Malformed::TooLarge { len, limit });
    }
    Ok(if len == 0 {
        State::Done(Bytes::new())
    } else {
        State::Message {
            len,
            partial: BytesMut::new(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    fn feed(limit: usize, chunks: &[&[u8]]) -> Result<Bytes, Malformed> {
        let mut framer = Framer::new(limit);
        for chunk in chunks {
            framer.push(Bytes::copy_from_slice(chunk))?;
        }
        framer.finish()
    }

    #[test]
    fn one_message_in_one_frame_is_sliced_out() {
        let frame = Bytes::from(framed(b"hello"));
        let mut framer = Framer::new(64);
        framer.push(frame.clone()).unwrap();
        let message = framer.finish().unwrap();
        assert_eq!(&message[..], b"hello");
        // Same allocation as the frame: no copy was made.
        assert_eq!(message.as_ptr(), frame[PREFIX_LEN..].as_ptr());
    }

    #[test]
    fn a_message_split_at_every_byte_is_reassembled() {
        let bytes = framed(b"split across frames");
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(&feed(64, &chunks).unwrap()[..], b"split across frames");
        let (a, b) = bytes.split_at(3);
        assert_eq!(&feed(64, &[a, &[], b]).unwrap()[..], b"split across frames");
    }

    #[test]
    fn a_zero_length_message_is_a_message() {
        assert_eq!(feed(64, &[&framed(b"")]).unwrap().len(), 0);
    }

    #[test]
    fn no_message_truncation_and_extra_bytes_are_malformed() {
        assert_eq!(feed(64, &[]), Err(Malformed::Missing));
        assert_eq!(feed(64, &[&[]]), Err(Malformed::Missing));
        assert_eq!(feed(64, &[&[0, 0, 0]]), Err(Malformed::Truncated));
        let bytes = framed(b"abc");
        assert_eq!(feed(64, &[&bytes[..6]]), Err(Malformed::Truncated));
        let two = [framed(b"abc"), framed(b"def")].concat();
        assert_eq!(feed(64, &[&two]), Err(Malformed::Extra));
        assert_eq!(feed(64, &[&bytes, &[0]]), Err(Malformed::Extra));
    }

    #[test]
    fn the_limit_and_the_compressed_flag_are_checked_from_the_prefix_alone() {
        let mut framer = Framer::new(16);
        let err = framer.push(Bytes::from_static(&[0, 0, 0, 0, 17]));
        assert_eq!(err, Err(Malformed::TooLarge { len: 17, limit: 16 }));
        assert_eq!(framer.held(), 0, "nothing reserved for a refused message");
        assert!(feed(16, &[&[0, 0, 0, 0, 16], &[7; 16]]).is_ok());
        assert_eq!(
            feed(16, &[&[0, 0xff, 0xff, 0xff, 0xff]]),
            Err(Malformed::TooLarge {
                len: u32::MAX as usize,
                limit: 16
            })
        );
        assert_eq!(
            feed(64, &[&[1, 0, 0, 0, 1, 0]]),
            Err(Malformed::Compressed { flag: 1 })
        );
        assert_eq!(
            feed(64, &[&[2, 0, 0, 0, 0]]),
            Err(Malformed::Compressed { flag: 2 })
        );
    }

    #[test]
    fn the_framer_holds_at_most_the_announced_length() {
        let mut framer = Framer::new(1000);
        framer.push(Bytes::from_static(&[0, 0, 0, 0, 100])).unwrap();
        framer.push(Bytes::from(vec![1; 10])).unwrap();
        assert_eq!(framer.held(), 100);
    }
}
