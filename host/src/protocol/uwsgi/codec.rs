//! The uwsgi request packet: a 4-byte header and a block of variables.
//!
//! ```text
//! modifier1: u8 | datasize: u16 LE | modifier2: u8 | vars[datasize]
//! vars = (key_len: u16 LE, key, value_len: u16 LE, value)*
//! ```
//!
//! [`check`] scans a buffer cheaply and says whether a whole packet is there
//! (`Ok(None)`: not yet); [`parse`] then copies out the variables. Every length
//! is checked against what is left of its container, so a hostile packet can
//! only ever produce an error. This file depends on nothing but `std`, so the
//! fuzz target (`host/fuzz`) compiles it alone.

use std::fmt;

/// The uwsgi header size.
pub const HEADER_LEN: usize = 4;

/// `modifier1` for a WSGI request, the only kind served.
pub const MODIFIER_WSGI: u8 = 0;

/// Why a packet was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// `modifier1` names a request type other than WSGI.
    UnsupportedModifier(u8),
    /// The vars block is larger than the configured limit.
    TooLarge { size: usize, limit: usize },
    /// A key or value runs past the end of the vars block, or a key is empty.
    Malformed(&'static str),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedModifier(m) => write!(f, "unsupported uwsgi modifier1 {m} (only 0, WSGI, is served)"),
            Self::TooLarge { size, limit } => {
                write!(f, "uwsgi vars block of {size} bytes exceeds the limit of {limit}")
            }
            Self::Malformed(why) => write!(f, "malformed uwsgi vars block: {why}"),
        }
    }
}

impl std::error::Error for CodecError {}

/// A parsed request header: the variables, in the order they were sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub modifier2: u8,
    pub vars: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Reads a little-endian u16 at `at`, if there are two bytes there.
fn le16(buf: &[u8], at: usize) -> Option<usize> {
    let bytes = buf.get(at..at.checked_add(2)?)?;
    Some(usize::from(u16::from_le_bytes([bytes[0], bytes[1]])))
}

/// Says how long the packet at the start of `buf` is, once all of it is there.
///
/// Returns `Ok(None)` while more bytes are needed, `Ok(Some(len))` once
/// `buf[..len]` holds a whole header and vars block.
///
/// # Errors
/// A [`CodecError`] as soon as the header shows the packet cannot be served.
pub fn check(buf: &[u8], limit: usize) -> Result<Option<usize>, CodecError> {
    let Some(&modifier1) = buf.first() else { return Ok(None) };
    if modifier1 != MODIFIER_WSGI {
        return Err(CodecError::UnsupportedModifier(modifier1));
    }
    let Some(size) = le16(buf, 1) else { return Ok(None) };
    if size > limit {
        return Err(CodecError::TooLarge { size, limit });
    }
    let total = HEADER_LEN + size;
    Ok((buf.len() >= total).then_some(total))
}

/// Parses the packet that [`check`] found whole at the start of `buf`.
///
/// # Errors
/// A [`CodecError`] if the header or any key or value is out of bounds.
pub fn parse(buf: &[u8], limit: usize) -> Result<Packet, CodecError> {
    let total = check(buf, limit)?.ok_or(CodecError::Malformed("truncated packet"))?;
    let block = &buf[HEADER_LEN..total];
    let mut vars = Vec::new();
    let mut at = 0;
    while at < block.len() {
        let key_len = le16(block, at).ok_or(CodecError::Malformed("truncated key length"))?;
        at += 2;
        let key = block.get(at..at + key_len).ok_or(CodecError::Malformed("key runs past the block"))?;
        if key.is_empty() {
            return Err(CodecError::Malformed("empty key"));
        }
        at += key_len;
        let value_len = le16(block, at).ok_or(CodecError::Malformed("truncated value length"))?;
        at += 2;
        let value = block.get(at..at + value_len).ok_or(CodecError::Malformed("value runs past the block"))?;
        at += value_len;
        vars.push((key.to_vec(), value.to_vec()));
    }
    Ok(Packet { modifier2: buf[3], vars })
}

/// Encodes a request packet; the inverse of [`parse`] (used by tests and tools).
///
/// # Errors
/// If a key, a value or the whole block does not fit its u16 length.
pub fn encode(vars: &[(&[u8], &[u8])]) -> Result<Vec<u8>, CodecError> {
    let mut block = Vec::new();
    for (key, value) in vars {
        for part in [key, value] {
            let len =
                u16::try_from(part.len()).map_err(|_| CodecError::Malformed("a key or value over 65535 bytes"))?;
            block.extend_from_slice(&len.to_le_bytes());
            block.extend_from_slice(part);
        }
    }
    let size = u16::try_from(block.len()).map_err(|_| CodecError::TooLarge { size: block.len(), limit: 65535 })?;
    let mut packet = Vec::with_capacity(HEADER_LEN + block.len());
    packet.push(MODIFIER_WSGI);
    packet.extend_from_slice(&size.to_le_bytes());
    packet.push(0);
    packet.extend_from_slice(&block);
    Ok(packet)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 65535;

    #[test]
    fn round_trips_and_keeps_order_and_repeats() {
        let vars: &[(&[u8], &[u8])] =
            &[(b"REQUEST_METHOD", b"GET"), (b"HTTP_ACCEPT", b"a"), (b"HTTP_ACCEPT", b"b"), (b"EMPTY", b"")];
        let packet = encode(vars).unwrap();
        assert_eq!(check(&packet, LIMIT), Ok(Some(packet.len())));
        let parsed = parse(&packet, LIMIT).unwrap();
        let back: Vec<(&[u8], &[u8])> = parsed.vars.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
        assert_eq!(back, vars);
    }

    #[test]
    fn needs_more_bytes_until_the_whole_block_is_there() {
        let packet = encode(&[(b"A", b"1")]).unwrap();
        for cut in 0..packet.len() {
            assert_eq!(check(&packet[..cut], LIMIT), Ok(None), "cut at {cut}");
        }
        // A body may follow the vars block: it is not part of the packet.
        let mut with_body = packet.clone();
        with_body.extend_from_slice(b"body bytes");
        assert_eq!(check(&with_body, LIMIT), Ok(Some(packet.len())));
    }

    #[test]
    fn a_truncated_header_is_incomplete_not_an_error() {
        assert_eq!(check(&[0], LIMIT), Ok(None));
        assert_eq!(check(&[0, 5], LIMIT), Ok(None));
        assert!(parse(&[0, 5], LIMIT).is_err());
    }

    #[test]
    fn datasize_beyond_the_buffer_waits_and_beyond_the_limit_fails() {
        let header = [0, 0xff, 0x7f, 0];
        assert_eq!(check(&header, LIMIT), Ok(None));
        assert_eq!(check(&header, 4096), Err(CodecError::TooLarge { size: 0x7fff, limit: 4096 }));
    }

    #[test]
    fn keys_and_values_running_past_the_block_fail() {
        // Key length says 10, block holds 3 bytes after it.
        let bad_key = [0, 5, 0, 0, 10, 0, b'a', b'b', b'c'];
        assert_eq!(parse(&bad_key, LIMIT), Err(CodecError::Malformed("key runs past the block")));
        // Value length 0xffff: would overflow a naive u16 sum.
        let bad_value = [0, 6, 0, 0, 1, 0, b'K', 0xff, 0xff, b'v'];
        assert_eq!(parse(&bad_value, LIMIT), Err(CodecError::Malformed("value runs past the block")));
        // A lone length byte at the end.
        let dangling = [0, 5, 0, 0, 1, 0, b'K', 0, 0xAA];
        assert!(parse(&dangling, LIMIT).is_err(), "{:?}", parse(&dangling, LIMIT));
        let empty_key = [0, 4, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse(&empty_key, LIMIT), Err(CodecError::Malformed("empty key")));
    }

    #[test]
    fn only_wsgi_requests_are_served() {
        let mut packet = encode(&[(b"A", b"1")]).unwrap();
        packet[0] = 30;
        assert_eq!(check(&packet, LIMIT), Err(CodecError::UnsupportedModifier(30)));
    }

    #[test]
    fn encode_refuses_what_does_not_fit() {
        let big = vec![b'x'; 70_000];
        assert!(encode(&[(b"K", &big)]).is_err());
        let many: Vec<(&[u8], &[u8])> = (0..3).map(|_| (&b"K"[..], &big[..30_000])).collect();
        assert!(encode(&many).is_err());
    }
}
