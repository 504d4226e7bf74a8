//! The ISO 8583 codec: what a link's messages look like, how they are read and written,
//! and how they are cut out of a TCP stream.
//!
//! A frame's way through, by module:
//!
//! - [`codec`]: framing only. A `tokio_util` codec cuts the stream into frames by their
//!   length header (`len2`, `len2-inclusive`, `len4-ascii`, `len2-bcd`), keeps the fixed
//!   header (TPDU) for the echo, and surfaces keep-alives.
//! - [`spec`]: the dialect as data, a [`FieldSpec`] per field; built in `iso87ascii` and
//!   `iso87binary`, or [`jpos`] reads one from a jPOS GenericPackager XML file.
//! - [`parse`]: frame bytes to a [`Message`], validating everything the spec says; errors
//!   name field and offset. [`recover_header`] reads MTI and DE 11 from a bad frame.
//! - `shape`: the parser's fast path, a bitmap's fields flattened once per thread into runs
//!   whose offsets are constants and whose digit checks span many fields.
//! - [`message`]: the parsed message: the frame's `Bytes` plus an offset table, typed
//!   accessors (PAN, amounts, STAN, ...), and cheap edits for responses and PAN swaps.
//! - [`pack`]: [`Message`] back to bytes; untouched fields are copied verbatim.
//! - [`encoding`]: the byte-level pieces (digit checks, BCD, hex, EBCDIC).
//!
//! ```
//! use bytes::Bytes;
//! use vpan::iso8583::{Message, Spec};
//!
//! let spec = Spec::iso87ascii();
//! let mut req = Message::new(spec, b"0800").unwrap();
//! req.set(7, b"1126143015").unwrap();
//! req.set(11, b"000126").unwrap();
//! req.set(70, b"301").unwrap();
//! let wire = req.pack();
//!
//! let parsed = Message::parse(spec, wire.clone()).unwrap();
//! assert_eq!(parsed.stan(), Some(*b"000126"));
//! let mut resp = parsed.clone();
//! resp.set_mti(b"0810").unwrap();
//! resp.set_response_code(b"00").unwrap();
//! assert_eq!(resp.pack().len(), wire.len() + 2);
//! ```

pub mod codec;
pub mod encoding;
pub mod jpos;
pub mod message;
pub mod pack;
pub mod parse;
mod shape;
pub mod spec;

pub use codec::{Frame, FrameCodec, FrameError, Framing};
pub use message::{
    CARD_VERIFICATION_DATA, FieldText, Message, OriginalData, ReplacementAmounts, Track2,
};
pub use pack::EditError;
pub use parse::{ErrorLocation, ParseError, RecoveredHeader, parse, readable_part, recover_header};
pub use spec::{
    BitmapEncoding, Encoding, FieldSpec, Kind, Length, Pad, PrefixEncoding, Spec, SpecError,
    SubSpec,
};
