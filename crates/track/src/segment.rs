//! Metric segment files: append-only, checksummed blocks of metric points.
//!
//! A run's metrics live in `runs/<id>/metrics/<nnnnnn>.seg`. Each writer session (a run's
//! start, and every resume) opens a new segment, so a file has exactly one writer, and a
//! segment is only ever appended to. A file starts with the 8-byte magic `KILNSEG1`, then
//! holds blocks:
//!
//! ```text
//! b"KBLK"  u32 payload length  u64 checksum (first 8 bytes of BLAKE3 of the payload)  payload
//! payload: u32 n_keys, n_keys × (u32 key id, u16 length, UTF-8 name)
//!          u32 n_points, n_points × (u32 key id, u64 step, f64 value, i64 unix ms)
//! ```
//!
//! All integers are little-endian. Key ids are local to a segment: a block defines each key
//! before its first use in that segment, so every segment can be read on its own (by `sync`,
//! or after the rest of the run was lost). A crash in the middle of a write leaves a torn last
//! block: its length runs past the end of the file or its checksum does not match. Readers stop
//! there, keep every earlier block, and report how many bytes they ignored.

use std::collections::HashMap;
use std::path::Path;

use crate::error::IoContext;
use crate::{Error, Result};

pub(crate) const FILE_MAGIC: &[u8; 8] = b"KILNSEG1";
const BLOCK_MAGIC: &[u8; 4] = b"KBLK";
const BLOCK_HEADER: usize = 16;
const POINT_BYTES: usize = 28;

/// One point as the writer holds it: the key is an id into the writer's key table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RawPoint {
    pub key: u32,
    pub step: u64,
    pub value: f64,
    pub ts: i64,
}

/// Encodes blocks of one segment, remembering which keys the segment has defined.
#[derive(Debug, Default)]
pub(crate) struct BlockEncoder {
    defined: Vec<bool>,
    payload: Vec<u8>,
}

impl BlockEncoder {
    /// Appends one block holding `points` to `out`. `names[id]` is the name of key `id`.
    pub fn encode(&mut self, names: &[String], points: &[RawPoint], out: &mut Vec<u8>) {
        if self.defined.len() < names.len() {
            self.defined.resize(names.len(), false);
        }
        self.payload.clear();
        let mut new_keys: Vec<u32> = Vec::new();
        for p in points {
            let k = p.key as usize;
            if !self.defined[k] {
                self.defined[k] = true;
                new_keys.push(p.key);
            }
        }
        self.payload.extend_from_slice(&(new_keys.len() as u32).to_le_bytes());
        for k in new_keys {
            let name = names[k as usize].as_bytes();
            self.payload.extend_from_slice(&k.to_le_bytes());
            self.payload.extend_from_slice(&(name.len() as u16).to_le_bytes());
            self.payload.extend_from_slice(name);
        }
        self.payload.extend_from_slice(&(points.len() as u32).to_le_bytes());
        self.payload.reserve(points.len() * POINT_BYTES);
        for p in points {
            self.payload.extend_from_slice(&p.key.to_le_bytes());
            self.payload.extend_from_slice(&p.step.to_le_bytes());
            self.payload.extend_from_slice(&p.value.to_bits().to_le_bytes());
            self.payload.extend_from_slice(&p.ts.to_le_bytes());
        }
        out.extend_from_slice(BLOCK_MAGIC);
        out.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&checksum(&self.payload).to_le_bytes());
        out.extend_from_slice(&self.payload);
    }
}

fn checksum(payload: &[u8]) -> u64 {
    let hash = blake3::hash(payload);
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// A point read back from a segment, with its key name.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DecodedPoint {
    pub key: std::sync::Arc<str>,
    pub step: u64,
    pub value: f64,
    pub ts: i64,
}

/// What reading one segment found.
#[derive(Debug, Default)]
pub(crate) struct SegmentRead {
    pub points: Vec<DecodedPoint>,
    /// Bytes of complete, valid blocks (a copy of this prefix is a valid segment).
    pub valid_len: u64,
    /// Bytes after the last valid block (a torn write), ignored.
    pub ignored_bytes: u64,
}

/// Reads a whole segment file. A torn or corrupt tail is ignored and counted; a file that is
/// not a segment at all is an error.
pub(crate) fn read_segment(path: &Path) -> Result<SegmentRead> {
    let bytes = std::fs::read(path).at(path)?;
    decode_segment(path, &bytes)
}

pub(crate) fn decode_segment(path: &Path, bytes: &[u8]) -> Result<SegmentRead> {
    let mut out = SegmentRead::default();
    if bytes.len() < FILE_MAGIC.len() && FILE_MAGIC.starts_with(bytes) {
        // A segment whose header write was interrupted holds nothing that was acknowledged.
        out.ignored_bytes = bytes.len() as u64;
        return Ok(out);
    }
    if bytes.len() < FILE_MAGIC.len() || &bytes[..FILE_MAGIC.len()] != FILE_MAGIC {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            line: None,
            message: "not a kiln metric segment (bad magic)".into(),
        });
    }
    let mut names: HashMap<u32, std::sync::Arc<str>> = HashMap::new();
    let mut pos = FILE_MAGIC.len();
    out.valid_len = pos as u64;
    while pos < bytes.len() {
        match decode_block(&bytes[pos..], &mut names, &mut out.points) {
            Some(used) => {
                pos += used;
                out.valid_len = pos as u64;
            }
            None => {
                out.ignored_bytes = (bytes.len() - pos) as u64;
                tracing::warn!(
                    file = %path.display(),
                    offset = pos,
                    bytes = out.ignored_bytes,
                    "ignoring a torn or corrupt tail of a metric segment (an unflushed write)"
                );
                break;
            }
        }
    }
    Ok(out)
}

/// Decodes one block at the start of `bytes`, returning its length, or `None` if it is torn
/// or corrupt (then nothing of it is kept).
fn decode_block(
    bytes: &[u8],
    names: &mut HashMap<u32, std::sync::Arc<str>>,
    points: &mut Vec<DecodedPoint>,
) -> Option<usize> {
    if bytes.len() < BLOCK_HEADER || &bytes[..4] != BLOCK_MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(bytes[4..8].try_into().ok()?) as usize;
    let sum = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
    let payload = bytes.get(BLOCK_HEADER..BLOCK_HEADER + len)?;
    if checksum(payload) != sum {
        return None;
    }
    let mut r = Reader { bytes: payload, pos: 0 };
    let mut new_names = Vec::new();
    for _ in 0..r.u32()? {
        let id = r.u32()?;
        let n = r.u16()? as usize;
        let name = std::str::from_utf8(r.take(n)?).ok()?;
        new_names.push((id, std::sync::Arc::<str>::from(name)));
    }
    names.extend(new_names);
    let n = r.u32()? as usize;
    if r.bytes.len() - r.pos != n * POINT_BYTES {
        return None;
    }
    points.reserve(n);
    for _ in 0..n {
        let key = names.get(&r.u32()?)?.clone();
        let step = r.u64()?;
        let value = f64::from_bits(r.u64()?);
        let ts = r.u64()? as i64;
        points.push(DecodedPoint { key, step, value, ts });
    }
    Some(BLOCK_HEADER + len)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.pos..self.pos + n)?;
        self.pos += n;
        Some(s)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// Segment file name for sequence number `n`.
pub(crate) fn segment_name(n: u32) -> String {
    format!("{n:06}.seg")
}

/// The sequence numbers of the segments in `dir`, sorted.
pub(crate) fn segment_numbers(dir: &Path) -> Result<Vec<u32>> {
    let entries = crate::fsutil::entries_or_empty(dir)?;
    let mut out = Vec::new();
    for entry in entries {
        let name = entry.file_name();
        if let Some(n) = name.to_str().and_then(|n| n.strip_suffix(".seg")).and_then(|n| n.parse().ok()) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn encode(blocks: &[&[RawPoint]], names: &[String]) -> Vec<u8> {
        let mut out = FILE_MAGIC.to_vec();
        let mut enc = BlockEncoder::default();
        for b in blocks {
            enc.encode(names, b, &mut out);
        }
        out
    }

    #[test]
    fn blocks_round_trip_and_keys_are_defined_once_per_segment() {
        let names = vec!["loss".to_string(), "acc".to_string()];
        let a =
            [RawPoint { key: 0, step: 1, value: 0.5, ts: 10 }, RawPoint { key: 1, step: 1, value: f64::NAN, ts: 11 }];
        let b = [RawPoint { key: 0, step: 2, value: f64::INFINITY, ts: 12 }];
        let bytes = encode(&[&a, &b], &names);
        let read = decode_segment(Path::new("x.seg"), &bytes).unwrap();
        assert_eq!(read.points.len(), 3);
        assert_eq!(&*read.points[1].key, "acc");
        assert!(read.points[1].value.is_nan());
        assert_eq!(read.points[2].value, f64::INFINITY);
        assert_eq!(read.valid_len, bytes.len() as u64);
        // The first block defines both keys; the second defines none: two counts and one point.
        let first = 16 + 4 + (4 + 2 + "loss".len()) + (4 + 2 + "acc".len()) + 4 + 2 * 28;
        assert_eq!(bytes.len() - FILE_MAGIC.len(), first + (16 + 4 + 4 + 28));
    }

    #[test]
    fn every_truncation_keeps_exactly_the_complete_blocks() {
        let names = vec!["loss".to_string()];
        let a = [RawPoint { key: 0, step: 1, value: 0.5, ts: 10 }];
        let b = [RawPoint { key: 0, step: 2, value: 0.25, ts: 11 }];
        let bytes = encode(&[&a, &b], &names);
        let first_end = encode(&[&a], &names).len();
        for cut in 0..bytes.len() {
            let read = decode_segment(Path::new("x.seg"), &bytes[..cut]).unwrap();
            let expect = if cut >= first_end { 1 } else { 0 };
            assert_eq!(read.points.len(), expect, "cut at {cut}");
            assert_eq!(read.valid_len + read.ignored_bytes, cut as u64, "cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_bit_in_the_last_block_is_detected() {
        let names = vec!["loss".to_string()];
        let a = [RawPoint { key: 0, step: 1, value: 0.5, ts: 10 }];
        let b = [RawPoint { key: 0, step: 2, value: 0.25, ts: 11 }];
        let mut bytes = encode(&[&a, &b], &names);
        let last = bytes.len() - 3;
        bytes[last] ^= 0x10;
        let read = decode_segment(Path::new("x.seg"), &bytes).unwrap();
        assert_eq!(read.points.len(), 1);
        assert!(read.ignored_bytes > 0);
        assert!(decode_segment(Path::new("x.seg"), b"NOTASEGMENTFILE").is_err());
    }
}
