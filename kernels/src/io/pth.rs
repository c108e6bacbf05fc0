//! PyTorch checkpoints (`torch.save` since 1.6: a zip archive) read natively, without Python.
//!
//! # Format
//!
//! A checkpoint is a zip archive (entries stored, not compressed) holding, under one folder
//! `<archive>/`:
//!
//! * `data.pkl`: the pickled object (protocol 2), here a state_dict: an `OrderedDict` from names
//!   to tensors, each tensor rebuilt by `torch._utils._rebuild_tensor_v2(storage, offset, size,
//!   stride, requires_grad, backward_hooks)` and each storage a *persistent id*
//!   `('storage', torch.FloatStorage, key, location, numel)`;
//! * `data/<key>`: the raw bytes of each storage;
//! * `byteorder` (`little` or `big`; absent in older files, which are little-endian) and `version`.
//!
//! # Safety of the unpickler
//!
//! Pickles can name any Python callable. This reader implements only the opcodes a state_dict
//! uses and resolves only the globals `collections.OrderedDict`,
//! `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter` and the typed storage
//! classes `torch.{Float,Double,Half,BFloat16,Long,Int,Short,Char,Byte,Bool}Storage`. Any
//! other opcode or global is an [`Error::PickleRefused`] naming it; nothing is executed — the
//! "calls" are interpreted by this module. The memo holds copies (values a state_dict memoises
//! are never mutated afterwards), and `BUILD` on a dict (the state_dict's `_metadata`) is
//! accepted and ignored.
//!
//! Floating-point tensors (`f32`, `f64`, `f16`, `bf16`) are exposed through [`TensorSource`];
//! integer tensors (e.g. BatchNorm's `num_batches_tracked`) through [`PthFile::load_ints`].
//! Views (offset, strides) are resolved at load time into contiguous tensors.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;

use super::source::TensorSource;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Element type of a torch storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    /// `torch.FloatStorage` (f32).
    Float,
    /// `torch.DoubleStorage` (f64).
    Double,
    /// `torch.HalfStorage` (f16).
    Half,
    /// `torch.BFloat16Storage`.
    BFloat16,
    /// `torch.LongStorage` (i64).
    Long,
    /// `torch.IntStorage` (i32).
    Int,
    /// `torch.ShortStorage` (i16).
    Short,
    /// `torch.CharStorage` (i8).
    Char,
    /// `torch.ByteStorage` (u8).
    Byte,
    /// `torch.BoolStorage`.
    Bool,
}

impl StorageKind {
    fn from_class(name: &str) -> Option<StorageKind> {
        Some(match name {
            "FloatStorage" => StorageKind::Float,
            "DoubleStorage" => StorageKind::Double,
            "HalfStorage" => StorageKind::Half,
            "BFloat16Storage" => StorageKind::BFloat16,
            "LongStorage" => StorageKind::Long,
            "IntStorage" => StorageKind::Int,
            "ShortStorage" => StorageKind::Short,
            "CharStorage" => StorageKind::Char,
            "ByteStorage" => StorageKind::Byte,
            "BoolStorage" => StorageKind::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StorageKind::Double | StorageKind::Long => 8,
            StorageKind::Float | StorageKind::Int => 4,
            StorageKind::Half | StorageKind::BFloat16 | StorageKind::Short => 2,
            StorageKind::Char | StorageKind::Byte | StorageKind::Bool => 1,
        }
    }

    /// The float dtype, `None` for integer and bool storages.
    pub fn float_dtype(self) -> Option<DType> {
        match self {
            StorageKind::Float => Some(DType::F32),
            StorageKind::Double => Some(DType::F64),
            StorageKind::Half => Some(DType::F16),
            StorageKind::BFloat16 => Some(DType::BF16),
            _ => None,
        }
    }
}

/// Where one tensor of the checkpoint lives: a view into a storage record.
#[derive(Debug, Clone, PartialEq)]
pub struct PthTensor {
    /// Storage record key (`data/<key>` in the archive).
    pub storage: String,
    /// Element type of the storage.
    pub kind: StorageKind,
    /// Elements in the storage.
    pub storage_numel: usize,
    /// Offset of the first element, in elements.
    pub offset: usize,
    /// Shape.
    pub shape: Vec<usize>,
    /// Strides, in elements.
    pub stride: Vec<usize>,
}

/// The first pickle of a legacy `torch.save` file: protocol 2, the LONG1 magic number
/// 0x1950a86a20f9469cfc6c, STOP.
const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e";

/// A `torch.save` checkpoint (zip, or the legacy format) holding a state_dict, memory-mapped.
pub struct PthFile {
    path: PathBuf,
    mmap: Mmap,
    /// Zip entry name → (data offset, length).
    entries: HashMap<String, (usize, usize)>,
    /// Archive folder prefix, e.g. `archive/`.
    prefix: String,
    big_endian: bool,
    tensors: BTreeMap<String, PthTensor>,
}

impl std::fmt::Debug for PthFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PthFile").field("path", &self.path).field("tensors", &self.tensors.len()).finish()
    }
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::Pth { path: path.to_path_buf(), msg: msg.into() }
}

// ------------------------------------------------------------------------------------------ zip

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The entries of a zip archive whose members are stored uncompressed: name → (offset, length).
fn zip_entries(path: &Path, b: &[u8]) -> Result<HashMap<String, (usize, usize)>> {
    let trunc = || bad(path, "truncated zip archive");
    if b.len() < 22 || &b[..4] != b"PK\x03\x04" {
        let hint = if b.first() == Some(&0x80) {
            " (this looks like the legacy pre-1.6 torch.save format; re-save it with a current torch)"
        } else {
            ""
        };
        return Err(bad(path, format!("not a zip archive{hint}")));
    }
    // End of central directory: the last "PK\5\6" within the final 64 KiB + 22 bytes.
    let lo = b.len().saturating_sub(22 + 65535);
    let eocd = (lo..=b.len() - 22)
        .rev()
        .find(|&i| &b[i..i + 4] == b"PK\x05\x06")
        .ok_or_else(|| bad(path, "no zip end-of-central-directory record"))?;
    let mut count = u16_at(b, eocd + 10).ok_or_else(trunc)? as u64;
    let mut cd_off = u32_at(b, eocd + 16).ok_or_else(trunc)? as u64;
    if (count == 0xFFFF || cd_off == 0xFFFF_FFFF) && eocd >= 20 && &b[eocd - 20..eocd - 16] == b"PK\x06\x07" {
        // ZIP64: the locator points at the ZIP64 end-of-central-directory record.
        let rec = u64_at(b, eocd - 12).ok_or_else(trunc)? as usize;
        if b.get(rec..rec + 4) != Some(b"PK\x06\x06") {
            return Err(bad(path, "broken ZIP64 end-of-central-directory locator"));
        }
        count = u64_at(b, rec + 32).ok_or_else(trunc)?;
        cd_off = u64_at(b, rec + 48).ok_or_else(trunc)?;
    }
    let mut entries = HashMap::new();
    let mut at = cd_off as usize;
    for _ in 0..count {
        if b.get(at..at + 4) != Some(b"PK\x01\x02") {
            return Err(bad(path, format!("corrupt zip central directory at byte {at}")));
        }
        let method = u16_at(b, at + 10).ok_or_else(trunc)?;
        let mut csize = u32_at(b, at + 20).ok_or_else(trunc)? as u64;
        let mut usize_ = u32_at(b, at + 24).ok_or_else(trunc)? as u64;
        let name_len = u16_at(b, at + 28).ok_or_else(trunc)? as usize;
        let extra_len = u16_at(b, at + 30).ok_or_else(trunc)? as usize;
        let comment_len = u16_at(b, at + 32).ok_or_else(trunc)? as usize;
        let mut local = u32_at(b, at + 42).ok_or_else(trunc)? as u64;
        let name_bytes = b.get(at + 46..at + 46 + name_len).ok_or_else(trunc)?;
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        // ZIP64 extended information (id 1): the 0xFFFFFFFF fields, in order.
        let extra = b.get(at + 46 + name_len..at + 46 + name_len + extra_len).ok_or_else(trunc)?;
        let mut e = 0;
        while e + 4 <= extra.len() {
            let (id, len) = (u16_at(extra, e).unwrap_or(0), u16_at(extra, e + 2).unwrap_or(0) as usize);
            if id == 1 {
                let mut f = e + 4;
                for v in [&mut usize_, &mut csize, &mut local] {
                    if *v == 0xFFFF_FFFF {
                        *v = u64_at(extra, f).ok_or_else(trunc)?;
                        f += 8;
                    }
                }
            }
            e += 4 + len;
        }
        if method != 0 {
            return Err(bad(path, format!("zip member {name:?} is compressed (method {method}); torch.save stores")));
        }
        if csize != usize_ {
            return Err(bad(path, format!("zip member {name:?}: stored size {csize} != size {usize_}")));
        }
        let l = local as usize;
        if b.get(l..l + 4) != Some(b"PK\x03\x04") {
            return Err(bad(path, format!("zip member {name:?}: bad local header offset {l}")));
        }
        let data =
            l + 30 + u16_at(b, l + 26).ok_or_else(trunc)? as usize + u16_at(b, l + 28).ok_or_else(trunc)? as usize;
        let len = usize_ as usize;
        if data.checked_add(len).is_none_or(|end| end > b.len()) {
            return Err(bad(path, format!("zip member {name:?} extends past the end of the file")));
        }
        entries.insert(name, (data, len));
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(entries)
}

// ------------------------------------------------------------------------------------ unpickler

#[derive(Debug, Clone, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(StorageKind),
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Mark,
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Storage { kind: StorageKind, key: String, numel: usize },
    Tensor(PthTensor),
}

/// The deepest nesting of tuples, lists and dicts a pickle may build: a state dict needs a handful
/// of levels, and values nested tens of thousands deep would overflow the stack when copied or
/// dropped (an abort, not an error).
const MAX_DEPTH: usize = 1000;

impl Value {
    /// Levels of containers (0 for a scalar). Bounded: every container was checked against
    /// [`MAX_DEPTH`] when it was built.
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(items) | Value::List(items) => 1 + items.iter().map(Value::depth).max().unwrap_or(0),
            Value::Dict(kv) => 1 + kv.iter().map(|(k, v)| k.depth().max(v.depth())).max().unwrap_or(0),
            _ => 0,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::Mark => "mark",
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage { .. } => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

struct Unpickler<'a> {
    path: &'a Path,
    record: &'a str,
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u64, Value>,
}

fn opcode_name(op: u8) -> String {
    let printable = if op.is_ascii_graphic() { format!(" '{}'", op as char) } else { String::new() };
    format!("opcode 0x{op:02x}{printable}")
}

impl<'a> Unpickler<'a> {
    fn err(&self, msg: impl Into<String>) -> Error {
        bad(self.path, format!("{}: byte {}: {}", self.record, self.pos, msg.into()))
    }

    fn refuse(&self, what: String, pos: usize) -> Error {
        Error::PickleRefused { path: self.path.to_path_buf(), record: self.record.to_string(), what, pos }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let s =
            self.data.get(self.pos..self.pos.saturating_add(n)).ok_or_else(|| self.err("unexpected end of pickle"))?;
        self.pos += n;
        Ok(s)
    }

    fn take_n<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos.min(self.data.len())..];
        let n = rest.iter().position(|&c| c == b'\n').ok_or_else(|| self.err("unterminated GLOBAL line"))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| self.err("GLOBAL name is not UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }

    /// Refuses to put `items` into a container when that would nest deeper than [`MAX_DEPTH`].
    fn nest<'v>(&self, items: impl IntoIterator<Item = &'v Value>) -> Result<()> {
        if items.into_iter().any(|v| v.depth() >= MAX_DEPTH) {
            return Err(self.err(format!("values nested more than {MAX_DEPTH} levels deep: not a state dict")));
        }
        Ok(())
    }

    fn pop(&mut self) -> Result<Value> {
        match self.stack.pop() {
            Some(Value::Mark) | None => Err(self.err("stack underflow")),
            Some(v) => Ok(v),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let m = self.stack.iter().rposition(|v| *v == Value::Mark).ok_or_else(|| self.err("no MARK on the stack"))?;
        let items = self.stack.split_off(m + 1);
        self.stack.pop();
        Ok(items)
    }

    fn top_mut(&mut self) -> Result<&mut Value> {
        let pos = self.pos;
        let path = self.path;
        let record = self.record;
        self.stack
            .last_mut()
            .filter(|v| **v != Value::Mark)
            .ok_or_else(|| bad(path, format!("{record}: byte {pos}: stack underflow")))
    }

    fn str_utf8(&self, b: &[u8]) -> Result<Value> {
        Ok(Value::Str(std::str::from_utf8(b).map_err(|_| self.err("string is not UTF-8"))?.to_string()))
    }

    fn global(&self, module: &str, name: &str, pos: usize) -> Result<Value> {
        let g = match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch", s) => match StorageKind::from_class(s) {
                Some(k) => Global::Storage(k),
                None => return Err(self.refuse(format!("global {module}.{name}"), pos)),
            },
            _ => return Err(self.refuse(format!("global {module}.{name}"), pos)),
        };
        Ok(Value::Global(g))
    }

    fn usize_of(&self, v: &Value, what: &str) -> Result<usize> {
        match v {
            Value::Int(i) if *i >= 0 => Ok(*i as usize),
            other => Err(self.err(format!("{what}: expected a non-negative int, got {}", other.kind()))),
        }
    }

    fn usizes(&self, v: &Value, what: &str) -> Result<Vec<usize>> {
        match v {
            Value::Tuple(items) | Value::List(items) => items.iter().map(|i| self.usize_of(i, what)).collect(),
            other => Err(self.err(format!("{what}: expected a tuple of ints, got {}", other.kind()))),
        }
    }

    fn reduce(&self, f: Value, args: Value, pos: usize) -> Result<Value> {
        let Value::Tuple(args) = args else {
            return Err(self.err(format!("REDUCE arguments must be a tuple, got {}", args.kind())));
        };
        match f {
            Value::Global(Global::OrderedDict) if args.is_empty() => Ok(Value::Dict(Vec::new())),
            Value::Global(Global::RebuildTensorV2) => {
                if !(6..=7).contains(&args.len()) {
                    return Err(self.err(format!("_rebuild_tensor_v2 with {} arguments (6 or 7 expected)", args.len())));
                }
                let Value::Storage { kind, key, numel } = &args[0] else {
                    return Err(
                        self.err(format!("_rebuild_tensor_v2: argument 0 is a {}, not a storage", args[0].kind()))
                    );
                };
                let offset = self.usize_of(&args[1], "tensor storage offset")?;
                let shape = self.usizes(&args[2], "tensor size")?;
                let stride = self.usizes(&args[3], "tensor stride")?;
                if shape.len() != stride.len() {
                    return Err(self.err(format!("tensor size {shape:?} and stride {stride:?} differ in rank")));
                }
                // The furthest element must lie inside the storage.
                if shape.iter().all(|&s| s > 0) {
                    let last = shape.iter().zip(&stride).map(|(s, st)| (s - 1).saturating_mul(*st)).sum::<usize>();
                    if offset.saturating_add(last) >= *numel {
                        return Err(self.err(format!(
                            "tensor view (offset {offset}, size {shape:?}, stride {stride:?}) exceeds its storage {key:?} of {numel} elements"
                        )));
                    }
                }
                Ok(Value::Tensor(PthTensor {
                    storage: key.clone(),
                    kind: *kind,
                    storage_numel: *numel,
                    offset,
                    shape,
                    stride,
                }))
            }
            Value::Global(Global::RebuildParameter) => match args.into_iter().next() {
                Some(t @ Value::Tensor(_)) => Ok(t),
                _ => Err(self.err("_rebuild_parameter without a tensor")),
            },
            other => Err(self.refuse(format!("call of a {} ({other:?})", other.kind()), pos)),
        }
    }

    fn persistent_load(&self, pid: Value) -> Result<Value> {
        let Value::Tuple(items) = pid else {
            return Err(self.err(format!("persistent id is a {}, not a tuple", pid.kind())));
        };
        match items.as_slice() {
            // Zip checkpoints: 5 items; legacy ones add a view_metadata (None).
            [Value::Str(tag), Value::Global(Global::Storage(kind)), Value::Str(key), Value::Str(_location), numel]
            | [
                Value::Str(tag),
                Value::Global(Global::Storage(kind)),
                Value::Str(key),
                Value::Str(_location),
                numel,
                Value::None,
            ] if tag == "storage" => {
                let numel = self.usize_of(numel, "storage size")?;
                Ok(Value::Storage { kind: *kind, key: key.clone(), numel })
            }
            other => Err(self.err(format!("unsupported persistent id {other:?}"))),
        }
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            let at = self.pos;
            let op = self.take_n::<1>()?[0];
            match op {
                0x80 => {
                    let proto = self.take_n::<1>()?[0];
                    if proto > 5 {
                        return Err(self.err(format!("pickle protocol {proto}")));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Value::Mark),
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.nest(&items)?;
                    self.stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n || self.stack[self.stack.len() - n..].contains(&Value::Mark) {
                        return Err(self.err("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.nest(&items)?;
                    self.stack.push(Value::Tuple(items));
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.take_n()?) as usize;
                    let s = self.take(n)?;
                    let v = self.str_utf8(s)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.take_n::<1>()?[0] as usize;
                    let s = self.take(n)?;
                    let v = self.str_utf8(s)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.take_n()?) as usize;
                    let s = self.take(n)?;
                    let v = self.str_utf8(s)?;
                    self.stack.push(v);
                }
                b'q' | b'r' | 0x94 => {
                    let idx = match op {
                        b'q' => self.take_n::<1>()?[0] as u64,
                        b'r' => u32::from_le_bytes(self.take_n()?) as u64,
                        _ => self.memo.len() as u64,
                    };
                    let v = self.stack.last().filter(|v| **v != Value::Mark).cloned();
                    let v = v.ok_or_else(|| self.err("memo put of an empty stack"))?;
                    self.memo.insert(idx, v);
                }
                b'h' | b'j' => {
                    let idx = if op == b'h' {
                        self.take_n::<1>()?[0] as u64
                    } else {
                        u32::from_le_bytes(self.take_n()?) as u64
                    };
                    let v = self.memo.get(&idx).cloned().ok_or_else(|| self.err(format!("memo key {idx} unset")))?;
                    self.stack.push(v);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(module, name, at)?;
                    self.stack.push(g);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(m), Value::Str(n)) = (&module, &name) else {
                        return Err(self.err("STACK_GLOBAL needs two strings"));
                    };
                    let g = self.global(m, n, at)?;
                    self.stack.push(g);
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.stack.push(v);
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.take_n()?) as i64;
                    self.stack.push(Value::Int(v));
                }
                b'K' => {
                    let v = self.take_n::<1>()?[0] as i64;
                    self.stack.push(Value::Int(v));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take_n()?) as i64;
                    self.stack.push(Value::Int(v));
                }
                0x8a => {
                    let n = self.take_n::<1>()?[0] as usize;
                    if n > 8 {
                        return Err(self.err(format!("LONG1 of {n} bytes does not fit in 64 bits")));
                    }
                    let b = self.take(n)?;
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) { [0xFF; 8] } else { [0; 8] };
                    buf[..n].copy_from_slice(b);
                    self.stack.push(Value::Int(i64::from_le_bytes(buf)));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take_n()?);
                    self.stack.push(Value::Float(v));
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'R' => {
                    let args = self.pop()?;
                    self.nest([&args])?;
                    let f = self.pop()?;
                    let v = self.reduce(f, args, at)?;
                    self.stack.push(v);
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.nest([&k, &v])?;
                    match self.top_mut()? {
                        Value::Dict(d) => d.push((k, v)),
                        _ => return Err(self.err("SETITEM on a non-dict")),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err(self.err("SETITEMS with an odd number of items"));
                    }
                    self.nest(&items)?;
                    let mut it = items.into_iter();
                    let Value::Dict(d) = self.top_mut()? else {
                        return Err(self.err("SETITEMS on a non-dict"));
                    };
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        d.push((k, v));
                    }
                }
                b'a' => {
                    let v = self.pop()?;
                    self.nest([&v])?;
                    match self.top_mut()? {
                        Value::List(l) => l.push(v),
                        _ => return Err(self.err("APPEND on a non-list")),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.nest(&items)?;
                    match self.top_mut()? {
                        Value::List(l) => l.extend(items),
                        _ => return Err(self.err("APPENDS on a non-list")),
                    }
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.top_mut()?.kind();
                    // A state_dict's `_metadata`: accepted, not needed.
                    if obj != "dict" {
                        let what = format!("BUILD of a {obj} with a {} state", state.kind());
                        return Err(self.refuse(what, at));
                    }
                }
                other => return Err(self.refuse(opcode_name(other), at)),
            }
        }
    }
}

/// Unpickles a state_dict pickle (see the module docs) into its tensors, in file order.
fn unpickle_state_dict(path: &Path, record: &str, data: &[u8]) -> Result<Vec<(String, PthTensor)>> {
    let mut u = Unpickler { path, record, data, pos: 0, stack: Vec::new(), memo: HashMap::new() };
    let top = u.run()?;
    state_dict_entries(path, record, top)
}

/// The (name, tensor) entries of an unpickled state_dict.
fn state_dict_entries(path: &Path, record: &str, top: Value) -> Result<Vec<(String, PthTensor)>> {
    let Value::Dict(items) = top else {
        return Err(bad(path, format!("{record} holds a {}, not a state_dict", top.kind())));
    };
    let mut out = Vec::with_capacity(items.len());
    for (k, v) in items {
        match (k, v) {
            (Value::Str(k), Value::Tensor(t)) => out.push((k, t)),
            (k, v) => {
                return Err(bad(
                    path,
                    format!("state_dict entry {k:?} is a {}; only tensors under string keys load", v.kind()),
                ));
            }
        }
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------ file

impl PthFile {
    /// Maps a checkpoint and reads its state_dict's tensor table (no tensor data is read yet).
    ///
    /// The file is memory-mapped; it must not be modified while open.
    pub fn open(path: impl AsRef<Path>) -> Result<PthFile> {
        let path = path.as_ref();
        let file = super::open_file(path)?;
        // SAFETY: read-only private mapping; documented requirement that the file is not
        // modified while mapped. Every access is bounds-checked against the zip directory.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        if mmap.starts_with(LEGACY_MAGIC) {
            return Self::open_legacy(path, mmap);
        }
        let entries = zip_entries(path, &mmap)?;
        let pkl: Vec<&String> =
            entries.keys().filter(|k| k.ends_with("data.pkl") && k.matches('/').count() == 1).collect();
        let [pkl] = pkl.as_slice() else {
            return Err(bad(path, format!("expected one <archive>/data.pkl in the zip, found {}", pkl.len())));
        };
        let prefix = pkl.strip_suffix("data.pkl").unwrap_or_default().to_string();
        let big_endian = match entries.get(&format!("{prefix}byteorder")) {
            None => false,
            Some(&(o, n)) => match &mmap[o..o + n] {
                b"little" => false,
                b"big" => true,
                other => return Err(bad(path, format!("unknown byteorder {:?}", String::from_utf8_lossy(other)))),
            },
        };
        let (o, n) = entries[pkl.as_str()];
        let list = unpickle_state_dict(path, pkl, &mmap[o..o + n])?;
        let mut tensors = BTreeMap::new();
        for (name, t) in list {
            let rec = format!("{prefix}data/{}", t.storage);
            let &(_, len) = entries.get(&rec).ok_or_else(|| bad(path, format!("tensor {name:?}: no record {rec}")))?;
            if t.storage_numel.checked_mul(t.kind.size()).is_none_or(|need| len < need) {
                return Err(bad(
                    path,
                    format!(
                        "tensor {name:?}: record {rec} has {len} bytes, its storage needs {} elements of {} bytes",
                        t.storage_numel,
                        t.kind.size()
                    ),
                ));
            }
            if tensors.insert(name.clone(), t).is_some() {
                return Err(bad(path, format!("tensor {name:?} appears twice")));
            }
        }
        Ok(PthFile { path: path.to_path_buf(), mmap, entries, prefix, big_endian, tensors })
    }

    /// The legacy (pre-1.6, `_use_new_zipfile_serialization=False`) format: consecutive pickles —
    /// the magic number, the protocol version (1001), a sys_info dict, the state_dict (persistent
    /// ids `('storage', type, key, location, numel, None)`), the list of storage keys — then, for
    /// each key in that order, its element count (8 bytes, little-endian) and its raw bytes.
    fn open_legacy(path: &Path, mmap: Mmap) -> Result<PthFile> {
        let mut pos = LEGACY_MAGIC.len();
        let mut next = |what: &str| -> Result<Value> {
            let mut u = Unpickler { path, record: what, data: &mmap[..], pos, stack: Vec::new(), memo: HashMap::new() };
            let v = u.run()?;
            pos = u.pos;
            Ok(v)
        };
        match next("protocol version")? {
            Value::Int(1001) => {}
            other => return Err(bad(path, format!("legacy checkpoint protocol {other:?}, expected 1001"))),
        }
        let Value::Dict(sys_info) = next("sys_info")? else {
            return Err(bad(path, "legacy checkpoint without its sys_info dict"));
        };
        let little = sys_info
            .iter()
            .find(|(k, _)| *k == Value::Str("little_endian".into()))
            .map(|(_, v)| *v == Value::Bool(true))
            .unwrap_or(true);
        let top = next("state_dict")?;
        let list = state_dict_entries(path, "state_dict", top)?;
        let Value::List(keys) = next("storage keys")? else {
            return Err(bad(path, "legacy checkpoint without its list of storage keys"));
        };
        let sizes: HashMap<&str, usize> = list.iter().map(|(_, t)| (t.storage.as_str(), t.kind.size())).collect();
        let mut entries = HashMap::new();
        for k in keys {
            let Value::Str(k) = k else { return Err(bad(path, "a storage key is not a string")) };
            let numel = u64_at(&mmap, pos).ok_or_else(|| bad(path, format!("truncated before storage {k}")))? as usize;
            let elem = *sizes.get(k.as_str()).ok_or_else(|| bad(path, format!("storage {k} is listed but unused")))?;
            let len = numel.checked_mul(elem).ok_or_else(|| bad(path, format!("storage {k}: size overflows")))?;
            let start = pos + 8;
            if start.checked_add(len).is_none_or(|end| end > mmap.len()) {
                return Err(bad(path, format!("truncated: storage {k} needs {len} bytes at byte {start}")));
            }
            entries.insert(format!("data/{k}"), (start, len));
            pos = start + len;
        }
        let mut tensors = BTreeMap::new();
        for (name, t) in list {
            let rec = format!("data/{}", t.storage);
            let &(_, len) =
                entries.get(&rec).ok_or_else(|| bad(path, format!("tensor {name:?}: no storage {}", t.storage)))?;
            if t.storage_numel.checked_mul(t.kind.size()).is_none_or(|need| len < need) {
                return Err(bad(
                    path,
                    format!("tensor {name:?}: storage {} is shorter than the tensor says", t.storage),
                ));
            }
            tensors.insert(name, t);
        }
        Ok(PthFile { path: path.to_path_buf(), mmap, entries, prefix: String::new(), big_endian: !little, tensors })
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor of the state_dict (float and integer), by name.
    pub fn tensors(&self) -> &BTreeMap<String, PthTensor> {
        &self.tensors
    }

    fn info(&self, name: &str) -> Result<&PthTensor> {
        self.tensors.get(name).ok_or_else(|| Error::MissingKey(name.to_string()))
    }

    /// The storage bytes of a tensor's record.
    fn storage_bytes(&self, t: &PthTensor) -> &[u8] {
        let (o, _) = self.entries[&format!("{}data/{}", self.prefix, t.storage)];
        &self.mmap[o..o + t.storage_numel * t.kind.size()]
    }

    /// Element indices (into the storage) of a view, row-major.
    fn view_indices(t: &PthTensor) -> Vec<usize> {
        let n: usize = t.shape.iter().product();
        let mut out = Vec::with_capacity(n);
        if n == 0 {
            return out;
        }
        let rank = t.shape.len();
        let mut idx = vec![0usize; rank];
        let mut at = t.offset;
        for _ in 0..n {
            out.push(at);
            for d in (0..rank).rev() {
                idx[d] += 1;
                at += t.stride[d];
                if idx[d] < t.shape[d] {
                    break;
                }
                at -= t.stride[d] * t.shape[d];
                idx[d] = 0;
            }
        }
        out
    }

    fn elements<const N: usize, E>(&self, t: &PthTensor, f: impl Fn([u8; N]) -> E) -> Vec<E> {
        let bytes = self.storage_bytes(t);
        let big = self.big_endian;
        let get = |i: usize| {
            let mut b: [u8; N] = bytes[i * N..(i + 1) * N].try_into().expect("N bytes");
            if big {
                b.reverse();
            }
            f(b)
        };
        let contiguous = t.stride == crate::tensor::contiguous_strides(&t.shape);
        let n: usize = t.shape.iter().product();
        if contiguous {
            (t.offset..t.offset + n).map(get).collect()
        } else {
            Self::view_indices(t).into_iter().map(get).collect()
        }
    }

    /// Loads an integer or bool tensor as `i64`, with its shape.
    pub fn load_ints(&self, name: &str) -> Result<(Vec<i64>, Vec<usize>)> {
        let t = self.info(name)?;
        let v = match t.kind {
            StorageKind::Long => self.elements(t, i64::from_le_bytes),
            StorageKind::Int => self.elements(t, |b| i32::from_le_bytes(b) as i64),
            StorageKind::Short => self.elements(t, |b| i16::from_le_bytes(b) as i64),
            StorageKind::Char => self.elements(t, |b: [u8; 1]| b[0] as i8 as i64),
            StorageKind::Byte | StorageKind::Bool => self.elements(t, |b: [u8; 1]| b[0] as i64),
            k => {
                return Err(Error::UnsupportedStoredDType {
                    name: name.to_string(),
                    dtype: format!("{k:?} (an integer tensor was expected)"),
                });
            }
        };
        Ok((v, t.shape.clone()))
    }
}

impl TensorSource for PthFile {
    /// The floating-point tensors (integer ones are left out; see [`PthFile::load_ints`]).
    fn names(&self) -> Vec<String> {
        self.tensors.iter().filter(|(_, t)| t.kind.float_dtype().is_some()).map(|(k, _)| k.clone()).collect()
    }

    fn describe(&self, name: &str) -> Result<(Vec<usize>, DType)> {
        let t = self.info(name)?;
        let dtype = t
            .kind
            .float_dtype()
            .ok_or_else(|| Error::UnsupportedStoredDType { name: name.to_string(), dtype: format!("{:?}", t.kind) })?;
        Ok((t.shape.clone(), dtype))
    }

    fn load(&self, name: &str) -> Result<Tensor> {
        let t = self.info(name)?;
        let shape = &t.shape;
        match t.kind {
            StorageKind::Float => Tensor::from_vec(self.elements(t, f32::from_le_bytes), shape),
            StorageKind::Double => Tensor::from_vec(self.elements(t, f64::from_le_bytes), shape),
            StorageKind::Half => Tensor::from_vec(self.elements(t, |b| f16::from_bits(u16::from_le_bytes(b))), shape),
            StorageKind::BFloat16 => {
                Tensor::from_vec(self.elements(t, |b| bf16::from_bits(u16::from_le_bytes(b))), shape)
            }
            k => Err(Error::UnsupportedStoredDType { name: name.to_string(), dtype: format!("{k:?}") }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p: &[u8]) -> Result<Value> {
        Unpickler {
            path: Path::new("t.pth"),
            record: "archive/data.pkl",
            data: p,
            pos: 0,
            stack: vec![],
            memo: HashMap::new(),
        }
        .run()
    }

    /// Nesting tens of thousands deep is an error, not a stack overflow (an abort of the whole
    /// run); the depth a state dict needs loads.
    #[test]
    fn deep_nesting_is_refused() {
        for depth in [50_000usize, 2 * MAX_DEPTH] {
            let mut tuples = b"\x80\x02)".to_vec();
            tuples.extend(std::iter::repeat_n(0x85u8, depth));
            tuples.push(b'.');
            let mut lists = b"\x80\x02]".to_vec();
            for _ in 0..depth {
                lists.extend(b"]\x94");
            }
            lists.extend(std::iter::repeat_n(b'a', depth));
            lists.push(b'.');
            let mut marks = b"\x80\x02".to_vec();
            marks.extend(std::iter::repeat_n(b'(', depth));
            marks.extend(std::iter::repeat_n(b't', depth));
            marks.push(b'.');
            for p in [tuples, lists, marks] {
                let e = run(&p).unwrap_err().to_string();
                assert!(e.contains("nested more than"), "{e}");
            }
        }
        let mut ok = b"\x80\x02)".to_vec();
        ok.extend(std::iter::repeat_n(0x85u8, 100));
        ok.push(b'.');
        assert_eq!(run(&ok).unwrap().depth(), 101);
    }

    #[test]
    fn refuses_unknown_globals_and_opcodes() {
        let e = run(b"\x80\x02cos\nsystem\nq\x00.").unwrap_err();
        assert!(matches!(&e, Error::PickleRefused { what, pos: 2, .. } if what == "global os.system"), "{e}");
        let e = run(b"\x80\x02cbuiltins\neval\n.").unwrap_err();
        assert!(e.to_string().contains("builtins.eval"), "{e}");
        // INST ('i') is not in the restricted set.
        let e = run(b"\x80\x02(ios\nsystem\n.").unwrap_err();
        assert!(matches!(&e, Error::PickleRefused { what, .. } if what.contains("0x69 'i'")), "{e}");
        // Calling a storage class is not allowed either.
        let e = run(b"\x80\x02ctorch\nFloatStorage\n)R.").unwrap_err();
        assert!(matches!(e, Error::PickleRefused { .. }), "{e}");
        let e = run(b"\x80\x02ctorch\nload\n.").unwrap_err();
        assert!(e.to_string().contains("torch.load"), "{e}");
    }

    #[test]
    fn small_values_and_memo() {
        let v = run(b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x05X\x01\x00\x00\x00bJ\xff\xff\xff\xffu.").unwrap();
        assert_eq!(
            v,
            Value::Dict(vec![(Value::Str("a".into()), Value::Int(5)), (Value::Str("b".into()), Value::Int(-1))])
        );
        let v = run(b"\x80\x02K\x07q\x01h\x01\x86.").unwrap();
        assert_eq!(v, Value::Tuple(vec![Value::Int(7), Value::Int(7)]));
        assert!(run(b"\x80\x02h\x03.").is_err());
        assert!(run(b"\x80\x02K").is_err());
        assert!(run(b"\x80\x02t.").is_err());
    }

    fn legacy_fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rife/pth_legacy_tiny.pkl")
    }

    #[test]
    fn legacy_format_reads_views_dtypes_and_ints() {
        // Made by scripts/make-rife-fixture.py with torch.save(..., _use_new_zipfile_serialization=False).
        let f = PthFile::open(legacy_fixture()).unwrap();
        assert_eq!(
            f.names(),
            ["module.base", "module.base_t", "module.double", "module.half", "module.rows"].map(String::from)
        );
        let base: Vec<f32> = (0..12).map(|i| i as f32 / 4.0 - 1.0).collect();
        let t = f.load("module.base").unwrap();
        assert_eq!((t.shape(), t.to_vec_f32().unwrap()), (&[3usize, 4][..], base.clone()));
        // A transposed view and an offset view of the same storage.
        let tt = f.load("module.base_t").unwrap();
        assert_eq!(tt.shape(), [4, 3]);
        let want: Vec<f32> = (0..12).map(|i| base[(i % 3) * 4 + i / 3]).collect();
        assert_eq!(tt.to_vec_f32().unwrap(), want);
        assert_eq!(f.tensors()["module.rows"].offset, 4);
        assert_eq!(f.load("module.rows").unwrap().to_vec_f32().unwrap(), base[4..].to_vec());
        let h = f.load("module.half").unwrap();
        assert_eq!((h.dtype(), h.to_vec_f32().unwrap()), (DType::F16, vec![0.5, -2.0, 65504.0]));
        let d = f.load("module.double").unwrap();
        assert_eq!((d.dtype(), d.to_vec_f64().unwrap()), (DType::F64, vec![1.0 / 3.0, -7.25]));
        assert_eq!(f.load_ints("module.count").unwrap(), (vec![7], vec![]));
        assert!(f.load("module.count").is_err());
        assert!(matches!(f.load("module.nope"), Err(Error::MissingKey(_))), "{:?}", f.load("module.nope"));
    }

    #[test]
    fn legacy_format_truncated_or_corrupt_is_an_error() {
        let bytes = std::fs::read(legacy_fixture()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.pkl");
        // Every proper prefix (past the magic number, so the format is recognised) fails cleanly.
        for n in LEGACY_MAGIC.len()..bytes.len() {
            std::fs::write(&p, &bytes[..n]).unwrap();
            assert!(PthFile::open(&p).is_err(), "prefix of {n} bytes opened");
        }
        // The protocol-version pickle says 1001 (BININT2 0x03e9); any other number is refused.
        let at = bytes.windows(3).position(|w| w == b"M\xe9\x03").unwrap();
        let mut bad = bytes.clone();
        bad[at + 1] = 0xea;
        std::fs::write(&p, &bad).unwrap();
        let e = PthFile::open(&p).unwrap_err().to_string();
        assert!(e.contains("1001"), "{e}");
        // A storage element count larger than the file (the count precedes the storage's bytes).
        let mut big = bytes.clone();
        let f = PthFile::open(legacy_fixture()).unwrap();
        let last_count = f.entries.values().map(|&(start, _)| start).max().unwrap() - 8;
        big[last_count..last_count + 8].copy_from_slice(&1_000_000u64.to_le_bytes());
        std::fs::write(&p, &big).unwrap();
        let e = PthFile::open(&p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }
}
