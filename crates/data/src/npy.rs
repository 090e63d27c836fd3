//! NumPy arrays on disk as training data: [`NpyArray`] reads a `.npy` file (memory-mapped) or
//! an `.npz` archive member ([`Npz`]) item by item along its first axis, and [`NpySource`] /
//! [`NpyPair`] make one array, or an inputs array with a labels array, a [`Source`].
//!
//! Memory stays bounded: a `.npy` file and an uncompressed `.npz` member are mapped, so only the
//! pages of the items read are in memory (the OS evicts them under pressure); a compressed
//! `.npz` member is inflated once, when the archive member is opened.
//!
//! The file format is NumPy's (`numpy.lib.format`, versions 1 to 3): C order only, a
//! little- or big-endian `bool`, `u1`…`u8`, `i1`…`i8`, `f2`, `f4` or `f8`, any rank (the first
//! axis is the item). An item is decoded into an [`ndarray::ArrayD`] of the element type the
//! caller asks for ([`Element`]): the file's own type, or a wider one it converts to exactly
//! (`u8` to `f32`, say); a narrowing request is an error naming the file and both types.
//!
//! ```no_run
//! use kiln_data::npy::{NpyArray, NpyPair};
//! use kiln_data::{Loader, Source};
//!
//! # fn main() -> kiln_data::Result<()> {
//! let x = NpyArray::open("pcam_x.npy")?; // uint8 [N, 96, 96, 3]
//! let y = NpyArray::open("pcam_y.npy")?; // uint8 [N]
//! let patches = NpyPair::<f32, u8>::new(x, y)?;
//! let (image, label) = patches.get(0, &mut kiln_data::SplitMix64::new(0))?;
//! assert_eq!(image.shape(), [96, 96, 3]);
//! for batch in Loader::new(patches, 64).workers(2).epoch(7, 1, 0) {
//!     let batch = batch?;
//!     // collate batch.items into tensors
//! }
//! # let _ = label;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{ArrayD, IxDyn};

use crate::source::Source;
use crate::{Error, Result, SplitMix64};

/// The element types of a `.npy` file kiln reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// `bool` (`|b1`), one byte, 0 or 1.
    Bool,
    /// `uint8` (`|u1`).
    U8,
    /// `uint16` (`u2`).
    U16,
    /// `uint32` (`u4`).
    U32,
    /// `uint64` (`u8`).
    U64,
    /// `int8` (`|i1`).
    I8,
    /// `int16` (`i2`).
    I16,
    /// `int32` (`i4`).
    I32,
    /// `int64` (`i8`).
    I64,
    /// `float16` (`f2`).
    F16,
    /// `float32` (`f4`).
    F32,
    /// `float64` (`f8`).
    F64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::Bool | Self::U8 | Self::I8 => 1,
            Self::U16 | Self::I16 | Self::F16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 => 8,
        }
    }

    /// NumPy's name (`uint8`, `float32`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Bool => "bool",
            Self::U8 => "uint8",
            Self::U16 => "uint16",
            Self::U32 => "uint32",
            Self::U64 => "uint64",
            Self::I8 => "int8",
            Self::I16 => "int16",
            Self::I32 => "int32",
            Self::I64 => "int64",
            Self::F16 => "float16",
            Self::F32 => "float32",
            Self::F64 => "float64",
        }
    }

    /// Parses a `descr` such as `<f4` or `|u1` (or `f4`, native order): the type and whether
    /// it is big-endian.
    fn parse(descr: &str) -> Option<(Self, bool)> {
        let (big, code) = match descr.split_at_checked(1)? {
            ("<" | "|", code) => (false, code),
            (">", code) => (true, code),
            ("=", code) => (cfg!(target_endian = "big"), code),
            _ => (cfg!(target_endian = "big"), descr),
        };
        let dtype = match code {
            "b1" => Self::Bool,
            "u1" => Self::U8,
            "u2" => Self::U16,
            "u4" => Self::U32,
            "u8" => Self::U64,
            "i1" => Self::I8,
            "i2" => Self::I16,
            "i4" => Self::I32,
            "i8" => Self::I64,
            "f2" => Self::F16,
            "f4" => Self::F32,
            "f8" => Self::F64,
            _ => return None,
        };
        Some((dtype, big && dtype.size() > 1))
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An element type items decode into.
pub trait Element: Copy + Default + Send + Sync + 'static {
    /// The [`DType`] of this type.
    const DTYPE: DType;
    /// Whether values of `from` convert to this type exactly.
    fn accepts(from: DType) -> bool;
    /// Converts one element of type `from` from its bytes (in file order, `big` if
    /// big-endian). Called only for types [`Element::accepts`].
    fn decode(from: DType, bytes: &[u8], big: bool) -> Self;

    /// Converts a run of elements of type `from` (`bytes.len()` a multiple of its size) onto
    /// `out`. The default converts one at a time; the common cases (the same type, `u8` to a
    /// float) are overridden with loops the compiler vectorises.
    fn decode_all(from: DType, bytes: &[u8], big: bool, out: &mut Vec<Self>) {
        out.extend(bytes.chunks_exact(from.size()).map(|b| Self::decode(from, b, big)));
    }
}

/// The bytes of one element as a fixed array, in little-endian order.
fn le<const N: usize>(bytes: &[u8], big: bool) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&bytes[..N]);
    if big {
        a.reverse();
    }
    a
}

/// One element of any supported type as f64 (exact for every type but 64-bit integers above
/// 2^53, which no [`Element`] accepts into a float).
fn as_f64(from: DType, bytes: &[u8], big: bool) -> f64 {
    match from {
        DType::Bool | DType::U8 => f64::from(bytes[0]),
        DType::I8 => f64::from(bytes[0] as i8),
        DType::U16 => f64::from(u16::from_le_bytes(le(bytes, big))),
        DType::I16 => f64::from(i16::from_le_bytes(le(bytes, big))),
        DType::U32 => f64::from(u32::from_le_bytes(le(bytes, big))),
        DType::I32 => f64::from(i32::from_le_bytes(le(bytes, big))),
        DType::U64 => u64::from_le_bytes(le(bytes, big)) as f64,
        DType::I64 => i64::from_le_bytes(le(bytes, big)) as f64,
        DType::F16 => f64::from(half_to_f32(u16::from_le_bytes(le(bytes, big)))),
        DType::F32 => f64::from(f32::from_le_bytes(le(bytes, big))),
        DType::F64 => f64::from_le_bytes(le(bytes, big)),
    }
}

/// IEEE half precision to f32 (exact).
fn half_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: normalise.
            let shift = f.leading_zeros() - 21;
            sign | ((127 - 15 + 1 - shift) << 23) | (((f << shift) & 0x3ff) << 13)
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

impl Element for u8 {
    const DTYPE: DType = DType::U8;
    fn accepts(from: DType) -> bool {
        matches!(from, DType::U8 | DType::Bool)
    }
    fn decode(_: DType, bytes: &[u8], _: bool) -> Self {
        bytes[0]
    }
    fn decode_all(_: DType, bytes: &[u8], _: bool, out: &mut Vec<Self>) {
        out.extend_from_slice(bytes);
    }
}

impl Element for i64 {
    const DTYPE: DType = DType::I64;
    fn accepts(from: DType) -> bool {
        matches!(
            from,
            DType::Bool | DType::U8 | DType::U16 | DType::U32 | DType::I8 | DType::I16 | DType::I32 | DType::I64
        )
    }
    fn decode(from: DType, bytes: &[u8], big: bool) -> Self {
        match from {
            DType::I64 => i64::from_le_bytes(le(bytes, big)),
            other => as_f64(other, bytes, big) as i64, // exact below 2^53, which covers u32
        }
    }
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn accepts(from: DType) -> bool {
        matches!(from, DType::Bool | DType::U8 | DType::U16 | DType::I8 | DType::I16 | DType::F16 | DType::F32)
    }
    fn decode(from: DType, bytes: &[u8], big: bool) -> Self {
        match from {
            DType::F32 => f32::from_le_bytes(le(bytes, big)),
            DType::F16 => half_to_f32(u16::from_le_bytes(le(bytes, big))),
            other => as_f64(other, bytes, big) as f32, // exact for the accepted types
        }
    }
    fn decode_all(from: DType, bytes: &[u8], big: bool, out: &mut Vec<Self>) {
        match from {
            DType::U8 => out.extend(bytes.iter().map(|b| f32::from(*b))),
            DType::F32 if !big => {
                out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
            }
            _ => out.extend(bytes.chunks_exact(from.size()).map(|b| Self::decode(from, b, big))),
        }
    }
}

impl Element for f64 {
    const DTYPE: DType = DType::F64;
    fn accepts(from: DType) -> bool {
        !matches!(from, DType::U64 | DType::I64)
    }
    fn decode(from: DType, bytes: &[u8], big: bool) -> Self {
        as_f64(from, bytes, big)
    }
    fn decode_all(from: DType, bytes: &[u8], big: bool, out: &mut Vec<Self>) {
        match from {
            DType::U8 => out.extend(bytes.iter().map(|b| f64::from(*b))),
            _ => out.extend(bytes.chunks_exact(from.size()).map(|b| Self::decode(from, b, big))),
        }
    }
}

/// Where an array's bytes live.
enum Bytes {
    /// A memory-mapped file (a `.npy`, or an `.npz` with the member's offset).
    Mapped(memmap2::Mmap),
    /// Bytes in memory (an inflated `.npz` member).
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Owned(v) => v,
        }
    }
}

/// Maps `file` read-only.
#[allow(unsafe_code)]
fn map(file: &File, path: &Path) -> Result<memmap2::Mmap> {
    // SAFETY: kiln never writes through the map, and reads it only as bytes it copies out
    // (every read is bounds-checked against the length mapped). The map is shared with the
    // file: the caller must not let the file be modified or truncated while it is open (the
    // documented requirement of `NpyArray::open` and `Npz::open`, the same as NumPy's
    // mmap_mode="r"); a truncation would end the process with SIGBUS on the next read.
    unsafe { memmap2::Mmap::map(file) }.map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

/// One NumPy array, read item by item along its first axis: see the [module docs](self).
pub struct NpyArray {
    name: String,
    bytes: Arc<Bytes>,
    /// Where the data starts in `bytes`.
    offset: usize,
    dtype: DType,
    big_endian: bool,
    shape: Vec<usize>,
    /// Bytes per item (product of the shape after the first axis, times the element size).
    item_bytes: usize,
    /// The file's identity: path, size and modification time (or the archive's and member's).
    identity: String,
}

impl std::fmt::Debug for NpyArray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NpyArray")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .finish()
    }
}

fn bad(name: &str, message: impl Into<String>) -> Error {
    Error::InvalidArgument(format!("{name}: {}", message.into()))
}

/// `text` quoted, cut to 200 characters for an error message.
fn clip(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{:?}…", &text[..at]),
        None => format!("{text:?}"),
    }
}

/// File identity for fingerprints: path, size and modification time in nanoseconds.
fn file_identity(path: &Path) -> Result<String> {
    let stat = crate::version::stat(path)?;
    Ok(format!("{}:{}:{}", path.display(), stat.size, stat.mtime_ns))
}

impl NpyArray {
    /// Opens a `.npy` file, memory-mapped. A malformed header, Fortran order, an unsupported
    /// type or a file shorter than its shape says is an error naming the file and the field.
    ///
    /// The file must not be modified or truncated while the array is open (write a new file
    /// and rename it over the old one instead): a truncated map ends the process with SIGBUS,
    /// as with NumPy's `mmap_mode="r"`. [`NpyArray::read`] copies the file into memory instead.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let identity = file_identity(path)?;
        let bytes = Bytes::Mapped(map(&file, path)?);
        let end = bytes.as_slice().len();
        Self::parse(path.display().to_string(), Arc::new(bytes), 0, end, identity)
    }

    /// Reads a `.npy` file into memory (no map: for files that may change while read, and
    /// for file systems that do not map well).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let identity = file_identity(path)?;
        let end = bytes.len();
        Self::parse(path.display().to_string(), Arc::new(Bytes::Owned(bytes)), 0, end, identity)
    }

    /// Reads an array from `.npy` bytes in memory; `name` stands for them in errors.
    pub fn from_bytes(name: impl Into<String>, bytes: Vec<u8>) -> Result<Self> {
        let name = name.into();
        let identity = format!("{name}:{}", blake3::hash(&bytes).to_hex());
        let end = bytes.len();
        Self::parse(name, Arc::new(Bytes::Owned(bytes)), 0, end, identity)
    }

    /// Parses the array in `start..end` of `bytes` (a whole `.npy`, or an `.npz` member).
    fn parse(name: String, bytes: Arc<Bytes>, start: usize, end: usize, identity: String) -> Result<Self> {
        let data = bytes.as_slice().get(start..end).unwrap_or_default();
        if data.len() < 10 || &data[..6] != b"\x93NUMPY" {
            return Err(bad(&name, "not a NumPy .npy file (the magic string \\x93NUMPY is missing)"));
        }
        let (major, minor) = (data[6], data[7]);
        let (header_len, header_start): (usize, usize) = match (major, minor) {
            (1, 0) => (usize::from(u16::from_le_bytes([data[8], data[9]])), 10),
            (2 | 3, 0) => match data.get(8..12) {
                Some(b) => (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12),
                None => return Err(bad(&name, "truncated: the file ends inside the header length")),
            },
            _ => {
                return Err(bad(
                    &name,
                    format!("format version {major}.{minor} is not supported (1.0, 2.0 and 3.0 are)"),
                ));
            }
        };
        let header = header_start
            .checked_add(header_len)
            .and_then(|end| data.get(header_start..end))
            .ok_or_else(|| bad(&name, format!("truncated: the header says {header_len} bytes, the file ends first")))?;
        // Versions 1 and 2 are latin-1, version 3 UTF-8; the fields kiln reads are ASCII.
        let header = String::from_utf8_lossy(header);
        let dict = parse_header(&header).map_err(|m| bad(&name, format!("header {}: {m}", clip(&header))))?;
        let descr = dict.descr.ok_or_else(|| bad(&name, "header field 'descr' is missing"))?;
        let (dtype, big_endian) = DType::parse(&descr).ok_or_else(|| {
            bad(
                &name,
                format!(
                    "header field 'descr' is {descr:?}: unsupported type (kiln reads bool, u1-u8, i1-i8, f2, f4 and f8; not structured, complex, string or object arrays)"
                ),
            )
        })?;
        if dict.fortran_order.ok_or_else(|| bad(&name, "header field 'fortran_order' is missing"))? {
            return Err(bad(
                &name,
                "header field 'fortran_order' is True: kiln reads C-order arrays (save with np.ascontiguousarray(a))",
            ));
        }
        let shape = dict.shape.ok_or_else(|| bad(&name, "header field 'shape' is missing"))?;
        if shape.is_empty() {
            return Err(bad(&name, "header field 'shape' is (): a scalar has no items along a first axis"));
        }
        let item_elems = shape[1..].iter().try_fold(1usize, |a, d| a.checked_mul(*d));
        let item_bytes = item_elems.and_then(|n| n.checked_mul(dtype.size()));
        let total = item_bytes.and_then(|b| b.checked_mul(shape[0]));
        let (Some(item_bytes), Some(total)) = (item_bytes, total) else {
            return Err(bad(&name, format!("header field 'shape' {shape:?} overflows the address space")));
        };
        let offset = start + header_start + header_len;
        let have = end.saturating_sub(offset);
        if have < total {
            return Err(bad(
                &name,
                format!("truncated: shape {shape:?} of {} needs {total} data bytes, the file has {have}", dtype.name()),
            ));
        }
        Ok(Self { name, bytes, offset, dtype, big_endian, shape, item_bytes, identity })
    }

    /// The name used in errors (the path, or the archive and member).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The element type in the file.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The full shape; the first axis is the item.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Items (the first axis).
    pub fn len(&self) -> usize {
        self.shape[0]
    }

    /// Whether the first axis is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape of one item (the shape after the first axis).
    pub fn item_shape(&self) -> &[usize] {
        &self.shape[1..]
    }

    /// Checks that items can decode into `T`, naming the file and both types if not.
    pub fn check<T: Element>(&self) -> Result<()> {
        if T::accepts(self.dtype) {
            return Ok(());
        }
        let takers: Vec<&str> = [
            (u8::accepts(self.dtype), "u8"),
            (i64::accepts(self.dtype), "i64"),
            (f32::accepts(self.dtype), "f32"),
            (f64::accepts(self.dtype), "f64"),
        ]
        .into_iter()
        .filter_map(|(ok, name)| ok.then_some(name))
        .collect();
        let hint = if takers.is_empty() {
            "no element type holds it exactly; read its bytes with item_bytes".to_string()
        } else {
            format!("ask for {}", takers.join(" or "))
        };
        Err(bad(&self.name, format!("holds {}, which does not convert exactly to {} ({hint})", self.dtype, T::DTYPE)))
    }

    /// The raw bytes of item `index`, in the file's byte order.
    pub fn item_bytes(&self, index: usize) -> Result<&[u8]> {
        if index >= self.len() {
            return Err(Error::Item {
                source_name: self.name.clone(),
                index,
                message: format!("out of range: the array has {} items", self.len()),
            });
        }
        let start = self.offset + index * self.item_bytes;
        Ok(&self.bytes.as_slice()[start..start + self.item_bytes])
    }

    /// Item `index` as an array of `T` with [`NpyArray::item_shape`].
    pub fn item<T: Element>(&self, index: usize) -> Result<ArrayD<T>> {
        self.check::<T>()?;
        let raw = self.item_bytes(index)?;
        let mut values: Vec<T> = Vec::with_capacity(raw.len() / self.dtype.size());
        T::decode_all(self.dtype, raw, self.big_endian, &mut values);
        ArrayD::from_shape_vec(IxDyn(self.item_shape()), values).map_err(|e| Error::Item {
            source_name: self.name.clone(),
            index,
            message: e.to_string(),
        })
    }

    /// Item `index` as one value (an array of shape `[N]` or `[N, 1, ..., 1]`, such as
    /// labels).
    pub fn scalar<T: Element>(&self, index: usize) -> Result<T> {
        if self.item_shape().iter().product::<usize>() != 1 {
            return Err(bad(&self.name, format!("items of shape {:?} are not single values", self.item_shape())));
        }
        self.check::<T>()?;
        let raw = self.item_bytes(index)?;
        Ok(T::decode(self.dtype, raw, self.big_endian))
    }

    /// A cheap identity: the file's path, size and modification time (or the member's hash
    /// for bytes in memory), with dtype and shape.
    pub fn fingerprint(&self) -> String {
        format!("npy:{}:{}:{:?}", self.identity, self.dtype, self.shape)
    }
}

/// The fields of a `.npy` header that kiln reads.
#[derive(Debug, Default)]
struct Header {
    descr: Option<String>,
    fortran_order: Option<bool>,
    shape: Option<Vec<usize>>,
}

/// Parses the header's Python dict literal: `{'descr': '<f4', 'fortran_order': False,
/// 'shape': (3, 4), }`.
fn parse_header(text: &str) -> std::result::Result<Header, String> {
    let body = text.trim().strip_prefix('{').and_then(|t| t.strip_suffix('}')).ok_or("not a dict literal")?;
    let mut header = Header::default();
    let mut rest = body.trim_start();
    while !rest.is_empty() {
        let (key, after) = quoted(rest).ok_or_else(|| format!("expected a quoted key at {}", clip(rest)))?;
        let after = after.trim_start().strip_prefix(':').ok_or_else(|| format!("expected ':' after '{key}'"))?;
        let after = after.trim_start();
        rest = match key.as_str() {
            "descr" => {
                let (value, after) = quoted(after).ok_or_else(|| {
                    format!("'descr' is not a quoted type string (structured types are not supported): {}", clip(after))
                })?;
                header.descr = Some(value);
                after
            }
            "fortran_order" => {
                let (value, after) = if let Some(a) = after.strip_prefix("True") {
                    (true, a)
                } else if let Some(a) = after.strip_prefix("False") {
                    (false, a)
                } else {
                    return Err(format!("'fortran_order' is not True or False: {}", clip(after)));
                };
                header.fortran_order = Some(value);
                after
            }
            "shape" => {
                let inner = after.strip_prefix('(').ok_or("'shape' is not a tuple")?;
                let end = inner.find(')').ok_or("'shape' has no closing parenthesis")?;
                let dims = inner[..end]
                    .split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(|d| {
                        d.trim_end_matches('L').parse::<usize>().map_err(|_| format!("'shape' has a dimension {d:?}"))
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                header.shape = Some(dims);
                &inner[end + 1..]
            }
            other => return Err(format!("unknown field '{other}'")),
        };
        rest = rest.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Ok(header)
}

/// A string in single or double quotes at the start of `text`, and what follows it.
fn quoted(text: &str) -> Option<(String, &str)> {
    let quote = text.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let inner = &text[1..];
    let end = inner.find(quote)?;
    Some((inner[..end].to_string(), &inner[end + 1..]))
}

/// One array as a [`Source`] of its items, decoded as `T`.
#[derive(Debug)]
pub struct NpySource<T> {
    array: NpyArray,
    element: PhantomData<fn() -> T>,
}

impl<T: Element> NpySource<T> {
    /// The items of `array` as `T` (refused now if the file's type does not convert exactly).
    pub fn new(array: NpyArray) -> Result<Self> {
        array.check::<T>()?;
        Ok(Self { array, element: PhantomData })
    }

    /// The array.
    pub fn array(&self) -> &NpyArray {
        &self.array
    }
}

impl<T: Element> Source for NpySource<T> {
    type Item = ArrayD<T>;

    fn name(&self) -> String {
        self.array.name.clone()
    }

    fn len(&self) -> usize {
        self.array.len()
    }

    fn get(&self, index: usize, _rng: &mut SplitMix64) -> Result<ArrayD<T>> {
        self.array.item(index)
    }

    fn fingerprint(&self) -> Result<String> {
        Ok(self.array.fingerprint())
    }
}

/// Inputs and labels in two arrays of the same length, as a [`Source`] of
/// `(input as ArrayD<X>, label as Y)` pairs. Labels are one value per item (shape `[N]`, or
/// `[N, 1, …, 1]` as PCAM's `y`).
#[derive(Debug)]
pub struct NpyPair<X, Y> {
    inputs: NpyArray,
    labels: NpyArray,
    element: PhantomData<fn() -> (X, Y)>,
}

impl<X: Element, Y: Element> NpyPair<X, Y> {
    /// Pairs `inputs` with `labels`: their lengths must agree, the labels must be single values,
    /// and both types must convert exactly (each refused with the file named).
    pub fn new(inputs: NpyArray, labels: NpyArray) -> Result<Self> {
        if inputs.len() != labels.len() {
            return Err(bad(
                &labels.name,
                format!("{} labels for the {} items of {}", labels.len(), inputs.len(), inputs.name),
            ));
        }
        if labels.item_shape().iter().product::<usize>() != 1 {
            return Err(bad(&labels.name, format!("labels of shape {:?} are not one value per item", labels.shape())));
        }
        inputs.check::<X>()?;
        labels.check::<Y>()?;
        Ok(Self { inputs, labels, element: PhantomData })
    }

    /// The inputs.
    pub fn inputs(&self) -> &NpyArray {
        &self.inputs
    }

    /// The labels.
    pub fn labels(&self) -> &NpyArray {
        &self.labels
    }
}

impl<X: Element, Y: Element> Source for NpyPair<X, Y> {
    type Item = (ArrayD<X>, Y);

    fn name(&self) -> String {
        self.inputs.name.clone()
    }

    fn len(&self) -> usize {
        self.inputs.len()
    }

    fn get(&self, index: usize, _rng: &mut SplitMix64) -> Result<(ArrayD<X>, Y)> {
        Ok((self.inputs.item(index)?, self.labels.scalar(index)?))
    }

    fn fingerprint(&self) -> Result<String> {
        Ok(format!("{}+{}", self.inputs.fingerprint(), self.labels.fingerprint()))
    }
}

/// An `.npz` archive (`np.savez`, `np.savez_compressed`): its members by name (without
/// `.npy`). Uncompressed members are mapped from the archive; compressed ones are inflated
/// when opened.
pub struct Npz {
    path: PathBuf,
    bytes: Arc<Bytes>,
    identity: String,
    members: BTreeMap<String, Member>,
}

impl std::fmt::Debug for Npz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Npz").field("path", &self.path).field("members", &self.members.keys()).finish()
    }
}

#[derive(Debug, Clone, Copy)]
struct Member {
    /// Offset of the member's local file header.
    header: usize,
    compressed: usize,
    size: usize,
    /// 0 stored, 8 deflated.
    method: u16,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

impl Npz {
    /// Opens an archive and reads its directory (ZIP, with ZIP64 for large members as NumPy
    /// writes them).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        let identity = file_identity(&path)?;
        let bytes = Arc::new(Bytes::Mapped(map(&file, &path)?));
        let name = path.display().to_string();
        let members = directory(bytes.as_slice()).map_err(|m| bad(&name, format!("not a readable .npz: {m}")))?;
        Ok(Self { path, bytes, identity, members })
    }

    /// Reads an archive from bytes in memory; `name` stands for them in errors.
    pub fn from_bytes(name: impl Into<String>, bytes: Vec<u8>) -> Result<Self> {
        let name = name.into();
        let identity = format!("{name}:{}", blake3::hash(&bytes).to_hex());
        let bytes = Arc::new(Bytes::Owned(bytes));
        let members = directory(bytes.as_slice()).map_err(|m| bad(&name, format!("not a readable .npz: {m}")))?;
        Ok(Self { path: PathBuf::from(name), bytes, identity, members })
    }

    /// The member names (without `.npy`), sorted.
    pub fn names(&self) -> Vec<&str> {
        self.members.keys().map(String::as_str).collect()
    }

    /// The member `name` (`x` for `x.npy`) as an array.
    pub fn array(&self, name: &str) -> Result<NpyArray> {
        let label = format!("{}[{name}]", self.path.display());
        let member = self.members.get(name).ok_or_else(|| {
            bad(&self.path.display().to_string(), format!("no member {name:?} (it has {:?})", self.names()))
        })?;
        let all = self.bytes.as_slice();
        let local = member.header;
        if u32_at(all, local) != Some(0x0403_4b50) {
            return Err(bad(&label, "the member's local header is damaged"));
        }
        let (name_len, extra_len) = (u16_at(all, local.saturating_add(26)), u16_at(all, local.saturating_add(28)));
        let (Some(name_len), Some(extra_len)) = (name_len, extra_len) else {
            return Err(bad(&label, "truncated member header"));
        };
        let start = local.saturating_add(30 + usize::from(name_len) + usize::from(extra_len));
        let end = start.checked_add(member.compressed).filter(|e| *e <= all.len());
        let Some(end) = end else {
            return Err(bad(
                &label,
                format!("truncated: the member's {} bytes run past the archive's end", member.compressed),
            ));
        };
        let identity = format!("{}:{name}", self.identity);
        match member.method {
            0 => NpyArray::parse(label, Arc::clone(&self.bytes), start, end, identity),
            8 => {
                let mut out = Vec::new();
                out.try_reserve_exact(member.size).map_err(|_| {
                    bad(
                        &label,
                        format!("the member inflates to {} bytes, more than this machine can hold", member.size),
                    )
                })?;
                // One byte more than the directory says, to notice a member that inflates further.
                flate2::read::DeflateDecoder::new(&all[start..end])
                    .take(member.size as u64 + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| bad(&label, format!("cannot inflate the member: {e}")))?;
                if out.len() != member.size {
                    return Err(bad(
                        &label,
                        format!("inflated to {} bytes, the directory says {}", out.len(), member.size),
                    ));
                }
                let len = out.len();
                NpyArray::parse(label, Arc::new(Bytes::Owned(out)), 0, len, identity)
            }
            m => Err(bad(&label, format!("compression method {m} is not supported (stored and deflate are)"))),
        }
    }
}

/// The archive's central directory: `.npy` members by name without the extension.
fn directory(b: &[u8]) -> std::result::Result<BTreeMap<String, Member>, String> {
    // The end-of-central-directory record is in the last 22 + 65535 bytes.
    let floor = b.len().saturating_sub(22 + 65_535);
    let eocd = (floor..b.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(b, i) == Some(0x0605_4b50))
        .ok_or("no end-of-central-directory record (not a ZIP archive, or truncated)")?;
    let mut count = u64::from(u16_at(b, eocd + 10).ok_or("truncated directory record")?);
    let mut offset = u64::from(u32_at(b, eocd + 16).ok_or("truncated directory record")?);
    // ZIP64: the locator sits right before the record (a count of exactly 0xffff may also be
    // a plain archive of that many members, without one).
    let locator = eocd.checked_sub(20).filter(|l| u32_at(b, *l) == Some(0x0706_4b50));
    if let Some(locator) = locator.filter(|_| count == 0xffff || offset == 0xffff_ffff) {
        let record = u64_at(b, locator + 8).ok_or("truncated ZIP64 locator")?;
        let record = usize::try_from(record).map_err(|_| "ZIP64 record offset out of range")?;
        if u32_at(b, record) != Some(0x0606_4b50) {
            return Err("ZIP64 directory record missing".into());
        }
        count = u64_at(b, record + 32).ok_or("truncated ZIP64 record")?;
        offset = u64_at(b, record + 48).ok_or("truncated ZIP64 record")?;
    }
    let mut at = usize::try_from(offset).map_err(|_| "directory offset out of range")?;
    let mut members = BTreeMap::new();
    for _ in 0..count {
        if u32_at(b, at) != Some(0x0201_4b50) {
            return Err(format!("damaged directory entry at byte {at}"));
        }
        let field = |o: usize| u16_at(b, at + o).ok_or("truncated directory entry");
        let method = field(10)?;
        let (name_len, extra_len, comment_len) =
            (usize::from(field(28)?), usize::from(field(30)?), usize::from(field(32)?));
        let word = |o: usize| u32_at(b, at + o).ok_or("truncated directory entry");
        let (mut compressed, mut size, mut header) = (u64::from(word(20)?), u64::from(word(24)?), u64::from(word(42)?));
        let name_start = at.checked_add(46).ok_or("directory entry offset out of range")?;
        let name_bytes = b.get(name_start..name_start + name_len).ok_or("truncated member name")?;
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        // ZIP64 extra field: the values that overflowed, in order size, compressed, offset.
        let extra_start = name_start + name_len;
        let mut extra = b.get(extra_start..extra_start + extra_len).ok_or("truncated extra field")?;
        while extra.len() >= 4 {
            let (id, len) = (u16_at(extra, 0).unwrap_or(0), usize::from(u16_at(extra, 2).unwrap_or(0)));
            let data = extra.get(4..4 + len).ok_or("truncated extra field")?;
            if id == 1 {
                let mut values = data.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()));
                if size == 0xffff_ffff {
                    size = values.next().ok_or("ZIP64 size missing")?;
                }
                if compressed == 0xffff_ffff {
                    compressed = values.next().ok_or("ZIP64 compressed size missing")?;
                }
                if header == 0xffff_ffff {
                    header = values.next().ok_or("ZIP64 offset missing")?;
                }
            }
            extra = &extra[(4 + len).min(extra.len())..];
        }
        let usize_of = |v: u64| usize::try_from(v).map_err(|_| format!("member {name} is too large for this machine"));
        if let Some(stem) = name.strip_suffix(".npy") {
            members.insert(
                stem.to_string(),
                Member { header: usize_of(header)?, compressed: usize_of(compressed)?, size: usize_of(size)?, method },
            );
        }
        at = extra_start + extra_len + comment_len;
    }
    Ok(members)
}
