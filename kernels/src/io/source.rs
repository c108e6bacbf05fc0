//! [`TensorSource`]: where a network's weights come from — a checkpoint on disk, or the `w.*`
//! tensors of a reference fixture — so that networks load the same way from both.

use super::safetensors::{Checkpoint, SafeTensorsFile};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Named tensors a network loads its weights from.
pub trait TensorSource {
    /// Every tensor name, sorted.
    fn names(&self) -> Vec<String>;
    /// Stored shape and dtype of a tensor ([`Error::MissingKey`] when absent).
    fn describe(&self, name: &str) -> Result<(Vec<usize>, DType)>;
    /// Loads a tensor in its stored dtype ([`Error::MissingKey`] when absent).
    fn load(&self, name: &str) -> Result<Tensor>;
    /// Whether a tensor exists.
    fn contains(&self, name: &str) -> bool {
        self.describe(name).is_ok()
    }
    /// Loads a tensor converted to `dtype`, checking its shape first.
    fn load_checked(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let (stored, _) = self.describe(name)?;
        if stored != shape {
            return Err(Error::WeightShape { name: name.to_string(), expected: shape.to_vec(), got: stored });
        }
        self.load(name)?.to_dtype(dtype)
    }
}

impl TensorSource for Checkpoint {
    fn names(&self) -> Vec<String> {
        self.keys().map(str::to_string).collect()
    }
    fn describe(&self, name: &str) -> Result<(Vec<usize>, DType)> {
        Checkpoint::describe(self, name)
    }
    fn load(&self, name: &str) -> Result<Tensor> {
        Checkpoint::load(self, name)
    }
}

/// The tensors of one file whose names start with `prefix`, seen without it (a fixture's
/// `w.*` weights as a checkpoint).
#[derive(Debug)]
pub struct Prefixed<'a> {
    /// The file.
    pub file: &'a SafeTensorsFile,
    /// The prefix, e.g. `"w."`.
    pub prefix: &'a str,
}

impl TensorSource for Prefixed<'_> {
    fn names(&self) -> Vec<String> {
        self.file.keys().into_iter().filter_map(|k| k.strip_prefix(self.prefix).map(str::to_string)).collect()
    }
    fn describe(&self, name: &str) -> Result<(Vec<usize>, DType)> {
        self.file.describe(&format!("{}{name}", self.prefix)).map_err(|e| strip(e, self.prefix))
    }
    fn load(&self, name: &str) -> Result<Tensor> {
        self.file.load(&format!("{}{name}", self.prefix)).map_err(|e| strip(e, self.prefix))
    }
}

fn strip(e: Error, prefix: &str) -> Error {
    match e {
        Error::MissingKey(k) => Error::MissingKey(k.strip_prefix(prefix).map(str::to_string).unwrap_or(k)),
        e => e,
    }
}
