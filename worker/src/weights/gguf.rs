//! The GGUF reader (versions 2 and 3): header, metadata, tensor infos and alignment,
//! over a memory map. Every length and offset is checked against the file before use,
//! so a truncated or corrupt file gives an error naming the file and the problem.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::quant::{unsupported_type, GgmlType};
use super::WeightError;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Uint(u64),
    Int(i64),
    Float(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Uint(v) => Some(v),
            Value::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Float(v) => Some(v),
            Value::Uint(v) => Some(v as f64),
            Value::Int(v) => Some(v as f64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's entry in the header; `dims` are GGUF's, fastest first.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    pub byte_len: u64,
}

impl TensorInfo {
    pub fn element_count(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// An open GGUF file: parsed header plus the mapped data.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
    map: Mmap,
}

/// A GGUF header: version, metadata and tensor directory, checked against the length of
/// the bytes it came from (every tensor lies inside them, none overlaps another).
pub struct GgufHeader {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
}

impl GgufHeader {
    /// Parses the header at the start of `bytes`, the whole file at `path` (named in errors).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, WeightError> {
        let bad = |problem: String| WeightError::Format { path: path.to_path_buf(), problem };
        let mut r = Reader { bytes, pos: 0 };
        let (version, tensor_count, metadata) = read_front(path, &mut r)?;
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(bad(format!("general.alignment = {v:?} is not a power of two"))),
            },
        };
        let mut infos = Vec::new();
        for i in 0..tensor_count {
            let info = r.tensor_info().map_err(|e| bad(format!("tensor info {i}: {e}")))?;
            infos.push(info);
        }
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let file_len = bytes.len() as u64;
        let mut tensors = BTreeMap::new();
        for (name, dims, code, relative) in infos {
            let ggml_type = GgmlType::from_code(code)
                .ok_or_else(|| bad(format!("tensor `{name}` has {}", unsupported_type(code))))?;
            let elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let byte_len = elements.and_then(|n| ggml_type.byte_size(n)).ok_or_else(|| {
                bad(format!("tensor `{name}` shape {dims:?} does not fill whole {} blocks", ggml_type.name()))
            })?;
            if relative % alignment != 0 {
                return Err(bad(format!("tensor `{name}` offset {relative} is not aligned to {alignment}")));
            }
            let offset = data_start.checked_add(relative);
            let end = offset.and_then(|o| o.checked_add(byte_len));
            match (offset, end) {
                (Some(offset), Some(end)) if end <= file_len => {
                    let info = TensorInfo { name: name.clone(), dims, ggml_type, offset, byte_len };
                    if tensors.insert(name.clone(), info).is_some() {
                        return Err(bad(format!("tensor `{name}` is listed twice")));
                    }
                }
                _ => {
                    return Err(bad(format!(
                        "tensor `{name}` data ends past the end of the file ({file_len} bytes): truncated or corrupt"
                    )))
                }
            }
        }
        check_overlaps(&tensors).map_err(bad)?;
        Ok(GgufHeader { version, metadata, tensors })
    }
}

/// The front of a GGUF header: magic, version, tensor count and metadata.
fn read_front(path: &Path, r: &mut Reader) -> Result<(u32, u64, BTreeMap<String, Value>), WeightError> {
    let bad = |problem: String| WeightError::Format { path: path.to_path_buf(), problem };
    if r.bytes.is_empty() {
        return Err(bad("the file is empty: not a GGUF file".into()));
    }
    let magic = r.take(4).map_err(|_| bad(format!("file is {} bytes, too short for a GGUF header", r.bytes.len())))?;
    if magic != MAGIC {
        return Err(bad(format!("wrong magic {magic:02x?}: not a GGUF file")));
    }
    let version = r.u32().map_err(bad)?;
    if !(2..=3).contains(&version) {
        return Err(bad(format!("GGUF version {version} is not supported (2 and 3 are)")));
    }
    let tensor_count = r.u64().map_err(bad)?;
    let kv_count = r.u64().map_err(bad)?;
    let mut metadata = BTreeMap::new();
    for i in 0..kv_count {
        let key = r.string().map_err(|e| bad(format!("metadata entry {i}: {e}")))?;
        let value = r.value(0).map_err(|e| bad(format!("metadata `{key}`: {e}")))?;
        metadata.insert(key, value);
    }
    Ok((version, tensor_count, metadata))
}

impl GgufFile {
    /// The file's metadata alone, its tensor directory unread (`tensors` is empty), so that
    /// tensor types this reader does not know do not matter: for reading a vocabulary.
    pub fn open_metadata(path: &Path) -> Result<Self, WeightError> {
        let file = File::open(path).map_err(|e| WeightError::io(path, e))?;
        // SAFETY: as in `open`.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| WeightError::io(path, e))?;
        let (version, _, metadata) = read_front(path, &mut Reader { bytes: &map, pos: 0 })?;
        Ok(GgufFile { path: path.to_path_buf(), version, metadata, tensors: BTreeMap::new(), map })
    }

    pub fn open(path: &Path) -> Result<Self, WeightError> {
        let file = File::open(path).map_err(|e| WeightError::io(path, e))?;
        // SAFETY: the map is read-only and private to this process; evalmesh never writes
        // model files, and a file changed under a running evaluation is outside its contract.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| WeightError::io(path, e))?;
        let GgufHeader { version, metadata, tensors } = GgufHeader::parse(path, &map)?;
        Ok(GgufFile { path: path.to_path_buf(), version, metadata, tensors, map })
    }

    /// The raw bytes of a tensor (bounds were checked at open).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.map[info.offset as usize..(info.offset + info.byte_len) as usize]
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }
}

fn check_overlaps(tensors: &BTreeMap<String, TensorInfo>) -> Result<(), String> {
    let mut spans: Vec<&TensorInfo> = tensors.values().collect();
    spans.sort_by_key(|t| t.offset);
    for pair in spans.windows(2) {
        if pair[0].offset + pair[0].byte_len > pair[1].offset {
            return Err(format!("tensors `{}` and `{}` overlap", pair[0].name, pair[1].name));
        }
    }
    Ok(())
}

/// Arrays nest at most this deep (real files use one level).
const MAX_NESTING: usize = 4;

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(format!(
                "needs {n} bytes at offset {} but the file ends at {}: truncated",
                self.pos,
                self.bytes.len()
            )),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.array().map(u64::from_le_bytes)
    }

    /// A count of items that take at least `min_item_bytes` each: refused when the
    /// rest of the file could not hold them, so no hostile count allocates.
    fn count(&mut self, min_item_bytes: usize) -> Result<usize, String> {
        let n = self.u64()?;
        let room = (self.bytes.len() - self.pos) / min_item_bytes.max(1);
        if n > room as u64 {
            return Err(format!(
                "count {n} at offset {} exceeds what the file can hold: truncated or corrupt",
                self.pos - 8
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.count(1)?;
        let at = self.pos;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("string at offset {at} is not UTF-8"))
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        let kind = self.u32()?;
        self.value_of(kind, depth)
    }

    fn value_of(&mut self, kind: u32, depth: usize) -> Result<Value, String> {
        Ok(match kind {
            0 => Value::Uint(self.array::<1>()?[0] as u64),
            1 => Value::Int(self.array::<1>()?[0] as i8 as i64),
            2 => Value::Uint(u16::from_le_bytes(self.array()?) as u64),
            3 => Value::Int(i16::from_le_bytes(self.array()?) as i64),
            4 => Value::Uint(self.u32()? as u64),
            5 => Value::Int(i32::from_le_bytes(self.array()?) as i64),
            6 => Value::Float(f32::from_le_bytes(self.array()?) as f64),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("bool byte {b} is neither 0 nor 1")),
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err("arrays nested too deep".into());
                }
                let item_kind = self.u32()?;
                let n = self.count(1)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value_of(item_kind, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::Uint(self.u64()?),
            11 => Value::Int(i64::from_le_bytes(self.array()?)),
            12 => Value::Float(f64::from_le_bytes(self.array()?)),
            other => return Err(format!("unknown value type {other}")),
        })
    }

    fn tensor_info(&mut self) -> Result<(String, Vec<u64>, u32, u64), String> {
        let name = self.string()?;
        let n_dims = self.u32()?;
        if n_dims == 0 || n_dims > 4 {
            return Err(format!("tensor `{name}` has {n_dims} dimensions (1 to 4 allowed)"));
        }
        let dims = (0..n_dims).map(|_| self.u64()).collect::<Result<Vec<_>, _>>()?;
        let code = self.u32()?;
        let offset = self.u64()?;
        Ok((name, dims, code, offset))
    }
}

/// Builds GGUF files in memory, for tests here and in the crates above.
pub mod writer {
    use super::*;

    /// A tensor to write: name, GGUF dims (fastest first), type code and raw bytes.
    pub struct RawTensor {
        pub name: String,
        pub dims: Vec<u64>,
        pub type_code: u32,
        pub bytes: Vec<u8>,
    }

    fn put_string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    fn put_value(out: &mut Vec<u8>, v: &Value, with_kind: bool) {
        let (kind, body): (u32, Vec<u8>) = match v {
            Value::Uint(x) => (10, x.to_le_bytes().to_vec()),
            Value::Int(x) => (11, x.to_le_bytes().to_vec()),
            Value::Float(x) => (12, x.to_le_bytes().to_vec()),
            Value::Bool(b) => (7, vec![*b as u8]),
            Value::String(s) => {
                let mut b = Vec::new();
                put_string(&mut b, s);
                (8, b)
            }
            Value::Array(items) => {
                let mut b = Vec::new();
                let item_kind = match items.first() {
                    Some(Value::Uint(_)) => 10u32,
                    Some(Value::Int(_)) => 11,
                    Some(Value::Float(_)) => 12,
                    Some(Value::Bool(_)) => 7,
                    Some(Value::Array(_)) => 9,
                    _ => 8,
                };
                b.extend(item_kind.to_le_bytes());
                b.extend((items.len() as u64).to_le_bytes());
                for item in items {
                    put_value(&mut b, item, item_kind == 9);
                }
                (9, b)
            }
        };
        if with_kind {
            out.extend(kind.to_le_bytes());
        }
        out.extend(body);
    }

    /// Serialises a version-3 GGUF file with 32-byte alignment.
    pub fn write(metadata: &[(&str, Value)], tensors: &[RawTensor]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(MAGIC);
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            put_string(&mut out, key);
            put_value(&mut out, value, true);
        }
        let mut offset = 0u64;
        for t in tensors {
            put_string(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.type_code.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset += (t.bytes.len() as u64).div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
        }
        for t in tensors {
            out.resize(out.len().div_ceil(DEFAULT_ALIGNMENT as usize) * DEFAULT_ALIGNMENT as usize, 0);
            out.extend(&t.bytes);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::writer::{write, RawTensor};
    use super::*;

    fn sample() -> Vec<u8> {
        let t = |name: &str, n: u64| RawTensor {
            name: name.into(),
            dims: vec![n],
            type_code: 0,
            bytes: (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect(),
        };
        write(
            &[
                ("general.architecture", Value::String("llama".into())),
                ("llama.block_count", Value::Uint(2)),
                ("tokenizer.ggml.tokens", Value::Array(vec![Value::String("a".into()), Value::String("b".into())])),
            ],
            &[t("first", 3), t("second", 8)],
        )
    }

    fn open_bytes(bytes: &[u8]) -> Result<GgufFile, WeightError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, bytes).unwrap();
        GgufFile::open(&path)
    }

    #[test]
    fn reads_metadata_and_tensors() {
        let f = open_bytes(&sample()).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.get("llama.block_count").and_then(Value::as_u64), Some(2));
        assert_eq!(f.get("tokenizer.ggml.tokens").and_then(Value::as_array).map(|a| a.len()), Some(2));
        let second = &f.tensors["second"];
        assert_eq!(second.offset % 32, 0);
        let bytes = f.tensor_bytes(second);
        assert_eq!(f32::from_le_bytes(bytes[28..32].try_into().unwrap()), 7.0);
    }

    fn error_of(bytes: &[u8]) -> String {
        match open_bytes(bytes) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn wrong_magic() {
        let mut b = sample();
        b[0] = b'X';
        assert!(error_of(&b).contains("not a GGUF file"));
    }

    #[test]
    fn unsupported_version() {
        let mut b = sample();
        b[4] = 1;
        assert!(error_of(&b).contains("version 1"));
    }

    #[test]
    fn truncated_header_and_data() {
        let b = sample();
        assert!(error_of(&b[..3]).contains("too short"));
        assert!(error_of(&b[..40]).contains("truncated"));
        assert!(error_of(&b[..b.len() - 4]).contains("past the end of the file"));
    }

    #[test]
    fn hostile_counts_do_not_allocate() {
        let mut b = sample();
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // tensor count: read one by one, fails at the end
        assert!(error_of(&b).contains("tensor info"));
        let mut b = sample();
        let key_len = 24; // first string length field
        b[key_len..key_len + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(error_of(&b).contains("exceeds what the file can hold"));
    }

    #[test]
    fn unknown_tensor_type() {
        let t = RawTensor { name: "w".into(), dims: vec![4], type_code: 77, bytes: vec![0; 16] };
        let b = write(&[], &[t]);
        assert!(error_of(&b).contains("unknown or unsupported type code 77"));
    }

    #[test]
    fn unsupported_tensor_type_is_named() {
        let t = RawTensor { name: "blk.0.attn_k.weight".into(), dims: vec![256], type_code: 16, bytes: vec![0; 66] };
        let e = error_of(&write(&[], &[t]));
        assert!(
            e.contains("tensor `blk.0.attn_k.weight` has type IQ2_XXS (code 16), which evalmesh does not read"),
            "{e}"
        );
        assert!(e.contains("supported: F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K,"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn metadata_alone_ignores_the_tensors() {
        let t = RawTensor { name: "w".into(), dims: vec![4], type_code: 77, bytes: vec![0; 16] };
        let b = write(&[("tokenizer.ggml.model", Value::String("llama".into()))], &[t]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, &b).unwrap();
        let f = GgufFile::open_metadata(&path).unwrap();
        assert_eq!(f.get("tokenizer.ggml.model").and_then(Value::as_str), Some("llama"));
        assert!(f.tensors.is_empty());
        std::fs::write(&path, &b[..6]).unwrap();
        assert!(GgufFile::open_metadata(&path).err().unwrap().to_string().contains("m.gguf"));
    }

    #[test]
    fn partial_blocks_are_refused() {
        let t = RawTensor { name: "w".into(), dims: vec![33], type_code: 8, bytes: vec![0; 68] };
        assert!(error_of(&write(&[], &[t])).contains("whole Q8_0 blocks"));
    }

    #[test]
    fn overlapping_tensors_are_refused() {
        let t = |name: &str| RawTensor { name: name.into(), dims: vec![8], type_code: 0, bytes: vec![0; 32] };
        let mut b = write(&[], &[t("a"), t("b")]);
        // Point b's offset at a's data: it follows b's name, dimension count, one dim and type.
        let name_at = b.windows(9).position(|w| w == [1, 0, 0, 0, 0, 0, 0, 0, b'b']).unwrap() + 9;
        let offset_at = name_at + 4 + 8 + 4;
        b[offset_at..offset_at + 8].copy_from_slice(&0u64.to_le_bytes());
        assert!(error_of(&b).contains("overlap"));
    }
}
