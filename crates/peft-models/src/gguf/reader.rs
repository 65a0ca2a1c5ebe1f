//! GGUF v2/v3 container: header, metadata, tensor table and alignment.
//!
//! The layout (little-endian): magic `GGUF`, `u32` version, `u64` tensor count, `u64` metadata
//! count, the metadata key/value pairs, the tensor table (name, dims in ggml order — innermost
//! first —, type, offset relative to the data section), padding to `general.alignment`
//! (default 32), then the tensor data.
//!
//! Every length read from the file is checked against the bytes that remain before anything is
//! allocated, so a crafted header cannot make the reader allocate more than the file justifies.

use std::{
    collections::BTreeMap,
    fmt,
    io::{Read, Seek, SeekFrom},
};

use super::types::GgmlType;

/// Why a GGUF file could not be read.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("{what} (at byte {offset})")]
pub struct GgufError {
    /// What is wrong, naming the metadata key or tensor where known.
    pub what: String,
    /// Byte offset in the file where the problem was found.
    pub offset: u64,
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// `uint8`
    U8(u8),
    /// `int8`
    I8(i8),
    /// `uint16`
    U16(u16),
    /// `int16`
    I16(i16),
    /// `uint32`
    U32(u32),
    /// `int32`
    I32(i32),
    /// `float32`
    F32(f32),
    /// `bool`
    Bool(bool),
    /// UTF-8 `string`
    String(String),
    /// `uint64`
    U64(u64),
    /// `int64`
    I64(i64),
    /// `float64`
    F64(f64),
    /// Homogeneous `array`
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string slice.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "u8",
            Self::I8(_) => "i8",
            Self::U16(_) => "u16",
            Self::I16(_) => "i16",
            Self::U32(_) => "u32",
            Self::I32(_) => "i32",
            Self::F32(_) => "f32",
            Self::Bool(_) => "bool",
            Self::String(_) => "string",
            Self::U64(_) => "u64",
            Self::I64(_) => "i64",
            Self::F64(_) => "f64",
            Self::Array(_) => "array",
        }
    }
}

impl fmt::Display for MetaValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::String(s) if s.len() > 60 => write!(f, "{:?}…", &s[..s.floor_char_boundary(60)]),
            Self::String(s) => write!(f, "{s:?}"),
            Self::Array(a) => write!(
                f,
                "[{} × {}]",
                a.len(),
                a.first().map_or("?", |v| v.type_name())
            ),
            Self::F32(v) => write!(f, "{v}"),
            Self::F64(v) => write!(f, "{v}"),
            Self::Bool(v) => write!(f, "{v}"),
            other => write!(
                f,
                "{}",
                other
                    .as_u64()
                    .map_or_else(|| format!("{other:?}"), |v| v.to_string())
            ),
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in ggml order (innermost, contiguous dimension first).
    pub dims: Vec<u64>,
    /// Storage type.
    pub ty: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Size of the data in bytes.
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn num_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Row-major shape (outermost first), the reverse of the ggml order.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// The parsed header of a GGUF file: everything but the tensor data.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata, sorted by key.
    pub metadata: BTreeMap<String, MetaValue>,
    /// Tensor table in file order.
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// Alignment of the data section and tensor offsets.
    pub alignment: u64,
}

/// Longest key or string accepted (llama.cpp's files stay far below it).
const MAX_STRING: u64 = 1 << 30;
/// Deepest nesting of arrays accepted.
const MAX_DEPTH: usize = 4;
/// Most dimensions of a tensor (ggml's `GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;

struct Cursor<R> {
    inner: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Cursor<R> {
    fn err(&self, what: impl Into<String>) -> GgufError {
        GgufError {
            what: what.into(),
            offset: self.pos,
        }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut buf = [0u8; N];
        if self.remaining() < N as u64 {
            return Err(self.err(format!("file ends inside {what}")));
        }
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| self.err(format!("reading {what}: {e}")))?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        self.bytes::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        self.bytes::<8>(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        if len > MAX_STRING || len > self.remaining() {
            return Err(self.err(format!(
                "{what}: string of {len} bytes but only {} remain",
                self.remaining()
            )));
        }
        let mut buf = vec![0u8; len as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| self.err(format!("reading {what}: {e}")))?;
        let at = self.pos;
        self.pos += len;
        String::from_utf8(buf).map_err(|_| GgufError {
            what: format!("{what}: string is not UTF-8"),
            offset: at,
        })
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<MetaValue, GgufError> {
        Ok(match ty {
            0 => MetaValue::U8(self.bytes::<1>(key)?[0]),
            1 => MetaValue::I8(self.bytes::<1>(key)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.bytes(key)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.bytes(key)?)),
            4 => MetaValue::U32(self.u32(key)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.bytes(key)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.bytes(key)?)),
            7 => match self.bytes::<1>(key)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(self.err(format!("metadata `{key}`: invalid bool byte {b}"))),
            },
            8 => MetaValue::String(self.string(key)?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(self.err(format!("metadata `{key}`: arrays nested too deep")));
                }
                let elem = self.u32(key)?;
                let count = self.u64(key)?;
                let min_size = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8..=12 => 8,
                    _ => {
                        return Err(self.err(format!(
                            "metadata `{key}`: unknown array element type {elem}"
                        )));
                    }
                };
                if count
                    .checked_mul(min_size)
                    .is_none_or(|n| n > self.remaining())
                {
                    return Err(self.err(format!(
                        "metadata `{key}`: array of {count} elements does not fit in the {} bytes left",
                        self.remaining()
                    )));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(key)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.bytes(key)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.bytes(key)?)),
            other => {
                return Err(self.err(format!("metadata `{key}`: unknown value type {other}")));
            }
        })
    }
}

impl GgufHeader {
    /// Parses the header of a GGUF stream of `len` bytes, leaving the tensor data unread.
    pub fn read<R: Read>(reader: R, len: u64) -> Result<Self, GgufError> {
        let mut c = Cursor {
            inner: reader,
            pos: 0,
            len,
        };
        let magic = c.bytes::<4>("the magic number")?;
        if &magic != b"GGUF" {
            return Err(GgufError {
                what: format!("not a GGUF file (magic bytes {magic:02x?}, expected \"GGUF\")"),
                offset: 0,
            });
        }
        let version = c.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(c.err(format!(
                "unsupported GGUF version {version} (2 and 3 are supported)"
            )));
        }
        let n_tensors = c.u64("the tensor count")?;
        let n_meta = c.u64("the metadata count")?;
        // A metadata pair takes at least 8 (key length) + 4 (type) + 1 bytes, a tensor entry at
        // least 8 + 4 + 8 + 4 + 8.
        if n_meta.checked_mul(13).is_none_or(|n| n > c.remaining()) {
            return Err(c.err(format!("{n_meta} metadata entries cannot fit in the file")));
        }
        if n_tensors.checked_mul(32).is_none_or(|n| n > c.remaining()) {
            return Err(c.err(format!("{n_tensors} tensor entries cannot fit in the file")));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..n_meta {
            let key = c.string("a metadata key")?;
            let ty = c.u32(&key)?;
            let value = c.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(c.err(format!("metadata key `{key}` appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => return Err(c.err(format!("general.alignment = {v} is not a power of two"))),
            },
        };
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = c.string("a tensor name")?;
            let n_dims = c.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.err(format!(
                    "tensor `{name}`: {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&name)?);
            }
            let ty_code = c.u32(&name)?;
            let ty = GgmlType::from_code(ty_code)
                .ok_or_else(|| c.err(format!("tensor `{name}`: unknown tensor type {ty_code}")))?;
            let offset = c.u64(&name)?;
            raw.push((name, dims, ty, offset));
        }
        let data_offset = c.pos.next_multiple_of(alignment);
        if data_offset > len {
            return Err(c.err("file ends before its data section"));
        }
        let mut tensors = Vec::with_capacity(raw.len());
        let mut names = std::collections::HashSet::new();
        for (name, dims, ty, offset) in raw {
            let fail = |what: String| GgufError {
                what: format!("tensor `{name}`: {what}"),
                offset: data_offset,
            };
            if !names.insert(name.clone()) {
                return Err(fail("appears twice in the tensor table".into()));
            }
            let n = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| fail(format!("dimensions {dims:?} overflow")))?;
            let (block, bytes) = ty.block();
            if dims[0] % block != 0 {
                return Err(fail(format!(
                    "{ty:?} needs rows that are a multiple of {block} values, got {}",
                    dims[0]
                )));
            }
            let size = (n / block)
                .checked_mul(bytes)
                .ok_or_else(|| fail("size overflows".into()))?;
            if offset % alignment != 0 {
                return Err(fail(format!(
                    "data offset {offset} is not aligned to {alignment}"
                )));
            }
            let start = data_offset
                .checked_add(offset)
                .ok_or_else(|| fail("data offset overflows".into()))?;
            if start.checked_add(size).is_none_or(|end| end > len) {
                return Err(fail(format!(
                    "{size} bytes of data at offset {start} run past the end of the {len}-byte file"
                )));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset: start,
                size,
            });
        }
        Ok(Self {
            version,
            metadata,
            tensors,
            data_offset,
            alignment,
        })
    }

    /// The tensor table entry called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Reads the raw bytes of one tensor.
pub fn read_tensor_bytes<R: Read + Seek>(
    reader: &mut R,
    info: &TensorInfo,
) -> std::io::Result<Vec<u8>> {
    reader.seek(SeekFrom::Start(info.offset))?;
    let mut buf = vec![0u8; info.size as usize];
    reader.read_exact(&mut buf)?;
    Ok(buf)
}
