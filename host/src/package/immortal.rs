//! Makes the snapshot's Python objects immortal in the component's memory
//! image, so that requests stop copying the pages they live on.
//!
//! Every fresh instance maps the snapshot copy-on-write. CPython writes an
//! object's reference count each time it takes or drops a reference, so a
//! request that merely calls a function or reads a constant from the
//! snapshot copies the whole 4 KiB page the object lives on: most of the
//! page faults a request takes. Objects whose count is at least
//! `_Py_IMMORTAL_MINIMUM_REFCNT` are never counted (PEP 683), so their pages
//! stay shared.
//!
//! The guest lists, at the end of pre-init, the header of every object alive
//! (`wsgi_wasm/build.py`, `_record_heap`): its address and its type's address,
//! and keeps them all alive until the snapshot. Here each header is found in
//! the data segments of the module that owns the memory, checked (the second
//! word must be the recorded type, the first a plausible mortal count), and
//! its count overwritten in place. The segments do not change size, so the
//! component needs no re-encoding.
//!
//! An immortal object is never freed. That costs nothing here: an instance
//! serves one request and is thrown away whole.

use anyhow::{bail, Context, Result};
use wasmparser::{DataKind, Encoding, Operator, Parser, Payload};

/// `_Py_IMMORTAL_INITIAL_REFCNT` of CPython 3.14 on 32-bit targets.
pub const IMMORTAL_REFCNT: u32 = 5 << 28;
/// `_Py_IMMORTAL_MINIMUM_REFCNT` of CPython 3.14 on 32-bit targets: counts at
/// or above it are immortal already.
const IMMORTAL_MINIMUM: u32 = 1 << 30;

/// What [`apply`] did with the recorded headers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Counts set to immortal.
    pub immortalized: usize,
    /// Objects that were immortal already (`None`, small ints, interned strings, ...).
    pub already: usize,
    /// Headers not found whole in one data segment, or not matching the
    /// record; left alone.
    pub skipped: usize,
}

/// One active data segment of the memory: where it lands in linear memory,
/// and where its bytes are in the component file.
struct Segment {
    /// Linear-memory address of the first byte.
    addr: u64,
    /// Offset of the first byte in the component.
    file_offset: usize,
    /// Length in bytes.
    len: usize,
}

/// Sets the reference count of every header listed in `records` (pairs of
/// little-endian u32: object address, type address) to immortal in
/// `component`'s memory image.
///
/// # Errors
/// Fails if the records are malformed or the component does not have exactly
/// one core module with a memory and data segments (a component not made by
/// componentize-py); the component is then left as it was.
pub fn apply(component: &mut [u8], records: &[u8]) -> Result<Outcome> {
    if !records.len().is_multiple_of(8) {
        bail!("the heap record is {} bytes, not a whole number of 8-byte records", records.len());
    }
    let segments = memory_segments(component)?;
    let mut outcome = Outcome::default();
    for record in records.chunks_exact(8) {
        let addr = u64::from(u32::from_le_bytes(record[..4].try_into().unwrap()));
        let type_addr = u32::from_le_bytes(record[4..].try_into().unwrap());
        let Some(at) = header_offset(&segments, addr) else {
            outcome.skipped += 1;
            continue;
        };
        let refcnt = u32::from_le_bytes(component[at..at + 4].try_into().unwrap());
        let ob_type = u32::from_le_bytes(component[at + 4..at + 8].try_into().unwrap());
        if ob_type != type_addr || refcnt == 0 {
            outcome.skipped += 1;
        } else if refcnt >= IMMORTAL_MINIMUM {
            outcome.already += 1;
        } else {
            component[at..at + 4].copy_from_slice(&IMMORTAL_REFCNT.to_le_bytes());
            outcome.immortalized += 1;
        }
    }
    Ok(outcome)
}

/// The file offset of the 8-byte header at `addr`, if one segment holds all of it.
fn header_offset(segments: &[Segment], addr: u64) -> Option<usize> {
    let i = segments.partition_point(|s| s.addr <= addr).checked_sub(1)?;
    let seg = &segments[i];
    let start = usize::try_from(addr - seg.addr).ok()?;
    (start + 8 <= seg.len).then_some(seg.file_offset + start)
}

/// The active data segments of the one core module that defines a memory,
/// sorted by address.
fn memory_segments(component: &[u8]) -> Result<Vec<Segment>> {
    // Modules nest inside the component; track which one each section is in.
    struct Module {
        has_memory: bool,
        segments: Vec<Segment>,
    }
    let mut stack: Vec<Option<Module>> = Vec::new();
    let mut owners = Vec::new();
    for payload in Parser::new(0).parse_all(component) {
        match payload.context("parsing the component")? {
            Payload::Version { encoding, .. } => {
                stack.push((encoding == Encoding::Module).then(|| Module { has_memory: false, segments: Vec::new() }))
            }
            Payload::MemorySection(reader) => {
                if let Some(Some(module)) = stack.last_mut() {
                    module.has_memory |= reader.count() > 0;
                }
            }
            Payload::DataSection(reader) => {
                let Some(Some(module)) = stack.last_mut() else { continue };
                for data in reader {
                    let data = data.context("parsing a data segment")?;
                    let DataKind::Active { memory_index: 0, offset_expr } = data.kind else { continue };
                    let mut ops = offset_expr.get_operators_reader();
                    let Ok(Operator::I32Const { value }) = ops.read() else { continue };
                    module.segments.push(Segment {
                        addr: u64::from(value as u32),
                        file_offset: data.data.as_ptr() as usize - component.as_ptr() as usize,
                        len: data.data.len(),
                    });
                }
            }
            Payload::End(_) => {
                if let Some(Some(module)) = stack.pop() {
                    if module.has_memory && !module.segments.is_empty() {
                        owners.push(module.segments);
                    }
                }
            }
            _ => {}
        }
    }
    let [mut segments] = <[Vec<Segment>; 1]>::try_from(owners)
        .map_err(|found| anyhow::anyhow!("expected one module with a memory image, found {}", found.len()))?;
    segments.sort_by_key(|s| s.addr);
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module like componentize-py's main one: a memory and its image.
    /// (Addresses stay below 64: one byte of signed LEB128.)
    fn module(first: &[u8], second: &[u8]) -> Vec<u8> {
        let mut out = b"\0asm\x01\0\0\0".to_vec();
        out.extend([5, 3, 1, 0, 1]); // memory section: one memory, min 1 page
        let mut body = vec![2];
        for (addr, bytes) in [(16u8, first), (48u8, second)] {
            body.extend([0, 0x41, addr, 0x0b, bytes.len() as u8]);
            body.extend(bytes);
        }
        out.push(11);
        out.push(body.len() as u8);
        out.extend(body);
        out
    }

    fn record(addr: u32, ty: u32) -> Vec<u8> {
        [addr.to_le_bytes(), ty.to_le_bytes()].concat()
    }

    #[test]
    fn verified_headers_become_immortal_and_nothing_else_moves() {
        // At 16: count 3, type 0x100. At 24: count 1, type 0x200. At 48: an immortal.
        let first = [3, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 2, 0, 0];
        let second = [0, 0, 0, 0x50, 0, 3, 0, 0];
        let mut wasm = module(&first, &second);
        let original = wasm.clone();
        let records = [
            record(16, 0x100),
            record(24, 0x999), // wrong type: not an object header
            record(48, 0x300),
            record(52, 0x300), // runs past its segment
            record(40, 0x100), // in no segment
        ]
        .concat();
        let outcome = apply(&mut wasm, &records).unwrap();
        assert_eq!(outcome, Outcome { immortalized: 1, already: 1, skipped: 3 });
        let diff: Vec<usize> = (0..wasm.len()).filter(|&i| wasm[i] != original[i]).collect();
        let at = original.windows(first.len()).position(|w| w == first).unwrap();
        assert_eq!(diff, vec![at, at + 3], "only the first count changes");
        assert_eq!(wasm[at..at + 4], IMMORTAL_REFCNT.to_le_bytes());
        wasmparser::Validator::new().validate_all(&wasm).unwrap();
    }

    #[test]
    fn malformed_records_and_modules_without_memory_are_refused() {
        let mut wasm = module(&[1, 0, 0, 0, 0, 1, 0, 0], &[]);
        assert!(apply(&mut wasm, &[0; 7]).is_err());
        let mut no_memory = b"\0asm\x01\0\0\0".to_vec();
        assert!(apply(&mut no_memory, &record(16, 0x100)).is_err());
    }
}
