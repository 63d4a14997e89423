//! Reading PyTorch `.pth` checkpoints: the form in which upstream TAESD (github.com/madebyollin/
//! taesd) publishes its weights, and the form ComfyUI / A1111 / Forge users already have on disk.
//!
//! A `.pth` written by `torch.save` (PyTorch ≥ 1.6) is a zip archive: `<prefix>/data.pkl` is a
//! pickle of the saved object (for weights, a `dict`/`OrderedDict` of tensors, sometimes nested
//! under a key such as `state_dict`), each tensor pointing through a "persistent id" at a raw
//! little-endian storage `<prefix>/data/<key>`. This module reads such files into named candle
//! tensors (F32, F16 or BF16, as stored) that [`super::taesd::weights::WeightFile`] then renames, widens
//! and checks exactly as it does safetensors.
//!
//! Why not `candle_core::pickle`: it reads these files, but it sizes its buffers from the shapes
//! in the pickle before checking them against the archive (a 1 kB file can ask for terabytes),
//! deep-copies memoised objects (so a small crafted pickle grows exponentially), prints skipped
//! entries to stderr, and its errors do not name the file. The pickle subset `torch.save` emits
//! is small, so this module interprets it with shared (reference-counted) objects, refuses
//! anything it does not model, and checks every size against the archive before allocating.
//! Nothing in a pickle is ever executed: "globals" are only names compared against a short list.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use candle_core::{DType, Device, Tensor};

/// Largest `.pth` file read (the TAESD family's files are ≈2.5 MB; a whole SD VAE is ≈330 MB).
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// Largest `data.pkl` interpreted (a state dict's pickle is a few kB).
pub const MAX_PICKLE_BYTES: u64 = 16 << 20;
/// Deepest nesting searched for the state dict (`{"state_dict": {...}}` is depth 1).
const MAX_NESTING: usize = 3;
/// Keys tried first when the top-level object is not itself a dict of tensors.
const NESTED_KEYS: [&str; 5] = ["state_dict", "model", "module", "ema", "model_ema"];
/// The zip local-file-header magic every `torch.save` archive starts with.
const ZIP_MAGIC: &[u8; 4] = b"PK\x03\x04";

/// Why a `.pth` file could not be read. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum PthError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} is too large for a model file ({bytes} bytes; the limit is {limit})")]
    TooLarge {
        path: PathBuf,
        bytes: u64,
        limit: u64,
    },
    #[error("{path} is not a PyTorch .pth checkpoint: {reason}")]
    NotZip { path: PathBuf, reason: String },
    #[error(
        "{path}: no data.pkl in the archive (not a torch.save checkpoint; entries: {entries})"
    )]
    NoPickle { path: PathBuf, entries: String },
    #[error("{path}: archive entry {entry}: {reason}")]
    Entry {
        path: PathBuf,
        entry: String,
        reason: String,
    },
    #[error("{path}: data.pkl: {reason}")]
    Pickle { path: PathBuf, reason: String },
    #[error("{path}: no state dict of tensors in the checkpoint ({found})")]
    NoStateDict { path: PathBuf, found: String },
    #[error(
        "{path}: tensor {tensor}: unsupported storage type {storage} \
         (expected FloatStorage, HalfStorage or BFloat16Storage)"
    )]
    Storage {
        path: PathBuf,
        tensor: String,
        storage: String,
    },
    #[error("{path}: tensor {tensor}: {reason}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
}

/// Name, dtype and shape of one tensor in a checkpoint (read without loading its data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PthTensorInfo {
    /// The key in the state dict (a common `module.` prefix removed).
    pub name: String,
    /// F32, F16 or BF16.
    pub dtype: DType,
    /// The tensor's shape.
    pub shape: Vec<usize>,
}

impl PthTensorInfo {
    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }
}

/// One tensor's place in the archive, checked against the archive when the file is opened.
#[derive(Debug, Clone)]
struct Entry {
    info: PthTensorInfo,
    /// Archive entry holding the storage.
    storage: String,
    /// Offset into the storage, in elements.
    offset: usize,
}

/// A parsed `.pth` checkpoint held in memory: the tensor list is known and checked; the data
/// is converted to tensors by [`PthCheckpoint::tensors`].
#[derive(Debug)]
pub struct PthCheckpoint {
    path: PathBuf,
    bytes: Vec<u8>,
    entries: Vec<Entry>,
    nested_under: Option<String>,
    skipped: Vec<String>,
}

/// Whether `path` should be read as a `.pth` archive: its extension is `.pth`/`.pt`, or it
/// starts with the zip magic (safetensors files start with a little-endian header length).
pub fn is_pth(path: &Path) -> bool {
    let by_name = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("pth") || e.eq_ignore_ascii_case("pt"));
    by_name || {
        let mut magic = [0u8; 4];
        std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok_and(|()| &magic == ZIP_MAGIC)
    }
}

/// Reads every tensor of the state dict in `path`, as stored (F32, F16 or BF16), on the CPU.
/// The order is the checkpoint's.
pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>, PthError> {
    PthCheckpoint::open(path)?.tensors()
}

impl PthCheckpoint {
    /// Reads and parses `path`, checking every tensor's storage against the archive. Files over
    /// [`MAX_FILE_BYTES`] are refused before they are read.
    pub fn open(path: &Path) -> Result<Self, PthError> {
        let read_error = |error| PthError::Read {
            path: path.to_path_buf(),
            error,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let length = file.metadata().map_err(read_error)?.len();
        if length > MAX_FILE_BYTES {
            return Err(PthError::TooLarge {
                path: path.to_path_buf(),
                bytes: length,
                limit: MAX_FILE_BYTES,
            });
        }
        let mut bytes = Vec::with_capacity(length as usize);
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        Self::from_bytes(path, bytes)
    }

    /// Parses a checkpoint already in memory; `path` names it in errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, PthError> {
        let path = path.to_path_buf();
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(PthError::TooLarge {
                path,
                bytes: bytes.len() as u64,
                limit: MAX_FILE_BYTES,
            });
        }
        if !bytes.starts_with(ZIP_MAGIC) {
            let reason = if bytes.starts_with(&[0x80]) {
                "a legacy (pre-1.6) PyTorch pickle, not a zip archive; load it in PyTorch and \
                 save it again with torch.save"
                    .to_string()
            } else if bytes.is_empty() {
                "the file is empty".to_string()
            } else {
                "not a zip archive".to_string()
            };
            return Err(PthError::NotZip { path, reason });
        }
        let mut archive =
            zip::ZipArchive::new(Cursor::new(&bytes[..])).map_err(|e| PthError::NotZip {
                path: path.clone(),
                reason: format!("not a readable zip archive ({e})"),
            })?;
        let names: Vec<String> = archive
            .file_names()
            .filter_map(Result::ok)
            .map(String::from)
            .collect();
        // The shallowest `…/data.pkl` (torch.save writes exactly one, at `<prefix>/data.pkl`).
        let pickle_name = names
            .iter()
            .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
            .min_by_key(|n| n.matches('/').count())
            .cloned()
            .ok_or_else(|| PthError::NoPickle {
                path: path.clone(),
                entries: summarise(&names),
            })?;
        let prefix = pickle_name
            .strip_suffix("data.pkl")
            .unwrap_or_default()
            .to_string();
        let entry_error = |entry: &str, reason: String| PthError::Entry {
            path: path.clone(),
            entry: entry.to_string(),
            reason,
        };
        let byteorder_name = format!("{prefix}byteorder");
        if names.contains(&byteorder_name) {
            let order = read_entry(&mut archive, &byteorder_name, 64, bytes.len() as u64)
                .map_err(|reason| entry_error(&byteorder_name, reason))?;
            if order != b"little" {
                return Err(entry_error(
                    &byteorder_name,
                    format!(
                        "storages are {:?}-endian; only little-endian checkpoints are supported",
                        String::from_utf8_lossy(&order)
                    ),
                ));
            }
        }
        let pickle = read_entry(
            &mut archive,
            &pickle_name,
            MAX_PICKLE_BYTES,
            bytes.len() as u64,
        )
        .map_err(|reason| entry_error(&pickle_name, reason))?;
        let pickle_error = |reason: String| PthError::Pickle {
            path: path.clone(),
            reason,
        };
        let root = Machine::default().run(&pickle).map_err(pickle_error)?;
        let (dict, nested_under) =
            find_state_dict(&root, 0).ok_or_else(|| PthError::NoStateDict {
                path: path.clone(),
                found: describe(&root),
            })?;

        let mut entries = Vec::new();
        let mut skipped = Vec::new();
        for (key, value) in dict.borrow().iter() {
            let name = match key {
                Obj::Str(name) => name.to_string(),
                other => {
                    skipped.push(format!("a {} key", other.kind()));
                    continue;
                }
            };
            let tensor = match value {
                Obj::Tensor(tensor) => tensor,
                other => {
                    skipped.push(format!("{name} ({})", other.kind()));
                    continue;
                }
            };
            let tensor_error = |reason: String| PthError::Tensor {
                path: path.clone(),
                tensor: name.clone(),
                reason,
            };
            let dtype = match tensor.storage.class.as_str() {
                "FloatStorage" => DType::F32,
                "HalfStorage" => DType::F16,
                "BFloat16Storage" => DType::BF16,
                other => {
                    return Err(PthError::Storage {
                        path: path.clone(),
                        tensor: name,
                        storage: other.to_string(),
                    })
                }
            };
            check_contiguous(&tensor.shape, &tensor.stride).map_err(tensor_error)?;
            let storage = format!("{prefix}data/{}", tensor.storage.key);
            let elements = tensor
                .shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .ok_or_else(|| tensor_error(format!("shape {:?} overflows", tensor.shape)))?;
            let needed = elements
                .checked_add(tensor.offset)
                .and_then(|n| n.checked_mul(dtype.size_in_bytes()))
                .ok_or_else(|| tensor_error("offset and size overflow".to_string()))?;
            let declared = tensor
                .storage
                .elements
                .checked_mul(dtype.size_in_bytes())
                .ok_or_else(|| tensor_error("storage size overflows".to_string()))?;
            let index = archive.index_for_name(&storage).ok_or_else(|| {
                tensor_error(format!("its storage {storage} is missing from the archive"))
            })?;
            let actual = archive
                .by_index(index)
                .map(|f| f.size())
                .map_err(|e| entry_error(&storage, e.to_string()))?;
            if needed > declared || declared as u64 > actual {
                return Err(tensor_error(format!(
                    "shape {:?} at offset {} needs {needed} bytes; its storage declares \
                     {declared} and the archive holds {actual}",
                    tensor.shape, tensor.offset
                )));
            }
            entries.push(Entry {
                info: PthTensorInfo {
                    name,
                    dtype,
                    shape: tensor.shape.clone(),
                },
                storage,
                offset: tensor.offset,
            });
        }
        if entries.is_empty() {
            return Err(PthError::NoStateDict {
                path,
                found: format!("a dict with no tensors ({})", skipped.join(", ")),
            });
        }
        strip_common_prefix(&mut entries, "module.");
        Ok(Self {
            path,
            bytes,
            entries,
            nested_under,
            skipped,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names, dtypes and shapes of the tensors, in checkpoint order.
    pub fn infos(&self) -> Vec<PthTensorInfo> {
        self.entries.iter().map(|e| e.info.clone()).collect()
    }

    /// The key path of a nested state dict (`state_dict`, `model.state_dict`, …), if the
    /// tensors were not at the top level.
    pub fn nested_under(&self) -> Option<&str> {
        self.nested_under.as_deref()
    }

    /// Entries of the state dict that were not tensors (name and kind), e.g. an `epoch` count.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Every tensor, as stored (F32, F16 or BF16), on the CPU, in checkpoint order.
    pub fn tensors(&self) -> Result<Vec<(String, Tensor)>, PthError> {
        let mut archive =
            zip::ZipArchive::new(Cursor::new(&self.bytes[..])).map_err(|e| PthError::NotZip {
                path: self.path.clone(),
                reason: format!("not a readable zip archive ({e})"),
            })?;
        let mut storages: HashMap<&str, Vec<u8>> = HashMap::new();
        let mut out = Vec::with_capacity(self.entries.len());
        for entry in &self.entries {
            if !storages.contains_key(entry.storage.as_str()) {
                let data = read_entry(
                    &mut archive,
                    &entry.storage,
                    MAX_FILE_BYTES,
                    self.bytes.len() as u64,
                )
                .map_err(|reason| PthError::Entry {
                    path: self.path.clone(),
                    entry: entry.storage.clone(),
                    reason,
                })?;
                storages.insert(&entry.storage, data);
            }
            let data = &storages[entry.storage.as_str()];
            let size = entry.info.dtype.size_in_bytes();
            let start = entry.offset * size;
            let end = start + entry.info.elem_count() * size;
            let tensor_error = |reason: String| PthError::Tensor {
                path: self.path.clone(),
                tensor: entry.info.name.clone(),
                reason,
            };
            let bytes = data.get(start..end).ok_or_else(|| {
                tensor_error(format!(
                    "bytes {start}..{end} lie outside its {}-byte storage",
                    data.len()
                ))
            })?;
            let tensor =
                Tensor::from_raw_buffer(bytes, entry.info.dtype, &entry.info.shape, &Device::Cpu)
                    .map_err(|e| tensor_error(e.to_string()))?;
            out.push((entry.info.name.clone(), tensor));
        }
        Ok(out)
    }
}

/// Reads one archive entry, refusing entries over `limit` bytes, compressed entries (torch.save
/// stores), and sizes larger than the archive itself.
fn read_entry(
    archive: &mut zip::ZipArchive<Cursor<&[u8]>>,
    name: &str,
    limit: u64,
    archive_bytes: u64,
) -> Result<Vec<u8>, String> {
    let entry = archive.by_name(name).map_err(|e| e.to_string())?;
    if entry.compression() != zip::CompressionMethod::Stored {
        return Err(format!(
            "compressed with {:?}; torch.save stores entries uncompressed",
            entry.compression()
        ));
    }
    let size = entry.size();
    if size > limit || size > archive_bytes {
        return Err(format!(
            "claims {size} bytes (limit {}, archive {archive_bytes})",
            limit.min(archive_bytes)
        ));
    }
    let mut data = Vec::with_capacity(size as usize);
    entry
        .take(size)
        .read_to_end(&mut data)
        .map_err(|e| e.to_string())?;
    if data.len() as u64 != size {
        return Err(format!("truncated: {} of {size} bytes", data.len()));
    }
    Ok(data)
}

/// Only C-contiguous tensors are read (what `state_dict()` holds); a dimension of size 1 may
/// carry any stride.
fn check_contiguous(shape: &[usize], stride: &[usize]) -> Result<(), String> {
    if shape.len() != stride.len() {
        return Err(format!("shape {shape:?} and stride {stride:?} disagree"));
    }
    let mut expected = 1usize;
    for (&dim, &step) in shape.iter().zip(stride).rev() {
        if dim != 1 && step != expected {
            return Err(format!(
                "non-contiguous layout (shape {shape:?}, stride {stride:?}); save it with \
                 .contiguous() tensors"
            ));
        }
        expected = expected.saturating_mul(dim);
    }
    Ok(())
}

/// Removes `prefix` from every name when every name has it (`module.` from DataParallel).
fn strip_common_prefix(entries: &mut [Entry], prefix: &str) {
    if entries.iter().all(|e| e.info.name.starts_with(prefix)) {
        for entry in entries {
            entry.info.name = entry.info.name[prefix.len()..].to_string();
        }
    }
}

/// A few of the archive's entry names, for an error message.
fn summarise(names: &[String]) -> String {
    let mut text = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 5 {
        text.push_str(&format!(", … ({} in all)", names.len()));
    }
    if text.is_empty() {
        text = "none".to_string();
    }
    text
}

/// The dict holding tensors: the root, or a dict nested under a string key (preferring
/// [`NESTED_KEYS`]), with the key path.
fn find_state_dict(obj: &Obj, depth: usize) -> Option<(DictRef, Option<String>)> {
    let Obj::Dict(dict) = obj else {
        return None;
    };
    if dict
        .borrow()
        .iter()
        .any(|(_, v)| matches!(v, Obj::Tensor(_)))
    {
        return Some((Rc::clone(dict), None));
    }
    if depth >= MAX_NESTING {
        return None;
    }
    let items = dict.borrow();
    let mut candidates: Vec<(&str, &Obj)> = items
        .iter()
        .filter_map(|(k, v)| match k {
            Obj::Str(k) => Some((&**k, v)),
            _ => None,
        })
        .collect();
    candidates.sort_by_key(|(k, _)| {
        NESTED_KEYS
            .iter()
            .position(|p| p == k)
            .unwrap_or(usize::MAX)
    });
    candidates.into_iter().find_map(|(key, value)| {
        let (found, under) = find_state_dict(value, depth + 1)?;
        let path = match under {
            Some(under) => format!("{key}.{under}"),
            None => key.to_string(),
        };
        Some((found, Some(path)))
    })
}

/// What the top-level object is, for "no state dict" errors.
fn describe(obj: &Obj) -> String {
    match obj {
        Obj::Dict(dict) => {
            let keys: Vec<String> = dict
                .borrow()
                .iter()
                .take(8)
                .map(|(k, v)| match k {
                    Obj::Str(k) => format!("{k}: {}", v.kind()),
                    other => format!("<{}>: {}", other.kind(), v.kind()),
                })
                .collect();
            format!("a dict of {{{}}}", keys.join(", "))
        }
        other => format!("a {}", other.kind()),
    }
}

// ---------------------------------------------------------------------------------------------
// The pickle interpreter: the opcodes `pickle` protocols 2–5 use for dicts of tensors.

type DictRef = Rc<RefCell<Vec<(Obj, Obj)>>>;

/// A storage named by a persistent id: `('storage', torch.HalfStorage, key, location, numel)`.
#[derive(Debug)]
struct StorageRef {
    class: String,
    key: String,
    elements: usize,
}

/// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, …)`.
#[derive(Debug)]
struct TensorRef {
    storage: Rc<StorageRef>,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// A pickled value. Containers are shared, so memo lookups copy a pointer, never a tree.
#[derive(Debug, Clone)]
enum Obj {
    None,
    Bool(bool),
    Int(i64),
    Float,
    Str(Rc<str>),
    Bytes,
    Tuple(Rc<[Obj]>),
    List(Rc<RefCell<Vec<Obj>>>),
    Dict(DictRef),
    Global(Rc<str>, Rc<str>),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    /// The result of calling something this reader does not model (named by its callable).
    Opaque(Rc<str>),
}

impl Obj {
    fn kind(&self) -> String {
        match self {
            Obj::None => "None".into(),
            Obj::Bool(_) => "bool".into(),
            Obj::Int(_) => "int".into(),
            Obj::Float => "float".into(),
            Obj::Str(_) => "str".into(),
            Obj::Bytes => "bytes".into(),
            Obj::Tuple(_) => "tuple".into(),
            Obj::List(_) => "list".into(),
            Obj::Dict(_) => "dict".into(),
            Obj::Global(m, n) => format!("{m}.{n}"),
            Obj::Storage(_) => "storage".into(),
            Obj::Tensor(_) => "tensor".into(),
            Obj::Opaque(what) => format!("{what}(…)"),
        }
    }

    fn int(&self, what: &str) -> Result<i64, String> {
        match self {
            Obj::Int(i) => Ok(*i),
            Obj::Bool(b) => Ok(i64::from(*b)),
            other => Err(format!("{what}: expected an int, got {}", other.kind())),
        }
    }

    fn usize(&self, what: &str) -> Result<usize, String> {
        let i = self.int(what)?;
        usize::try_from(i).map_err(|_| format!("{what}: {i} is negative"))
    }

    fn usizes(&self, what: &str) -> Result<Vec<usize>, String> {
        match self {
            Obj::Tuple(items) => items.iter().map(|i| i.usize(what)).collect(),
            other => Err(format!("{what}: expected a tuple, got {}", other.kind())),
        }
    }

    fn tuple(&self, what: &str) -> Result<Rc<[Obj]>, String> {
        match self {
            Obj::Tuple(items) => Ok(Rc::clone(items)),
            other => Err(format!("{what}: expected a tuple, got {}", other.kind())),
        }
    }

    fn string(&self, what: &str) -> Result<Rc<str>, String> {
        match self {
            Obj::Str(s) => Ok(Rc::clone(s)),
            other => Err(format!("{what}: expected a string, got {}", other.kind())),
        }
    }
}

/// The pickle virtual machine's state.
#[derive(Default)]
struct Machine {
    stack: Vec<Obj>,
    marks: Vec<usize>,
    memo: HashMap<u32, Obj>,
}

/// Reads from the pickle bytes, with the position for error messages.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| format!("truncated at byte {} (wanted {n} more bytes)", self.at))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn len(&mut self, n: u64) -> Result<usize, String> {
        usize::try_from(n).map_err(|_| format!("length {n} at byte {} is too large", self.at))
    }

    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.bytes[self.at..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| format!("unterminated line at byte {}", self.at))?;
        let line = std::str::from_utf8(&rest[..end])
            .map_err(|_| format!("non-UTF-8 name at byte {}", self.at))?;
        self.at += end + 1;
        Ok(line)
    }

    fn utf8(&mut self, n: usize) -> Result<Obj, String> {
        let at = self.at;
        let bytes = self.take(n)?;
        let text =
            std::str::from_utf8(bytes).map_err(|_| format!("invalid UTF-8 string at byte {at}"))?;
        Ok(Obj::Str(Rc::from(text)))
    }
}

impl Machine {
    /// Runs the pickle to its STOP and returns the object it built.
    fn run(mut self, bytes: &[u8]) -> Result<Obj, String> {
        let mut r = Reader { bytes, at: 0 };
        loop {
            let at = r.at;
            let op = r.u8()?;
            match op {
                0x80 => {
                    r.u8()?; // PROTO
                }
                0x95 => {
                    r.u64()?; // FRAME: a length hint
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b')' => self.stack.push(Obj::Tuple(Rc::from(Vec::new()))),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Obj::Tuple(Rc::from(items)));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let start = self
                        .stack
                        .len()
                        .checked_sub(n)
                        .ok_or_else(|| format!("stack underflow at byte {at}"))?;
                    let items: Vec<Obj> = self.stack.drain(start..).collect();
                    self.stack.push(Obj::Tuple(Rc::from(items)));
                }
                b']' => self.stack.push(Obj::List(Rc::default())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Obj::List(Rc::new(RefCell::new(items))));
                }
                b'a' => {
                    let item = self.pop()?;
                    self.list_top(at)?.borrow_mut().push(item);
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.list_top(at)?.borrow_mut().extend(items);
                }
                b'}' => self.stack.push(Obj::Dict(Rc::default())),
                b'd' => {
                    let items = self.pop_mark()?;
                    let dict = Rc::new(RefCell::new(pairs(items, at)?));
                    self.stack.push(Obj::Dict(dict));
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.dict_top(at)?.borrow_mut().push((key, value));
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let items = pairs(items, at)?;
                    self.dict_top(at)?.borrow_mut().extend(items);
                }
                b'N' => self.stack.push(Obj::None),
                0x88 => self.stack.push(Obj::Bool(true)),
                0x89 => self.stack.push(Obj::Bool(false)),
                b'J' => {
                    let v = r.u32()? as i32;
                    self.stack.push(Obj::Int(i64::from(v)));
                }
                b'K' => {
                    let v = r.u8()?;
                    self.stack.push(Obj::Int(i64::from(v)));
                }
                b'M' => {
                    let v = r.u16()?;
                    self.stack.push(Obj::Int(i64::from(v)));
                }
                0x8a => {
                    let n = usize::from(r.u8()?);
                    if n > 8 {
                        return Err(format!("integer of {n} bytes at byte {at} is too large"));
                    }
                    let bytes = r.take(n)?;
                    let mut v: i64 = 0;
                    for (i, &b) in bytes.iter().enumerate() {
                        v |= i64::from(b) << (8 * i);
                    }
                    if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n); // two's complement sign
                    }
                    self.stack.push(Obj::Int(v));
                }
                b'G' => {
                    r.take(8)?;
                    self.stack.push(Obj::Float);
                }
                b'X' => {
                    let n = r.u32()?;
                    let n = r.len(u64::from(n))?;
                    let s = r.utf8(n)?;
                    self.stack.push(s);
                }
                0x8c => {
                    let n = usize::from(r.u8()?);
                    let s = r.utf8(n)?;
                    self.stack.push(s);
                }
                0x8d => {
                    let n = r.u64()?;
                    let n = r.len(n)?;
                    let s = r.utf8(n)?;
                    self.stack.push(s);
                }
                b'U' | b'C' => {
                    let n = usize::from(r.u8()?);
                    r.take(n)?;
                    self.stack.push(Obj::Bytes);
                }
                b'T' | b'B' => {
                    let n = r.u32()?;
                    let n = r.len(u64::from(n))?;
                    r.take(n)?;
                    self.stack.push(Obj::Bytes);
                }
                b'c' => {
                    let module = r.line()?;
                    let name = r.line()?;
                    self.stack
                        .push(Obj::Global(Rc::from(module), Rc::from(name)));
                }
                0x93 => {
                    let name = self.pop()?.string("STACK_GLOBAL name")?;
                    let module = self.pop()?.string("STACK_GLOBAL module")?;
                    self.stack.push(Obj::Global(module, name));
                }
                b'q' => {
                    let id = u32::from(r.u8()?);
                    self.memoize(id, at)?;
                }
                b'r' => {
                    let id = r.u32()?;
                    self.memoize(id, at)?;
                }
                0x94 => {
                    let id = u32::try_from(self.memo.len())
                        .map_err(|_| format!("memo overflow at byte {at}"))?;
                    self.memoize(id, at)?;
                }
                b'h' => {
                    let id = u32::from(r.u8()?);
                    self.recall(id, at)?;
                }
                b'j' => {
                    let id = r.u32()?;
                    self.recall(id, at)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = persistent_load(&pid)
                        .map_err(|e| format!("persistent id at byte {at}: {e}"))?;
                    self.stack.push(storage);
                }
                b'R' => {
                    let args = self.pop()?.tuple("REDUCE arguments")?;
                    let callable = self.pop()?;
                    let value =
                        reduce(&callable, &args).map_err(|e| format!("at byte {at}: {e}"))?;
                    self.stack.push(value);
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args); kept as an opaque value.
                    self.pop()?;
                    let class = self.pop()?;
                    self.stack.push(Obj::Opaque(Rc::from(class.kind())));
                }
                b'b' => {
                    // BUILD: sets state on an object (an OrderedDict's `_metadata`); the state
                    // carries nothing a weights reader needs.
                    self.pop()?;
                    if self.stack.is_empty() {
                        return Err(format!("BUILD on an empty stack at byte {at}"));
                    }
                }
                b'0' => {
                    self.pop()?;
                }
                b'2' => {
                    let top = self.stack.last().cloned().ok_or("DUP on an empty stack")?;
                    self.stack.push(top);
                }
                b'1' => {
                    self.pop_mark()?;
                }
                other => {
                    return Err(format!(
                        "unsupported pickle opcode 0x{other:02x} at byte {at} \
                         (not a plain torch.save state dict)"
                    ))
                }
            }
        }
    }

    fn pop(&mut self) -> Result<Obj, String> {
        self.stack
            .pop()
            .ok_or_else(|| "stack underflow".to_string())
    }

    fn pop_mark(&mut self) -> Result<Vec<Obj>, String> {
        let mark = self.marks.pop().ok_or("no MARK on the stack")?;
        if mark > self.stack.len() {
            return Err("MARK above the stack top".to_string());
        }
        Ok(self.stack.split_off(mark))
    }

    fn memoize(&mut self, id: u32, at: usize) -> Result<(), String> {
        let top = self
            .stack
            .last()
            .cloned()
            .ok_or_else(|| format!("memo put on an empty stack at byte {at}"))?;
        self.memo.insert(id, top);
        Ok(())
    }

    fn recall(&mut self, id: u32, at: usize) -> Result<(), String> {
        let obj = self
            .memo
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("memo {id} read before it was set, at byte {at}"))?;
        self.stack.push(obj);
        Ok(())
    }

    fn list_top(&self, at: usize) -> Result<Rc<RefCell<Vec<Obj>>>, String> {
        match self.stack.last() {
            Some(Obj::List(list)) => Ok(Rc::clone(list)),
            _ => Err(format!("APPEND to a non-list at byte {at}")),
        }
    }

    fn dict_top(&self, at: usize) -> Result<DictRef, String> {
        match self.stack.last() {
            Some(Obj::Dict(dict)) => Ok(Rc::clone(dict)),
            Some(other) => Err(format!("SETITEM on a {} at byte {at}", other.kind())),
            None => Err(format!("SETITEM on an empty stack at byte {at}")),
        }
    }
}

fn pairs(items: Vec<Obj>, at: usize) -> Result<Vec<(Obj, Obj)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err(format!("odd number of dict items at byte {at}"));
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut items = items.into_iter();
    while let (Some(k), Some(v)) = (items.next(), items.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// `('storage', torch.XStorage, key, location, numel)` → a storage reference.
fn persistent_load(pid: &Obj) -> Result<Obj, String> {
    let items = pid.tuple("persistent id")?;
    match &*items {
        [Obj::Str(tag), class, key, _location, elements] if &**tag == "storage" => {
            let class = match class {
                Obj::Global(_, name) => name.to_string(),
                other => other.kind(),
            };
            Ok(Obj::Storage(Rc::new(StorageRef {
                class,
                key: key.string("storage key")?.to_string(),
                elements: elements.usize("storage size")?,
            })))
        }
        _ => Err(format!("not a storage reference ({} items)", items.len())),
    }
}

/// Calls a global: only the few constructors a state dict uses are modelled.
fn reduce(callable: &Obj, args: &[Obj]) -> Result<Obj, String> {
    let Obj::Global(module, name) = callable else {
        return Ok(Obj::Opaque(Rc::from(callable.kind())));
    };
    match (&**module, &**name) {
        ("collections", "OrderedDict") | ("builtins", "dict") if args.is_empty() => {
            Ok(Obj::Dict(Rc::default()))
        }
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            let [storage, offset, shape, stride, ..] = args else {
                return Err(format!("{module}.{name} with {} arguments", args.len()));
            };
            let Obj::Storage(storage) = storage else {
                return Err(format!("{module}.{name} of a {}", storage.kind()));
            };
            Ok(Obj::Tensor(Rc::new(TensorRef {
                storage: Rc::clone(storage),
                offset: offset.usize("storage offset")?,
                shape: shape.usizes("tensor size")?,
                stride: stride.usizes("tensor stride")?,
            })))
        }
        // nn.Parameter(tensor, requires_grad, hooks): the tensor.
        ("torch._utils", "_rebuild_parameter")
        | ("torch._utils", "_rebuild_parameter_with_state") => match args.first() {
            Some(tensor @ Obj::Tensor(_)) => Ok(tensor.clone()),
            _ => Err(format!("{module}.{name} without a tensor")),
        },
        // Tensor subclasses: _rebuild_from_type_v2(func, type, args, state) → func(*args).
        ("torch._tensor", "_rebuild_from_type_v2") => match args {
            [func, _type, inner, ..] => reduce(func, &inner.tuple("rebuild arguments")?),
            _ => Err(format!("{module}.{name} with {} arguments", args.len())),
        },
        _ => Ok(Obj::Opaque(Rc::from(format!("{module}.{name}")))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds protocol-2 pickles the way `torch.save` writes them.
    #[derive(Default)]
    struct Pickle(Vec<u8>);

    impl Pickle {
        fn op(&mut self, op: u8) -> &mut Self {
            self.0.push(op);
            self
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.0.push(b'X');
            self.0.extend((s.len() as u32).to_le_bytes());
            self.0.extend(s.as_bytes());
            self
        }
        fn int(&mut self, i: i32) -> &mut Self {
            self.0.push(b'J');
            self.0.extend(i.to_le_bytes());
            self
        }
        fn global(&mut self, module: &str, name: &str) -> &mut Self {
            self.0.push(b'c');
            self.0.extend(format!("{module}\n{name}\n").as_bytes());
            self
        }
        fn ints(&mut self, values: &[usize]) -> &mut Self {
            self.op(b'(');
            for &v in values {
                self.int(v as i32);
            }
            self.op(b't')
        }
        /// `_rebuild_tensor_v2(('storage', torch.<class>, key, 'cpu', numel), 0, shape, stride,
        /// False, OrderedDict())`.
        fn tensor(&mut self, class: &str, key: &str, numel: usize, shape: &[usize]) -> &mut Self {
            let mut stride = vec![1usize; shape.len()];
            for i in (0..shape.len().saturating_sub(1)).rev() {
                stride[i] = stride[i + 1] * shape[i + 1];
            }
            self.global("torch._utils", "_rebuild_tensor_v2")
                .op(b'(')
                .op(b'(');
            self.str("storage")
                .global("torch", class)
                .str(key)
                .str("cpu");
            self.int(numel as i32)
                .op(b't')
                .op(b'Q')
                .int(0)
                .ints(shape)
                .ints(&stride);
            self.op(0x89)
                .global("collections", "OrderedDict")
                .op(b')')
                .op(b'R');
            self.op(b't').op(b'R')
        }
    }

    struct Spec<'a> {
        name: &'a str,
        class: &'a str,
        shape: &'a [usize],
        data: Vec<u8>,
    }

    fn spec<'a>(name: &'a str, class: &'a str, shape: &'a [usize], values: &[f32]) -> Spec<'a> {
        let data = match class {
            "FloatStorage" => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            "HalfStorage" => values
                .iter()
                .flat_map(|&v| f16_bits(v).to_le_bytes())
                .collect(),
            "BFloat16Storage" => values
                .iter()
                .flat_map(|&v| ((v.to_bits() >> 16) as u16).to_le_bytes())
                .collect(),
            _ => values
                .iter()
                .flat_map(|&v| (v as i64).to_le_bytes())
                .collect(),
        };
        Spec {
            name,
            class,
            shape,
            data,
        }
    }

    /// IEEE half bits of a normal f32 that is exact in half precision (test values only).
    fn f16_bits(v: f32) -> u16 {
        let bits = v.to_bits();
        let sign = ((bits >> 16) & 0x8000) as u16;
        let exponent = ((bits >> 23) & 0xff) as i32 - 127 + 15;
        assert!((1..31).contains(&exponent), "{v} is not a normal half");
        sign | ((exponent as u16) << 10) | ((bits >> 13) & 0x3ff) as u16
    }

    /// A state dict pickle over `specs` (nested under `wrap` keys, outermost first).
    fn state_dict(specs: &[Spec], wrap: &[&str]) -> Vec<u8> {
        let mut p = Pickle::default();
        p.op(0x80).op(2);
        for key in wrap {
            p.op(b'}').str(key);
        }
        p.global("collections", "OrderedDict")
            .op(b')')
            .op(b'R')
            .op(b'(');
        for (i, s) in specs.iter().enumerate() {
            let numel = s.shape.iter().product();
            p.str(s.name)
                .tensor(s.class, &i.to_string(), numel, s.shape);
        }
        p.op(b'u');
        for _ in wrap {
            p.op(b's');
        }
        p.op(b'.');
        p.0
    }

    /// A zip archive laid out as torch.save lays it out.
    fn archive(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
        use std::io::Write;
        let mut out = Cursor::new(Vec::new());
        let mut zip = zip::ZipWriter::new(&mut out);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, data) in entries {
            zip.start_file(name.as_str(), options).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
        out.into_inner()
    }

    fn checkpoint(specs: &[Spec], wrap: &[&str]) -> Vec<u8> {
        archive(&checkpoint_entries(specs, wrap))
    }

    fn checkpoint_entries(specs: &[Spec], wrap: &[&str]) -> Vec<(String, Vec<u8>)> {
        let mut entries = vec![
            ("archive/data.pkl".to_string(), state_dict(specs, wrap)),
            ("archive/byteorder".to_string(), b"little".to_vec()),
        ];
        for (i, s) in specs.iter().enumerate() {
            entries.push((format!("archive/data/{i}"), s.data.clone()));
        }
        entries
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn reads_f32_f16_and_bf16_storages() {
        let dir = tempfile::tempdir().unwrap();
        let specs = [
            spec(
                "a.weight",
                "FloatStorage",
                &[2, 3],
                &[1.0, -2.0, 3.5, 0.25, 5.0, 6.0],
            ),
            spec("a.bias", "HalfStorage", &[2], &[0.5, -1.5]),
            spec("b", "BFloat16Storage", &[1, 2, 1, 1], &[2.0, -0.125]),
        ];
        let path = write(dir.path(), "x.pth", &checkpoint(&specs, &[]));
        assert!(is_pth(&path));
        let ckpt = PthCheckpoint::open(&path).unwrap();
        assert_eq!(ckpt.nested_under(), None);
        let infos = ckpt.infos();
        assert_eq!(infos[0].dtype, DType::F32);
        assert_eq!(infos[1].dtype, DType::F16);
        assert_eq!(infos[2].dtype, DType::BF16);
        assert_eq!(infos[2].shape, [1, 2, 1, 1]);
        let tensors = ckpt.tensors().unwrap();
        assert_eq!(tensors[0].0, "a.weight");
        assert_eq!(values(&tensors[0].1), [1.0, -2.0, 3.5, 0.25, 5.0, 6.0]);
        assert_eq!(values(&tensors[1].1), [0.5, -1.5]);
        assert_eq!(values(&tensors[2].1), [2.0, -0.125]);
    }

    #[test]
    fn finds_nested_state_dicts_and_strips_module_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let specs = [
            spec("module.1.weight", "FloatStorage", &[1], &[7.0]),
            spec("module.1.bias", "FloatStorage", &[1], &[8.0]),
        ];
        let path = write(
            dir.path(),
            "n.pth",
            &checkpoint(&specs, &["model", "state_dict"]),
        );
        let ckpt = PthCheckpoint::open(&path).unwrap();
        assert_eq!(ckpt.nested_under(), Some("model.state_dict"));
        let names: Vec<_> = ckpt.infos().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["1.weight", "1.bias"]);
    }

    #[test]
    fn errors_name_the_file_and_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let check = |name: &str, bytes: &[u8], wanted: &str| {
            let path = write(dir.path(), name, bytes);
            let err = PthCheckpoint::open(&path).unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
            assert!(err.contains(wanted), "{name}: {err}");
        };
        check("garbage.pth", b"this is not a model", "not a zip archive");
        check("empty.pth", b"", "the file is empty");
        check("legacy.pth", &[0x80, 0x02, 0x8a, 0x0a], "legacy (pre-1.6)");
        check(
            "nopkl.pth",
            &archive(&[("x/version".into(), b"3".to_vec())]),
            "no data.pkl in the archive",
        );
        let long = [spec("steps", "LongStorage", &[1], &[3.0])];
        check(
            "long.pth",
            &checkpoint(&long, &[]),
            "unsupported storage type LongStorage",
        );
        let mut bad_pickle = state_dict(&[], &[]);
        bad_pickle.insert(2, 0xff);
        check(
            "op.pth",
            &archive(&[("a/data.pkl".into(), bad_pickle)]),
            "unsupported pickle opcode 0xff",
        );
        let mut no_tensors = Pickle::default();
        no_tensors
            .op(0x80)
            .op(2)
            .op(b'}')
            .str("epoch")
            .int(3)
            .op(b's')
            .op(b'.');
        check(
            "epoch.pth",
            &archive(&[("a/data.pkl".into(), no_tensors.0)]),
            "no state dict of tensors",
        );
        let mut missing = checkpoint_entries(&[spec("w", "FloatStorage", &[2], &[1.0, 2.0])], &[]);
        missing.retain(|(name, _)| !name.contains("/data/"));
        check(
            "missing.pth",
            &archive(&missing),
            "storage archive/data/0 is missing",
        );
        let mut big_endian = checkpoint_entries(&[spec("w", "FloatStorage", &[1], &[1.0])], &[]);
        big_endian[1].1 = b"big".to_vec();
        check("be.pth", &archive(&big_endian), "only little-endian");
    }

    #[test]
    fn absurd_sizes_are_refused_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        // The pickle claims a 2^40-element tensor; the archive holds 8 bytes.
        let mut p = Pickle::default();
        p.op(0x80).op(2).op(b'}').str("huge");
        p.global("torch._utils", "_rebuild_tensor_v2")
            .op(b'(')
            .op(b'(');
        p.str("storage")
            .global("torch", "FloatStorage")
            .str("0")
            .str("cpu");
        p.op(0x8a).op(6).0.extend([0, 0, 0, 0, 0, 1]);
        p.op(b't').op(b'Q').int(0);
        p.op(b'(').op(0x8a).op(6).0.extend([0, 0, 0, 0, 0, 1]);
        p.op(b't')
            .op(b'(')
            .int(1)
            .op(b't')
            .op(0x89)
            .op(b'N')
            .op(b't')
            .op(b'R');
        p.op(b's').op(b'.');
        let bytes = archive(&[
            ("a/data.pkl".into(), p.0),
            ("a/data/0".into(), vec![0u8; 8]),
        ]);
        let path = write(dir.path(), "huge.pth", &bytes);
        let err = PthCheckpoint::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("huge.pth") && err.contains("tensor huge"),
            "{err}"
        );
        assert!(err.contains("archive holds 8"), "{err}");
    }

    #[test]
    fn shared_memo_objects_are_not_copied() {
        // Each step builds a tuple of two references to the previous one: 2^60 leaves if
        // copied, 60 small tuples when shared.
        let mut p = Pickle::default();
        p.op(0x80).op(2).op(b')').op(b'q').op(0);
        for i in 0..60u8 {
            p.op(b'h').op(i).op(b'h').op(i).op(0x86).op(b'q').op(i + 1);
        }
        p.op(b'.');
        let obj = Machine::default().run(&p.0).unwrap();
        assert!(matches!(obj, Obj::Tuple(_)));
    }

    #[test]
    fn non_contiguous_layouts_are_refused() {
        assert!(check_contiguous(&[2, 3], &[3, 1]).is_ok());
        assert!(check_contiguous(&[64, 1, 3, 3], &[9, 9, 3, 1]).is_ok());
        assert!(check_contiguous(&[2, 3], &[1, 2]).is_err());
    }

    // -- The shared real files (skipped loudly without ../shared/models or DREAMD_MODELS).

    use crate::engine::taesd::candle::TaesdDecoderModel;
    use crate::engine::taesd::weights::{Part, WeightFile};
    use crate::engine::taesd::TaesdEncoderModel;
    use crate::latent::{Latent, LatentBatch, LatentShape};
    use crate::test_weights::shared_file as test_file;

    fn f32_file(path: &Path) -> Vec<f32> {
        std::fs::read(path)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    #[test]
    fn upstream_taef2_archives_list_the_expected_tensors() {
        for (part, params, first, last) in [
            (
                "decoder",
                1_338_499,
                ("1.weight", vec![64, 32, 3, 3]),
                ("19.bias", vec![3]),
            ),
            (
                "encoder",
                1_338_528,
                ("0.weight", vec![64, 3, 3, 3]),
                ("14.bias", vec![32]),
            ),
        ] {
            let Some(path) = test_file(&format!("taesd-pth/taef2_{part}.pth")) else {
                return;
            };
            let ckpt = PthCheckpoint::open(&path).unwrap();
            let infos = ckpt.infos();
            assert_eq!(infos.len(), 79, "{part}");
            assert!(infos.iter().all(|i| i.dtype == DType::F16), "{part}");
            assert_eq!(infos.iter().map(|i| i.elem_count()).sum::<usize>(), params);
            assert_eq!(
                (infos[0].name.as_str(), infos[0].shape.clone()),
                (first.0, first.1)
            );
            let end = &infos[78];
            assert_eq!((end.name.as_str(), end.shape.clone()), (last.0, last.1));
            // The GroupNorm mid-blocks: three per half.
            let pools: Vec<_> = infos
                .iter()
                .filter(|i| i.name.ends_with(".pool.0.weight"))
                .map(|i| (i.name.as_str(), i.shape.clone()))
                .collect();
            let blocks = if part == "decoder" {
                [3, 4, 5]
            } else {
                [11, 12, 13]
            };
            let expected: Vec<_> = blocks
                .iter()
                .map(|b| (format!("{b}.pool.0.weight"), vec![256, 64, 1, 1]))
                .collect();
            let expected: Vec<_> = expected
                .iter()
                .map(|(n, s)| (n.as_str(), s.clone()))
                .collect();
            assert_eq!(pools, expected);
            assert!(ckpt.skipped().is_empty(), "{:?}", ckpt.skipped());
            let tensors = ckpt.tensors().unwrap();
            assert_eq!(tensors.len(), 79);
            assert!(tensors.iter().all(|(_, t)| t.dtype() == DType::F16));
        }
    }

    #[test]
    fn shared_pth_weights_equal_the_safetensors_within_fp16_rounding() {
        for part in [Part::Decoder, Part::Encoder] {
            let stem = match part {
                Part::Decoder => "taesd_decoder",
                Part::Encoder => "taesd_encoder",
            };
            let (Some(pth), Some(st)) = (
                test_file(&format!("taesd-pth/{stem}.pth")),
                test_file(&format!("taesd/{stem}.safetensors")),
            ) else {
                return;
            };
            let a = WeightFile::load(&pth, part).unwrap();
            let b = WeightFile::load(&st, part).unwrap();
            let infos = PthCheckpoint::open(&pth).unwrap().infos();
            assert_eq!(infos.len(), 67, "{stem}");
            for info in infos {
                let shape = b
                    .shape(&info.name)
                    .unwrap_or_else(|| panic!("{}", info.name))
                    .to_vec();
                assert_eq!(info.shape, shape, "{}", info.name);
                let diff = crate::test_weights::max_abs_diff(
                    &a.values(&info.name, &shape).unwrap(),
                    &b.values(&info.name, &shape).unwrap(),
                );
                assert!(diff <= 1e-4, "{stem} {}: {diff}", info.name);
            }
        }
    }

    #[test]
    fn shared_pth_decodes_like_the_safetensors_and_the_golden_output() {
        let (Some(pth), Some(st), Some(input), Some(golden)) = (
            test_file("taesd-pth/taesd_decoder.pth"),
            test_file("taesd/taesd_decoder.safetensors"),
            test_file("golden/taesd_dec_in_4x8x8_f32le.bin"),
            test_file("golden/taesd_dec_out_3x64x64_f32le.bin"),
        ) else {
            return;
        };
        let shape = LatentShape::new(4, 8, 8);
        let mut batch = LatentBatch::with_capacity(shape, 1);
        batch
            .push(&Latent::new(shape, f32_file(&input)).unwrap())
            .unwrap();
        let decode = |path: &Path| {
            TaesdDecoderModel::load(path, "taesd", crate::engine::Device::Cpu)
                .unwrap()
                .decode_raw(&batch)
                .unwrap()
        };
        let from_pth = decode(&pth);
        let from_st = decode(&st);
        let golden = f32_file(&golden);
        assert!(
            crate::test_weights::max_abs_diff(&from_pth, &from_st) <= 2e-3,
            "{}",
            crate::test_weights::max_abs_diff(&from_pth, &from_st)
        );
        assert!(
            crate::test_weights::max_abs_diff(&from_pth, &golden) <= 2e-3,
            "{}",
            crate::test_weights::max_abs_diff(&from_pth, &golden)
        );
        // The encoder too (CPU engine path), on a small picture.
        let (Some(enc_pth), Some(enc_st)) = (
            test_file("taesd-pth/taesd_encoder.pth"),
            test_file("taesd/taesd_encoder.safetensors"),
        ) else {
            return;
        };
        let picture = image::RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 4) as u8, 90])
        });
        let encode = |path: &Path| {
            TaesdEncoderModel::load(
                path,
                crate::engine::Device::Cpu,
                crate::config::Precision::Exact,
            )
            .unwrap()
            .encode(std::slice::from_ref(&picture))
            .unwrap()
            .remove(0)
        };
        let (a, b) = (encode(&enc_pth), encode(&enc_st));
        assert!(
            crate::test_weights::max_abs_diff(a.data(), b.data()) <= 2e-3,
            "{}",
            crate::test_weights::max_abs_diff(a.data(), b.data())
        );
    }

    #[test]
    fn diffusers_key_layout_loads_from_pth() {
        let dir = tempfile::tempdir().unwrap();
        let specs = [
            spec(
                "decoder.layers.0.weight",
                "FloatStorage",
                &[1, 2],
                &[1.0, 2.0],
            ),
            spec("encoder.layers.14.weight", "HalfStorage", &[1], &[0.5]),
        ];
        let path = write(dir.path(), "diffusers.pth", &checkpoint(&specs, &[]));
        let decoder = WeightFile::load(&path, Part::Decoder).unwrap();
        assert_eq!(decoder.values("1.weight", &[1, 2]).unwrap(), [1.0, 2.0]);
        assert!(!decoder.contains("14.weight"));
        let encoder = WeightFile::load(&path, Part::Encoder).unwrap();
        assert_eq!(encoder.values("14.weight", &[1]).unwrap(), [0.5]);
        // Errors from weights.rs name the .pth file and the cause.
        let bad = write(dir.path(), "bad.pth", b"junk");
        let err = WeightFile::load(&bad, Part::Decoder)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.pth") && err.contains("not a zip archive"),
            "{err}"
        );
    }

    #[test]
    fn upstream_taef2_decoder_matches_golden() {
        let (Some(pth), Some(input), Some(golden)) = (
            test_file("taesd-pth/taef2_decoder.pth"),
            test_file("golden/taef2_dec_in_32x8x8_f32le.bin"),
            test_file("golden/taef2_dec_out_3x64x64_f32le.bin"),
        ) else {
            return;
        };
        let shape = LatentShape::new(32, 8, 8);
        let mut batch = LatentBatch::with_capacity(shape, 1);
        batch
            .push(&Latent::new(shape, f32_file(&input)).unwrap())
            .unwrap();
        let decoder = TaesdDecoderModel::load(&pth, "taef2", crate::engine::Device::Cpu).unwrap();
        assert_eq!(crate::engine::Decoder::latent_channels(&decoder), 32);
        let got = decoder.decode_raw(&batch).unwrap();
        let diff = crate::test_weights::max_abs_diff(&got, &f32_file(&golden));
        assert!(diff <= 2e-3, "taef2: max abs error {diff}");
        // The encoder's mid-blocks load too, and make 32-channel latents.
        let Some(enc) = test_file("taesd-pth/taef2_encoder.pth") else {
            return;
        };
        let weights = WeightFile::load(&enc, Part::Encoder).unwrap();
        let vb = weights.var_builder(&candle_core::Device::Cpu);
        let encoder = crate::engine::taesd::candle::TaesdEncoder::new(32, vb).unwrap();
        let picture = Tensor::full(0.5f32, (1, 3, 64, 64), &candle_core::Device::Cpu).unwrap();
        let latent = candle_core::Module::forward(&encoder, &picture).unwrap();
        assert_eq!(latent.dims(), [1, 32, 8, 8]);
        // The CPU engine, which has no mid-block yet, refuses TAEF2 instead of decoding wrongly.
        let weights = WeightFile::load(&pth, Part::Decoder).unwrap();
        let err = crate::engine::taesd::cpu::TaesdCpuDecoder::new(
            "taef2",
            &weights,
            crate::config::Precision::Exact,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("taef2_decoder.pth") && err.contains("GroupNorm mid-block"),
            "{err}"
        );
    }
}
