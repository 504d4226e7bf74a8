//! The wire flags the tools share: how a link frames and lays out its messages.
//!
//! `vpan issuer-sim` and `vpan loadgen` sit on either end of the same kind of link, so they
//! take the same three flags, parsed once here. A wrong value is refused by clap, with the
//! flag's name and what it accepts, before the tool starts.

use crate::iso8583::codec::header_from_hex;
use crate::iso8583::{Framing, Spec, SpecError};

/// `--framing`, `--spec` and `--header-hex`, flattened into a tool's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct WireArgs {
    /// Length header: len2, len2-inclusive, len4-ascii or len2-bcd.
    #[arg(long, default_value = "len2", value_parser = parse_framing)]
    pub framing: Framing,
    /// Message layout: iso87ascii, iso87binary or a jPOS GenericPackager XML file.
    #[arg(long, default_value = "iso87ascii", value_parser = parse_spec)]
    pub spec: SpecArg,
    /// Fixed header after the length (e.g. a TPDU), as hex; the simulator echoes it.
    #[arg(long, default_value = "", value_parser = parse_header)]
    pub header_hex: Header,
}

/// The fixed header's bytes. A type of its own: clap reads a bare `Vec<u8>` as a flag that
/// may be given many times.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header(pub Vec<u8>);

fn parse_framing(s: &str) -> Result<Framing, String> {
    s.parse()
        .map_err(|_| format!("use one of {}", Framing::NAMES.join(", ")))
}

/// `--spec` as read: a layout, or a file that cannot be read (missing, unreadable), which
/// is not a usage error but the machine's (exit 1, as for every file a flag names), said
/// once the tool starts.
#[derive(Debug, Clone, Copy)]
pub enum SpecArg {
    /// The layout.
    Ready(&'static Spec),
    /// Why the file named could not be read.
    Unreadable(&'static str),
}

impl WireArgs {
    /// The layout `--spec` names, or why there is none.
    pub fn spec(&self) -> Result<&'static Spec, String> {
        match self.spec {
            SpecArg::Ready(spec) => Ok(spec),
            SpecArg::Unreadable(why) => Err(format!("--spec: {why}")),
        }
    }
}

fn parse_spec(s: &str) -> Result<SpecArg, String> {
    match Spec::by_name(s) {
        Ok(spec) => Ok(SpecArg::Ready(spec)),
        // Read as a path (by `Spec::by_name`'s own rule) and not readable: said at start.
        // A name that is no layout, or a file that is no packager, stays a usage error.
        Err(e @ SpecError::Io { .. }) => Ok(SpecArg::Unreadable(String::leak(e.to_string()))),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_header(s: &str) -> Result<Header, String> {
    header_from_hex(s)
        .map(Header)
        .ok_or_else(|| "pairs of hex digits, e.g. 6000010000".into())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Tool {
        #[command(flatten)]
        wire: WireArgs,
    }

    #[test]
    fn defaults_are_len2_iso87ascii_without_a_header() {
        let t = Tool::try_parse_from(["tool"]).unwrap();
        assert_eq!(t.wire.framing, Framing::Len2);
        assert!(std::ptr::eq(t.wire.spec().unwrap(), Spec::iso87ascii()));
        assert_eq!(t.wire.header_hex, Header::default());
    }

    #[test]
    fn each_flag_is_read() {
        let t = Tool::try_parse_from([
            "tool",
            "--framing",
            "len4-ascii",
            "--spec",
            "iso87binary",
            "--header-hex",
            "6000010000",
        ])
        .unwrap();
        assert_eq!(t.wire.framing, Framing::Len4Ascii);
        assert!(std::ptr::eq(t.wire.spec().unwrap(), Spec::iso87binary()));
        assert_eq!(t.wire.header_hex, Header(vec![0x60, 0, 1, 0, 0]));
    }

    #[test]
    fn a_wrong_value_is_refused_with_the_flag_and_what_it_takes() {
        for (args, flag, says) in [
            (["tool", "--framing", "len3"], "--framing", "len2-inclusive"),
            (["tool", "--spec", "iso99"], "--spec", "iso99"),
            (["tool", "--header-hex", "6g"], "--header-hex", "hex digits"),
        ] {
            let e = Tool::try_parse_from(args).unwrap_err().to_string();
            assert!(e.contains(flag) && e.contains(says), "{e}");
        }
    }
}
