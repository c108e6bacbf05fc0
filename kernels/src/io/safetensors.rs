//! safetensors checkpoints: memory-mapped single files and sharded checkpoints
//! (`*.safetensors.index.json` with a `weight_map`).
//!
//! Every tensor's dtype is read from the header; `F32`, `BF16`, `F16` and `F64` are supported
//! and may be mixed within one file (e.g. a bf16 umT5 whose `wo` weights transformers keeps in
//! fp32). Tensors load in their stored dtype ([`Checkpoint::load`]) or converted
//! ([`Checkpoint::load_as`]). Truncated or corrupt files, unsupported dtypes, inconsistent
//! indexes and missing keys are typed [`Error`]s.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// One memory-mapped `.safetensors` file with its parsed, validated header.
pub struct SafeTensorsFile {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    metadata: Metadata,
}

impl std::fmt::Debug for SafeTensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafeTensorsFile").field("path", &self.path).field("bytes", &self.mmap.len()).finish()
    }
}

fn st_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::SafeTensors { path: path.to_path_buf(), msg: msg.into() }
}

fn stored_dtype(name: &str, d: Dtype) -> Result<DType> {
    match d {
        Dtype::F32 => Ok(DType::F32),
        Dtype::BF16 => Ok(DType::BF16),
        Dtype::F16 => Ok(DType::F16),
        Dtype::F64 => Ok(DType::F64),
        other => Err(Error::UnsupportedStoredDType { name: name.to_string(), dtype: format!("{other:?}") }),
    }
}

impl SafeTensorsFile {
    /// Maps and validates a file: header length, JSON, offsets covering exactly the data
    /// section, and byte sizes matching each shape and dtype.
    ///
    /// The file is memory-mapped; it must not be modified while the checkpoint is open.
    pub fn open(path: impl AsRef<Path>) -> Result<SafeTensorsFile> {
        let path = path.as_ref();
        let file = super::open_file(path)?;
        // SAFETY: read-only private mapping; documented requirement that the file is not
        // modified while mapped. Every access is bounds-checked against the validated header.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| match super::looks_like(&mmap[..mmap.len().min(16)]) {
                Some(what) => st_err(path, format!("not a safetensors file: it is {what} ({e})")),
                None => st_err(path, e.to_string()),
            })?;
        Ok(SafeTensorsFile { path: path.to_path_buf(), data_start: 8 + header_len, mmap, metadata })
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.metadata.tensors().into_keys().collect();
        k.sort();
        k
    }

    /// The free-form `__metadata__` map of the header, if any.
    pub fn user_metadata(&self) -> Option<&HashMap<String, String>> {
        self.metadata.metadata().as_ref()
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.metadata.info(name).ok_or_else(|| Error::MissingKey(name.to_string()))
    }

    /// Stored shape and dtype of a tensor.
    pub fn describe(&self, name: &str) -> Result<(Vec<usize>, DType)> {
        let info = self.info(name)?;
        Ok((info.shape.clone(), stored_dtype(name, info.dtype)?))
    }

    /// Loads an integer tensor (token ids, masks) stored as I64, I32, U8 or BOOL, with its shape.
    pub fn load_ints(&self, name: &str) -> Result<(Vec<i64>, Vec<usize>)> {
        let info = self.info(name)?;
        let (s, e) = info.data_offsets;
        let bytes = self
            .mmap
            .get(self.data_start + s..self.data_start + e)
            .ok_or_else(|| st_err(&self.path, format!("tensor {name:?} lies outside the file")))?;
        let values = match info.dtype {
            Dtype::I64 => decode(bytes, i64::from_le_bytes),
            Dtype::I32 => decode(bytes, |b: [u8; 4]| i32::from_le_bytes(b) as i64),
            Dtype::U8 | Dtype::BOOL => bytes.iter().map(|b| *b as i64).collect(),
            other => {
                return Err(Error::UnsupportedStoredDType {
                    name: name.to_string(),
                    dtype: format!("{other:?} (an integer tensor was expected)"),
                });
            }
        };
        if values.len() != info.shape.iter().product::<usize>() {
            return Err(st_err(&self.path, format!("tensor {name:?}: size does not match shape {:?}", info.shape)));
        }
        Ok((values, info.shape.clone()))
    }

    /// Loads a tensor in its stored dtype (copied out of the mapping, little-endian decoded).
    pub fn load(&self, name: &str) -> Result<Tensor> {
        let info = self.info(name)?;
        let dtype = stored_dtype(name, info.dtype)?;
        let (s, e) = info.data_offsets;
        let bytes = self
            .mmap
            .get(self.data_start + s..self.data_start + e)
            .ok_or_else(|| st_err(&self.path, format!("tensor {name:?} lies outside the file")))?;
        let shape = &info.shape;
        let numel: usize = shape.iter().product();
        if bytes.len() != numel * dtype.size_in_bytes() {
            return Err(st_err(
                &self.path,
                format!("tensor {name:?}: {} bytes for shape {shape:?} {dtype:?}", bytes.len()),
            ));
        }
        match dtype {
            DType::F32 => Tensor::from_vec(decode(bytes, f32::from_le_bytes), shape),
            DType::F64 => Tensor::from_vec(decode(bytes, f64::from_le_bytes), shape),
            DType::BF16 => Tensor::from_vec(decode(bytes, |b: [u8; 2]| bf16::from_bits(u16::from_le_bytes(b))), shape),
            DType::F16 => Tensor::from_vec(decode(bytes, |b: [u8; 2]| f16::from_bits(u16::from_le_bytes(b))), shape),
        }
    }
}

fn decode<const N: usize, E: Send>(bytes: &[u8], f: impl Fn([u8; N]) -> E + Sync + Send) -> Vec<E> {
    let conv = |c: &[u8]| f(c.try_into().expect("chunks_exact yields N bytes"));
    if bytes.len() >= 1 << 20 {
        bytes.par_chunks_exact(N).map(conv).collect()
    } else {
        bytes.chunks_exact(N).map(conv).collect()
    }
}

/// A checkpoint: one file, or several shards joined through an index.
#[derive(Debug)]
pub struct Checkpoint {
    files: Vec<SafeTensorsFile>,
    /// Tensor name → index into `files`.
    keys: BTreeMap<String, usize>,
}

impl Checkpoint {
    /// Opens a `.safetensors` file, a `*.safetensors.index.json` index, or a directory holding
    /// exactly one index (preferred) or exactly one `.safetensors` file.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
            let mut indexes = Vec::new();
            let mut files = Vec::new();
            for e in entries {
                let e = e.map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".safetensors.index.json") {
                    indexes.push(e.path());
                } else if name.ends_with(".safetensors") {
                    files.push(e.path());
                }
            }
            return match (indexes.len(), files.len()) {
                (1, _) => Checkpoint::open_index(&indexes[0]),
                (0, 1) => Checkpoint::open_file(&files[0]),
                _ => Err(Error::CheckpointIndex {
                    path: path.to_path_buf(),
                    msg: format!(
                        "expected one *.safetensors.index.json or one *.safetensors file, found {} and {}",
                        indexes.len(),
                        files.len()
                    ),
                }),
            };
        }
        if path.to_string_lossy().ends_with(".json") {
            Checkpoint::open_index(path)
        } else {
            Checkpoint::open_file(path)
        }
    }

    /// A checkpoint of a single file.
    pub fn open_file(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let f = SafeTensorsFile::open(path)?;
        let keys = f.keys().into_iter().map(|k| (k, 0)).collect();
        Ok(Checkpoint { files: vec![f], keys })
    }

    /// A sharded checkpoint from its index JSON (`{"weight_map": {name: shard_file}}`; shard
    /// paths are relative to the index's directory). Every listed tensor must exist in its shard.
    pub fn open_index(index: impl AsRef<Path>) -> Result<Checkpoint> {
        let index = index.as_ref();
        let bad = |msg: String| Error::CheckpointIndex { path: index.to_path_buf(), msg };
        let text = super::read_text(index)?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let map =
            json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad("no \"weight_map\" object".into()))?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shard_ids: BTreeMap<String, usize> = BTreeMap::new();
        let mut files = Vec::new();
        let mut keys = BTreeMap::new();
        for (name, shard) in map {
            let shard = shard.as_str().ok_or_else(|| bad(format!("weight_map[{name:?}] is not a string")))?;
            let rel = Path::new(shard);
            if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
                return Err(bad(format!("shard path {shard:?} must be a plain relative path")));
            }
            let id = match shard_ids.get(shard) {
                Some(&id) => id,
                None => {
                    files.push(SafeTensorsFile::open(dir.join(rel))?);
                    shard_ids.insert(shard.to_string(), files.len() - 1);
                    files.len() - 1
                }
            };
            if files[id].metadata.info(name).is_none() {
                return Err(bad(format!("tensor {name:?} listed for {shard:?} but absent from it")));
            }
            keys.insert(name.clone(), id);
        }
        Ok(Checkpoint { files, keys })
    }

    /// All tensor names, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the checkpoint holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.keys.contains_key(name)
    }

    /// The shard files.
    pub fn files(&self) -> &[SafeTensorsFile] {
        &self.files
    }

    fn file_of(&self, name: &str) -> Result<&SafeTensorsFile> {
        let &i = self.keys.get(name).ok_or_else(|| Error::MissingKey(name.to_string()))?;
        Ok(&self.files[i])
    }

    /// Stored shape and dtype.
    pub fn describe(&self, name: &str) -> Result<(Vec<usize>, DType)> {
        self.file_of(name)?.describe(name)
    }

    /// Loads a tensor in its stored dtype.
    pub fn load(&self, name: &str) -> Result<Tensor> {
        self.file_of(name)?.load(name)
    }

    /// Loads a tensor converted to `dtype`.
    pub fn load_as(&self, name: &str, dtype: DType) -> Result<Tensor> {
        self.load(name)?.to_dtype(dtype)
    }

    /// Loads a tensor and checks its shape.
    pub fn load_shaped(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let t = self.load_as(name, dtype)?;
        if t.shape() != shape {
            return Err(Error::shape(
                "Checkpoint::load_shaped",
                format!("tensor {name:?} has shape {:?}, expected {shape:?}", t.shape()),
            ));
        }
        Ok(t)
    }
}

/// A tensor prepared for serialisation.
struct Encoded {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn encode(t: &Tensor) -> Result<Encoded> {
    let (dtype, data) = match t.dtype() {
        DType::F32 => (Dtype::F32, t.to_vec::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
        DType::F64 => (Dtype::F64, t.to_vec::<f64>()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
        DType::BF16 => (Dtype::BF16, t.to_vec::<bf16>()?.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect()),
        DType::F16 => (Dtype::F16, t.to_vec::<f16>()?.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect()),
    };
    Ok(Encoded { dtype, shape: t.shape().to_vec(), data })
}

/// Writes tensors (each in its own dtype) and optional `__metadata__` to a safetensors file.
pub fn save(
    path: impl AsRef<Path>,
    tensors: &[(&str, &Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    use std::io::Write;
    let path = path.as_ref();
    let mut enc: Vec<(String, Encoded)> =
        tensors.iter().map(|(n, t)| Ok((n.to_string(), encode(t)?))).collect::<Result<_>>()?;
    // The bytes must depend on the contents only (blobs are keyed by their hash): `__metadata__`
    // in key order, not a HashMap's, and tensors laid out as the safetensors crate lays them out
    // (widest dtype first, then by name, so that every tensor is aligned).
    enc.sort_by(|(ln, l), (rn, r)| r.dtype.cmp(&l.dtype).then_with(|| ln.cmp(rn)));
    let mut header = serde_json::Map::new();
    if let Some(m) = metadata {
        let sorted: BTreeMap<String, String> = m.into_iter().collect();
        header.insert("__metadata__".into(), serde_json::to_value(sorted).map_err(|e| st_err(path, e.to_string()))?);
    }
    let mut offset = 0usize;
    for (name, e) in &enc {
        let info = serde_json::json!({
            "dtype": serde_json::to_value(e.dtype).map_err(|e| st_err(path, e.to_string()))?,
            "shape": e.shape,
            "data_offsets": [offset, offset + e.data.len()],
        });
        if name == "__metadata__" || header.insert(name.clone(), info).is_some() {
            return Err(st_err(path, format!("tensor name {name:?} given twice or reserved")));
        }
        offset += e.data.len();
    }
    let mut head = serde_json::to_vec(&serde_json::Value::Object(header)).map_err(|e| st_err(path, e.to_string()))?;
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    w.write_all(&(head.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&head).map_err(io)?;
    for (_, e) in &enc {
        w.write_all(&e.data).map_err(io)?;
    }
    w.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)
}
