//! Framing: where one message ends and the next begins on a TCP stream.
//!
//! Only framing lives here (the message inside is opaque bytes): a length header in one of
//! the four forms jPOS channels use, an optional fixed header after it (a TPDU, say) that
//! the length counts and the switch echoes back, a maximum frame size, and zero-length
//! frames as keep-alives. [`Framing`] is one small enum rather than a zoo of channel types,
//! and [`FrameCodec`] plugs into `tokio_util::codec::Framed`.

use std::fmt;
use std::str::FromStr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::message::Message;

/// The length header in front of every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `len2`: 2-byte big-endian length, not counting itself (jPOS NACChannel, PostChannel).
    Len2,
    /// `len2-inclusive`: 2-byte big-endian length counting its own 2 bytes.
    Len2Inclusive,
    /// `len4-ascii`: 4 ASCII decimal digits (jPOS ASCIIChannel).
    Len4Ascii,
    /// `len2-bcd`: 2 BCD bytes, up to 9999 (jPOS NCCChannel).
    Len2Bcd,
}

impl Framing {
    /// The names accepted by `FromStr`, as in the config.
    pub const NAMES: [&'static str; 4] = ["len2", "len2-inclusive", "len4-ascii", "len2-bcd"];

    /// Bytes the length header takes.
    pub const fn header_len(self) -> usize {
        match self {
            Framing::Len4Ascii => 4,
            _ => 2,
        }
    }

    /// Largest frame (fixed header plus message) the header can express.
    pub const fn max_len(self) -> usize {
        match self {
            Framing::Len2 => 65535,
            Framing::Len2Inclusive => 65533,
            Framing::Len4Ascii | Framing::Len2Bcd => 9999,
        }
    }

    /// Reads the length of what follows the length header; `None` when malformed.
    fn read(self, h: [u8; 4]) -> Option<usize> {
        let [a, b, c, d] = h;
        match self {
            Framing::Len2 => Some(usize::from(u16::from_be_bytes([a, b]))),
            Framing::Len2Inclusive => match u16::from_be_bytes([a, b]) {
                0 | 2 => Some(0),
                1 => None,
                n => Some(usize::from(n) - 2),
            },
            Framing::Len4Ascii => {
                let digits = [a, b, c, d];
                digits.iter().try_fold(0usize, |acc, &x| {
                    let v = x.wrapping_sub(b'0');
                    (v <= 9).then_some(acc * 10 + usize::from(v))
                })
            }
            Framing::Len2Bcd => [a, b].iter().try_fold(0usize, |acc, &x| {
                let (h, l) = (x >> 4, x & 0x0F);
                (h <= 9 && l <= 9).then_some(acc * 100 + usize::from(h) * 10 + usize::from(l))
            }),
        }
    }

    /// Writes the header for `len` bytes following it; `None` when it does not fit.
    fn write(self, len: usize) -> Option<[u8; 4]> {
        if len > self.max_len() {
            return None;
        }
        Some(match self {
            Framing::Len2 => {
                let [a, b] = (len as u16).to_be_bytes();
                [a, b, 0, 0]
            }
            Framing::Len2Inclusive => {
                let [a, b] = ((len + 2) as u16).to_be_bytes();
                [a, b, 0, 0]
            }
            Framing::Len4Ascii => {
                let d = |p: usize| b'0' + ((len / p) % 10) as u8;
                [d(1000), d(100), d(10), d(1)]
            }
            Framing::Len2Bcd => {
                let d = |p: usize| ((len / p) % 10) as u8;
                [(d(1000) << 4) | d(100), (d(10) << 4) | d(1), 0, 0]
            }
        })
    }
}

impl FromStr for Framing {
    type Err = FrameError;
    fn from_str(s: &str) -> Result<Framing, FrameError> {
        match s {
            "len2" => Ok(Framing::Len2),
            "len2-inclusive" => Ok(Framing::Len2Inclusive),
            "len4-ascii" => Ok(Framing::Len4Ascii),
            "len2-bcd" => Ok(Framing::Len2Bcd),
            _ => Err(FrameError::UnknownFraming),
        }
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Framing::Len2 => "len2",
            Framing::Len2Inclusive => "len2-inclusive",
            Framing::Len4Ascii => "len4-ascii",
            Framing::Len2Bcd => "len2-bcd",
        })
    }
}

/// Why the stream cannot be framed; after a decode error the connection should close.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Not one of [`Framing::NAMES`].
    #[error("unknown framing: use len2, len2-inclusive, len4-ascii or len2-bcd")]
    UnknownFraming,
    /// The length header is not a number in its form.
    #[error("length header is malformed")]
    BadLength,
    /// The announced frame is larger than the configured maximum.
    #[error("frame of {len} bytes is over the maximum of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// A non-empty frame shorter than the fixed header. It has been taken off the stream
    /// whole: see [`FrameError::frame_skipped`].
    #[error("frame of {len} bytes is shorter than the {header} byte header")]
    ShorterThanHeader {
        /// Announced length.
        len: usize,
        /// Fixed header length.
        header: usize,
    },
    /// An outgoing header of the wrong size for this codec.
    #[error("outgoing header has {got} bytes, the link uses {want}")]
    HeaderMismatch {
        /// Bytes given.
        got: usize,
        /// Configured fixed header length.
        want: usize,
    },
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// One framed unit off the wire.
#[derive(Clone, PartialEq, Eq)]
pub enum Frame {
    /// A zero-length frame: the peer checks the link is alive; echo it.
    KeepAlive,
    /// A message with the fixed header that preceded it (empty when the link has none).
    Message {
        /// The fixed header as received, to echo in the answer.
        header: Bytes,
        /// The ISO 8583 message bytes.
        body: Bytes,
    },
}

/// Lengths only: a message's bytes hold card numbers in full.
impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frame::KeepAlive => f.write_str("KeepAlive"),
            Frame::Message { header, body } => write!(
                f,
                "Message {{ header: {} bytes, body: {} bytes }}",
                header.len(),
                body.len()
            ),
        }
    }
}

/// A `tokio_util` codec for one link's framing.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    /// The length header's form.
    framing: Framing,
    /// Fixed header bytes after the length (e.g. 5 for a TPDU).
    header_len: usize,
    /// Largest frame read (fixed header plus message), a guard against a peer's lengths.
    /// Frames written are bounded only by what the length header can say: an answer is
    /// longer than its request (DE 38, DE 39, an issuer's private data), and refusing it
    /// here would drop an answer whose money has already moved.
    max_frame: usize,
}

impl FrameCodec {
    /// A codec for `framing`, a fixed header of `header_len` bytes and frames of at most
    /// `max_frame` bytes (fixed header plus message).
    pub fn new(framing: Framing, header_len: usize, max_frame: usize) -> FrameCodec {
        FrameCodec {
            framing,
            header_len,
            max_frame: max_frame.min(framing.max_len()),
        }
    }

    /// True when a message of `body_len` bytes fits in one frame of this codec, its fixed
    /// header included (the maximum is already bounded by what the length header can say).
    pub fn fits(&self, body_len: usize) -> bool {
        self.header_len + body_len <= self.max_frame
    }

    /// The framing in use.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Writes a frame for `msg` straight into `dst` (no intermediate buffer): length,
    /// `header`, then the packed message.
    pub fn encode_message(
        &self,
        header: &[u8],
        msg: &Message,
        dst: &mut BytesMut,
    ) -> Result<(), FrameError> {
        if header.len() != self.header_len {
            return Err(FrameError::HeaderMismatch {
                got: header.len(),
                want: self.header_len,
            });
        }
        let hl = self.framing.header_len();
        let at = dst.len();
        dst.put_slice(&[0u8; 4][..hl]);
        dst.put_slice(header);
        msg.pack_into(dst);
        let len = dst.len() - at - hl;
        match self.framing.write(len) {
            Some(h) => {
                if let Some(slot) = dst.get_mut(at..at + hl) {
                    slot.copy_from_slice(h.get(..hl).unwrap_or_default());
                }
                Ok(())
            }
            _ => {
                dst.truncate(at);
                Err(FrameError::TooLarge {
                    len,
                    max: self.framing.max_len(),
                })
            }
        }
    }
}

impl FrameError {
    /// True when the error is one bad frame that the codec took off the stream whole:
    /// reading can go on with the next frame. Every other error leaves the stream where
    /// no frame boundary can be found again.
    pub fn frame_skipped(&self) -> bool {
        matches!(self, FrameError::ShorterThanHeader { .. })
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let hl = self.framing.header_len();
        let Some(h) = src.get(..hl) else {
            return Ok(None);
        };
        let mut head = [0u8; 4];
        if let Some(dst) = head.get_mut(..hl) {
            dst.copy_from_slice(h);
        }
        let len = self.framing.read(head).ok_or(FrameError::BadLength)?;
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        if len == 0 {
            src.advance(hl);
            return Ok(Some(Frame::KeepAlive));
        }
        if len < self.header_len {
            // Its length is known, so it is taken off the stream whole and the next frame
            // can be read: one bad frame, not a broken stream (`FrameError::frame_skipped`).
            if src.len() < hl + len {
                return Ok(None);
            }
            src.advance(hl + len);
            return Err(FrameError::ShorterThanHeader {
                len,
                header: self.header_len,
            });
        }
        if src.len() < hl + len {
            src.reserve(hl + len - src.len());
            return Ok(None);
        }
        src.advance(hl);
        let mut frame = src.split_to(len).freeze();
        let body = frame.split_off(self.header_len);
        Ok(Some(Frame::Message {
            header: frame,
            body,
        }))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        match item {
            Frame::KeepAlive => {
                let h = self.framing.write(0).ok_or(FrameError::BadLength)?;
                dst.put_slice(h.get(..self.framing.header_len()).unwrap_or_default());
                Ok(())
            }
            Frame::Message { header, body } => {
                if header.len() != self.header_len {
                    return Err(FrameError::HeaderMismatch {
                        got: header.len(),
                        want: self.header_len,
                    });
                }
                let len = header.len() + body.len();
                let h = self.framing.write(len).ok_or(FrameError::TooLarge {
                    len,
                    max: self.framing.max_len(),
                })?;
                dst.reserve(4 + len);
                dst.put_slice(h.get(..self.framing.header_len()).unwrap_or_default());
                dst.put_slice(&header);
                dst.put_slice(&body);
                Ok(())
            }
        }
    }
}

/// Reads a `header_hex` config value (e.g. `"6000010000"` for a TPDU) into bytes.
pub fn header_from_hex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks_exact(2)
        .map(|p| {
            let h = super::encoding::hex_value(*p.first()?)?;
            let l = super::encoding::hex_value(*p.get(1)?)?;
            Some((h << 4) | l)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_fits_within_the_maximum_and_what_the_length_header_can_say() {
        let tpdu = FrameCodec::new(Framing::Len2, 5, 100);
        assert!(tpdu.fits(95));
        assert!(!tpdu.fits(96));
        let ascii = FrameCodec::new(Framing::Len4Ascii, 0, 65_535);
        assert!(ascii.fits(9_999));
        assert!(!ascii.fits(10_000), "four digits say at most 9999");
    }

    #[test]
    fn a_frame_shows_its_lengths_not_its_bytes() {
        let body = format!("0100{}", crate::pan::test_pan("497010"));
        let frame = Frame::Message {
            header: Bytes::from_static(b"60000"),
            body: Bytes::from(body.clone()),
        };
        let shown = format!("{frame:?}");
        assert_eq!(shown, "Message { header: 5 bytes, body: 20 bytes }");
        assert!(!shown.contains(&body[4..]));
    }

    fn decode_all(codec: &mut FrameCodec, bytes: &[u8]) -> Vec<Frame> {
        let mut src = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = codec.decode(&mut src).unwrap() {
            out.push(f);
        }
        out
    }

    #[test]
    fn each_framing_reads_and_writes_its_own_length_header() {
        let cases: &[(Framing, &[u8])] = &[
            (Framing::Len2, &[0x00, 0x03]),
            (Framing::Len2Inclusive, &[0x00, 0x05]),
            (Framing::Len4Ascii, b"0003"),
            (Framing::Len2Bcd, &[0x00, 0x03]),
        ];
        for &(framing, header) in cases {
            let mut codec = FrameCodec::new(framing, 0, 8192);
            let mut wire = header.to_vec();
            wire.extend_from_slice(b"abc");
            let frames = decode_all(&mut codec, &wire);
            let want = Frame::Message {
                header: Bytes::new(),
                body: Bytes::from_static(b"abc"),
            };
            assert_eq!(frames, vec![want.clone()], "{framing}");
            let mut out = BytesMut::new();
            codec.encode(want, &mut out).unwrap();
            assert_eq!(&out[..], &wire[..], "{framing}");
        }
    }

    #[test]
    fn framing_names_parse_and_print_the_same() {
        for name in Framing::NAMES {
            assert_eq!(name.parse::<Framing>().unwrap().to_string(), name);
        }
        assert!("len3".parse::<Framing>().is_err());
    }

    #[test]
    fn a_zero_length_frame_is_a_keep_alive_and_echoes_as_one() {
        for framing in Framing::NAMES.map(|n| n.parse::<Framing>().unwrap()) {
            let mut codec = FrameCodec::new(framing, 5, 8192);
            let mut ka = BytesMut::new();
            codec.encode(Frame::KeepAlive, &mut ka).unwrap();
            assert_eq!(
                decode_all(&mut codec, &ka),
                vec![Frame::KeepAlive],
                "{framing}"
            );
        }
    }

    #[test]
    fn a_fixed_header_is_counted_in_the_length_and_kept_apart_from_the_body() {
        let mut codec = FrameCodec::new(Framing::Len2, 5, 8192);
        let wire = [&[0x00, 0x08][..], &[0x60, 0x00, 0x01, 0x00, 0x00], b"abc"].concat();
        let frames = decode_all(&mut codec, &wire);
        assert_eq!(
            frames,
            vec![Frame::Message {
                header: Bytes::from_static(&[0x60, 0x00, 0x01, 0x00, 0x00]),
                body: Bytes::from_static(b"abc"),
            }]
        );
    }

    #[test]
    fn a_frame_arriving_in_pieces_is_decoded_once_complete() {
        let mut codec = FrameCodec::new(Framing::Len4Ascii, 0, 8192);
        let mut src = BytesMut::from(&b"00"[..]);
        assert!(codec.decode(&mut src).unwrap().is_none());
        src.extend_from_slice(b"05hel");
        assert!(codec.decode(&mut src).unwrap().is_none());
        src.extend_from_slice(b"lo0000");
        assert!(matches!(
            codec.decode(&mut src).unwrap(),
            Some(Frame::Message { .. })
        ));
        assert_eq!(codec.decode(&mut src).unwrap(), Some(Frame::KeepAlive));
        assert!(src.is_empty());
    }

    #[test]
    fn oversized_and_malformed_lengths_are_errors() {
        let mut codec = FrameCodec::new(Framing::Len2, 0, 100);
        let mut src = BytesMut::from(&[0x00, 0x65][..]);
        assert!(matches!(
            codec.decode(&mut src),
            Err(FrameError::TooLarge { len: 101, max: 100 })
        ));
        let mut codec = FrameCodec::new(Framing::Len4Ascii, 0, 100);
        assert!(matches!(
            codec.decode(&mut BytesMut::from(&b"00x1"[..])),
            Err(FrameError::BadLength)
        ));
        let mut codec = FrameCodec::new(Framing::Len2Bcd, 0, 100);
        assert!(matches!(
            codec.decode(&mut BytesMut::from(&[0x00, 0x1A][..])),
            Err(FrameError::BadLength)
        ));
        let mut codec = FrameCodec::new(Framing::Len2, 5, 100);
        // Shorter than the header: taken off whole (once all of it is there), and the
        // next frame reads.
        let mut src = BytesMut::from(&[0x00, 0x03, 1, 2][..]);
        assert!(matches!(codec.decode(&mut src), Ok(None)));
        src.extend_from_slice(&[3, 0x00, 0x06, 9, 9, 9, 9, 9, b'x']);
        let e = codec.decode(&mut src).unwrap_err();
        assert!(matches!(
            e,
            FrameError::ShorterThanHeader { len: 3, header: 5 }
        ));
        assert!(e.frame_skipped());
        assert!(matches!(
            codec.decode(&mut src),
            Ok(Some(Frame::Message { ref body, .. })) if &body[..] == b"x"
        ));
        assert!(!FrameError::BadLength.frame_skipped());
    }

    #[test]
    fn header_hex_reads_pairs_of_hex_digits() {
        assert_eq!(header_from_hex("6000010000"), Some(vec![0x60, 0, 1, 0, 0]));
        assert_eq!(header_from_hex(""), Some(vec![]));
        assert_eq!(header_from_hex("600"), None);
        assert_eq!(header_from_hex("6G"), None);
    }
}
