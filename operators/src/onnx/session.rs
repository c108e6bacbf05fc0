//! ONNX Runtime sessions: one process-wide environment, a cache of sessions keyed by model file,
//! input/output discovery and f32 tensors in and out.
//!
//! * [`environment`] loads the shared library that [`locate_runtime`](super::locate_runtime) finds
//!   (`ORT_DYLIB_PATH` or the project's `.cache/ortenv`) the first time it is needed. ort would
//!   *panic* on its first call without a library; going through here turns that into an
//!   [`OnnxError::Runtime`] that names the fix.
//! * [`load`] returns the cached [`Model`] of a file (one session per model path and thread count
//!   per process; sessions are created once and shared by all workers and pool threads). ort's
//!   `Session::run` takes `&mut self`, so each session sits behind a mutex: callers batch frames
//!   into one run instead of running concurrently on one session.
//! * Every error names the model file and maps to [`ErrorClass::Backend`].

use super::locate_runtime;
use crate::api::{ErrorClass, ItemError};
use ort::session::Session;
use ort::value::{Tensor, TensorElementType, ValueType};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// What can go wrong with ONNX Runtime or a model. Every variant names the fix or the model file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OnnxError {
    /// The ONNX Runtime shared library is missing or cannot be loaded.
    #[error("ONNX Runtime is not available: {0} (fix: run scripts/setup.sh or set ORT_DYLIB_PATH)")]
    Runtime(String),
    /// A model file that params refer to does not exist.
    #[error("model file {} not found; {hint}", path.display())]
    MissingModel { path: PathBuf, hint: String },
    /// The model file exists but ONNX Runtime cannot load it (not an ONNX file, unsupported operator, ...).
    #[error("model {}: cannot load it: {message}", path.display())]
    Load { path: PathBuf, message: String },
    /// The model's inputs or outputs are not what the operator needs.
    #[error("model {}: {message}", path.display())]
    Signature { path: PathBuf, message: String },
    /// Running the model failed.
    #[error("model {}: inference failed: {message}", path.display())]
    Run { path: PathBuf, message: String },
}

impl OnnxError {
    /// The class of the `Failure` record an operator emits for this error: always `backend`.
    pub fn class(&self) -> ErrorClass {
        ErrorClass::Backend
    }
}

impl From<OnnxError> for ItemError {
    fn from(e: OnnxError) -> ItemError {
        ItemError::new(e.class(), e.to_string())
    }
}

/// The process-wide ONNX Runtime environment, created on first use. A failure is not cached: a
/// later call tries again (after the user ran `scripts/setup.sh`, say).
pub fn environment() -> Result<Arc<ort::environment::Environment>, OnnxError> {
    static ENV: Mutex<Option<Arc<ort::environment::Environment>>> = Mutex::new(None);
    let mut guard = ENV.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(env) = guard.as_ref() {
        return Ok(env.clone());
    }
    let lib = locate_runtime().map_err(|e| OnnxError::Runtime(e.to_string()))?;
    let builder =
        ort::init_from(&lib).map_err(|e| OnnxError::Runtime(format!("cannot load {}: {e}", lib.display())))?;
    let env = builder
        .with_name("medgen")
        .with_telemetry(false)
        .build()
        .map_err(|e| OnnxError::Runtime(format!("cannot create an environment from {}: {e}", lib.display())))?;
    let env = Arc::new(env);
    *guard = Some(env.clone());
    Ok(env)
}

/// How sessions are created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionOptions {
    /// Threads ONNX Runtime uses inside one operator (intra-op parallelism); at least 1.
    pub intra_threads: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { intra_threads: 1 }
    }
}

/// Element type of a model input or output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    F16,
    /// Any other type (named as ONNX Runtime names it); medgen does not feed or read these.
    Other(String),
}

/// A model input or output as the model declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoSpec {
    pub name: String,
    pub elem: Elem,
    /// Declared dimensions; `-1` for a dynamic one. Empty for non-tensor values.
    pub shape: Vec<i64>,
}

impl IoSpec {
    fn from_outlet(name: &str, ty: &ValueType) -> IoSpec {
        match ty {
            ValueType::Tensor { ty, shape, .. } => IoSpec {
                name: name.to_string(),
                elem: match ty {
                    TensorElementType::Float32 => Elem::F32,
                    TensorElementType::Float16 => Elem::F16,
                    other => Elem::Other(format!("{other:?}")),
                },
                shape: shape.to_vec(),
            },
            other => IoSpec { name: name.to_string(), elem: Elem::Other(format!("{other:?}")), shape: Vec::new() },
        }
    }

    /// Whether declared dimension `i` accepts `value` (dynamic dimensions accept anything).
    pub fn dim_accepts(&self, i: usize, value: i64) -> bool {
        self.shape.get(i).is_some_and(|d| *d < 0 || *d == value)
    }

    /// The signature as text, e.g. `x: f32[-1, 3, -1, -1]`.
    pub fn describe(&self) -> String {
        let elem = match &self.elem {
            Elem::F32 => "f32".to_string(),
            Elem::F16 => "f16".to_string(),
            Elem::Other(s) => s.clone(),
        };
        format!("{}: {elem}{:?}", self.name, self.shape)
    }
}

/// A dense f32 tensor in row-major order.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorF32 {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl TensorF32 {
    /// A tensor over `data`; `None` when the lengths disagree.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Option<TensorF32> {
        (shape.iter().product::<usize>() == data.len()).then_some(TensorF32 { shape, data })
    }
}

/// A loaded model: its session and its declared inputs and outputs.
pub struct Model {
    path: PathBuf,
    session: Mutex<Session>,
    inputs: Vec<IoSpec>,
    outputs: Vec<IoSpec>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

/// Check that a model file exists; the error says where to put it.
pub fn require_file(path: &Path, hint: &str) -> Result<(), OnnxError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(OnnxError::MissingModel { path: path.to_path_buf(), hint: hint.to_string() })
    }
}

/// The cached model of `path` (loaded on first use). `hint` says where the file comes from, for
/// the error when it is missing.
pub fn load(path: &Path, opts: &SessionOptions, hint: &str) -> Result<Arc<Model>, OnnxError> {
    type Cache = Mutex<HashMap<(PathBuf, usize), Arc<Model>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    require_file(path, hint)?;
    let key_path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let threads = opts.intra_threads.max(1);
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    // Loading under the lock: two threads asking for one model at once load it once.
    let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = map.get(&(key_path.clone(), threads)) {
        return Ok(m.clone());
    }
    let model = Arc::new(Model::open(path, threads)?);
    map.insert((key_path, threads), model.clone());
    Ok(model)
}

impl Model {
    fn open(path: &Path, threads: usize) -> Result<Model, OnnxError> {
        let env = environment()?;
        let load_err = |message: String| OnnxError::Load { path: path.to_path_buf(), message };
        let session = Session::builder(&env)
            .map_err(|e| load_err(e.to_string()))?
            .with_intra_threads(threads)
            .map_err(|e| load_err(e.to_string()))?
            .with_inter_threads(1)
            .map_err(|e| load_err(e.to_string()))?
            // Old exports trip ONNX Runtime warnings by the hundred (CenterFace: one per
            // initializer listed as a graph input); errors still come back as errors.
            .with_log_level(ort::logging::LogLevel::Error)
            .map_err(|e| load_err(e.to_string()))?
            .commit_from_file(path)
            .map_err(|e| load_err(e.to_string()))?;
        let inputs = session.inputs().iter().map(|o| IoSpec::from_outlet(o.name(), o.dtype())).collect();
        let outputs = session.outputs().iter().map(|o| IoSpec::from_outlet(o.name(), o.dtype())).collect();
        Ok(Model { path: path.to_path_buf(), session: Mutex::new(session), inputs, outputs })
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Declared inputs, in the model's order.
    pub fn inputs(&self) -> &[IoSpec] {
        &self.inputs
    }

    /// Declared outputs, in the model's order.
    pub fn outputs(&self) -> &[IoSpec] {
        &self.outputs
    }

    /// The signature as one line, for messages.
    pub fn describe(&self) -> String {
        let ins: Vec<String> = self.inputs.iter().map(IoSpec::describe).collect();
        let outs: Vec<String> = self.outputs.iter().map(IoSpec::describe).collect();
        format!("inputs [{}] → outputs [{}]", ins.join(", "), outs.join(", "))
    }

    /// A signature error about this model.
    pub fn signature_error(&self, message: impl Into<String>) -> OnnxError {
        OnnxError::Signature {
            path: self.path.clone(),
            message: format!("{} (the model has {})", message.into(), self.describe()),
        }
    }

    fn run_err(&self, message: impl std::fmt::Display) -> OnnxError {
        OnnxError::Run { path: self.path.clone(), message: message.to_string() }
    }

    /// Run the model on named f32 inputs (converted to f16 where the model wants f16); returns
    /// every tensor output as f32, in the model's output order.
    pub fn run(&self, inputs: &[(&str, &TensorF32)]) -> Result<Vec<(String, TensorF32)>, OnnxError> {
        let mut values: Vec<(String, ort::session::SessionInputValue<'static>)> = Vec::with_capacity(inputs.len());
        for (name, t) in inputs {
            let spec = self
                .inputs
                .iter()
                .find(|s| s.name == *name)
                .ok_or_else(|| self.signature_error(format!("has no input named `{name}`")))?;
            if t.shape.iter().product::<usize>() != t.data.len() {
                return Err(self.run_err(format!(
                    "input `{name}`: shape {:?} does not match {} values",
                    t.shape,
                    t.data.len()
                )));
            }
            let shape: Vec<i64> = t.shape.iter().map(|d| *d as i64).collect();
            let value: ort::session::SessionInputValue<'static> = match spec.elem {
                Elem::F32 => Tensor::from_array((shape, t.data.clone()))
                    .map_err(|e| self.run_err(format!("input `{name}`: {e}")))?
                    .into(),
                Elem::F16 => {
                    let data: Vec<half::f16> = t.data.iter().map(|v| half::f16::from_f32(*v)).collect();
                    Tensor::from_array((shape, data)).map_err(|e| self.run_err(format!("input `{name}`: {e}")))?.into()
                }
                Elem::Other(ref ty) => {
                    return Err(
                        self.signature_error(format!("input `{name}` has element type {ty}; medgen feeds f32 or f16"))
                    );
                }
            };
            values.push((name.to_string(), value));
        }
        let mut session = self.session.lock().map_err(|_| self.run_err("the session was poisoned by a panic"))?;
        let outputs = session.run(values).map_err(|e| self.run_err(e))?;
        let mut result = Vec::with_capacity(outputs.len());
        for (name, value) in outputs.iter() {
            let t = if let Ok((shape, data)) = value.try_extract_tensor::<f32>() {
                TensorF32 { shape: shape.iter().map(|d| (*d).max(0) as usize).collect(), data: data.to_vec() }
            } else if let Ok((shape, data)) = value.try_extract_tensor::<half::f16>() {
                TensorF32 {
                    shape: shape.iter().map(|d| (*d).max(0) as usize).collect(),
                    data: data.iter().map(|v| v.to_f32()).collect(),
                }
            } else {
                continue;
            };
            result.push((name.to_string(), t));
        }
        Ok(result)
    }

    /// Run a model with one input on `input`; returns its first output.
    pub fn run1(&self, input: &TensorF32) -> Result<TensorF32, OnnxError> {
        let name = match self.inputs.as_slice() {
            [one] => one.name.clone(),
            _ => return Err(self.signature_error("expected exactly one input")),
        };
        self.run(&[(name.as_str(), input)])?
            .into_iter()
            .next()
            .map(|(_, t)| t)
            .ok_or_else(|| self.signature_error("produced no f32/f16 tensor output"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_model_names_the_file_and_the_fix() {
        let e = load(Path::new("/nonexistent/model.onnx"), &SessionOptions::default(), "put it there").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/nonexistent/model.onnx") && msg.contains("put it there"), "{msg}");
        assert_eq!(e.class(), ErrorClass::Backend);
    }

    #[test]
    fn tensor_lengths_are_checked() {
        assert!(TensorF32::new(vec![2, 3], vec![0.0; 6]).is_some());
        assert!(TensorF32::new(vec![2, 3], vec![0.0; 5]).is_none());
    }

    #[test]
    fn io_spec_dims() {
        let s = IoSpec { name: "x".into(), elem: Elem::F32, shape: vec![-1, 3, 224, 224] };
        assert!(s.dim_accepts(0, 7) && s.dim_accepts(1, 3) && !s.dim_accepts(2, 225) && !s.dim_accepts(4, 1));
        assert_eq!(s.describe(), "x: f32[-1, 3, 224, 224]");
    }
}
