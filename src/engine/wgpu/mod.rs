//! The portable GPU backend: TAESD on any GPU wgpu can drive (Vulkan on Linux and Windows, Metal
//! on macOS, DX12 on Windows), for AMD, Intel and Apple GPUs and NVIDIA GPUs without the CUDA
//! toolkit, with hand-written WGSL kernels from the top-level `shaders/` folder.
//!
//! This file chooses the adapter and opens the device ([`GpuContext`]); [`kernels`] compiles the
//! shaders into pipelines and uploads weights; [`network`] runs a list of layers over reused
//! activation buffers in as few submissions as the storage-binding limit allows; [`decoder`] and
//! [`encoder`] build TAESD's two halves from a weight file.
//!
//! `generation.device = "auto"` takes a wgpu adapter only when it is a real GPU
//! ([`real_adapter`]): a software rasteriser (Mesa's llvmpipe/lavapipe, adapter type `Cpu`) is
//! slower than dreamd's own CPU networks. `"wgpu"` accepts one, with a warning; the tests use
//! lavapipe to check the kernels on machines without a GPU.
//!
//! Every wait on the GPU has a deadline ([`GpuContext::wait_limit`]) and ends in an error, and
//! GPU validation and out-of-memory errors are caught in error scopes and returned: nothing here
//! panics on a GPU result.

pub mod decoder;
pub mod encoder;
pub mod kernels;
pub mod network;

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// How long one wait on the GPU (a decode's submission, a buffer mapping, device creation) may
/// take before it is an error. Generous: a software adapter decodes a full-size batch slowly.
pub const WAIT_LIMIT: Duration = Duration::from_secs(300);

/// Why the wgpu backend failed.
#[derive(Debug, thiserror::Error)]
pub enum WgpuError {
    /// No adapter fits the request; `found` lists what there was.
    #[error("no usable wgpu adapter: {wanted}; found {found}")]
    NoAdapter { wanted: String, found: String },
    #[error("wgpu adapter {adapter}: cannot open a device: {error}")]
    RequestDevice { adapter: String, error: String },
    /// The adapter's limit is below what the kernels need.
    #[error(
        "wgpu adapter {adapter}: limit {limit} is {have}, the TAESD kernels need at least {need}"
    )]
    Limit {
        adapter: String,
        limit: &'static str,
        have: u64,
        need: u64,
    },
    #[error("wgpu shader {shader} on {adapter}: {error}")]
    Shader {
        shader: &'static str,
        adapter: String,
        error: String,
    },
    /// A validation or out-of-memory error, or a failed mapping.
    #[error("wgpu {what} on {adapter}: {error}")]
    Gpu {
        what: String,
        adapter: String,
        error: String,
    },
    #[error("wgpu {what} on {adapter} did not finish within {limit:?}")]
    Timeout {
        what: String,
        adapter: String,
        limit: Duration,
    },
    /// Weights or inputs the kernels cannot take.
    #[error("{0}")]
    Model(String),
}

/// Which adapters may be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterPolicy {
    /// Real GPUs only (`generation.device = "auto"`).
    RealOnly,
    /// Software adapters too, as a last resort (`"wgpu"`, and the tests).
    AllowSoftware,
}

/// What the chosen adapter is, for logs and `dreamd bench`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AdapterSummary {
    /// The adapter's name, e.g. `AMD Radeon RX 7800 XT` or `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// `vulkan`, `metal` or `dx12`.
    pub backend: String,
    /// `discrete`, `integrated`, `virtual`, `cpu` (software) or `other`.
    pub device_type: String,
    /// Driver name and version, as the driver reports them.
    pub driver: String,
    /// Whether the device stores activations as f16 when asked (`SHADER_F16`).
    pub f16: bool,
}

impl AdapterSummary {
    fn of(info: &wgpu::AdapterInfo) -> Self {
        let driver = [info.driver.as_str(), info.driver_info.as_str()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        AdapterSummary {
            name: info.name.clone(),
            backend: info.backend.to_str().to_string(),
            device_type: device_type_name(info.device_type).to_string(),
            driver,
            f16: false,
        }
    }

    /// Whether this is a software adapter (type `Cpu`).
    pub fn is_software(&self) -> bool {
        self.device_type == "cpu"
    }
}

impl fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, {}", self.name, self.backend, self.device_type)?;
        if !self.driver.is_empty() {
            write!(f, ", {}", self.driver)?;
        }
        f.write_str(")")
    }
}

fn device_type_name(t: wgpu::DeviceType) -> &'static str {
    match t {
        wgpu::DeviceType::DiscreteGpu => "discrete",
        wgpu::DeviceType::IntegratedGpu => "integrated",
        wgpu::DeviceType::VirtualGpu => "virtual",
        wgpu::DeviceType::Cpu => "cpu",
        wgpu::DeviceType::Other => "other",
    }
}

/// Preference among adapter types: discrete first, software last.
fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// The instance over the native backends this build has (Vulkan, Metal, DX12; `WGPU_BACKEND`
/// and the other `WGPU_*` variables narrow it).
fn instance() -> wgpu::Instance {
    let desc = wgpu::InstanceDescriptor {
        backends: wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    };
    wgpu::Instance::new(desc.with_env())
}

/// Names the adapter to use: only adapters whose name contains it (any case) are considered.
pub const ADAPTER_NAME_ENV: &str = "WGPU_ADAPTER_NAME";

/// Every adapter the instance finds, best first (see [`rank`]).
fn adapters(instance: &wgpu::Instance) -> Result<Vec<wgpu::Adapter>, WgpuError> {
    let mut found = block_on(
        instance.enumerate_adapters(wgpu::Backends::all()),
        WAIT_LIMIT,
        "adapter enumeration",
    )?;
    found.sort_by_key(|a| rank(a.get_info().device_type));
    Ok(found)
}

/// `$WGPU_ADAPTER_NAME` in lower case, when set and not empty.
fn wanted_name() -> Option<String> {
    std::env::var(ADAPTER_NAME_ENV)
        .ok()
        .map(|n| n.trim().to_lowercase())
        .filter(|n| !n.is_empty())
}

/// Whether `adapter` passes `$WGPU_ADAPTER_NAME` (every adapter does when it is unset).
fn name_matches(adapter: &wgpu::Adapter, wanted: Option<&str>) -> bool {
    wanted.is_none_or(|w| adapter.get_info().name.to_lowercase().contains(w))
}

/// The adapters found, for error messages: `none` or `name (backend, type), …`.
fn found_list(adapters: &[wgpu::Adapter]) -> String {
    if adapters.is_empty() {
        return "none (is a Vulkan, Metal or DX12 driver installed? On Linux: the GPU's Vulkan \
                ICD, e.g. mesa-vulkan-drivers)"
            .to_string();
    }
    adapters
        .iter()
        .map(|a| AdapterSummary::of(&a.get_info()).to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The best real (non-software) GPU adapter, if there is one: what `generation.device = "auto"`
/// takes when no CUDA device answers.
pub fn real_adapter() -> Option<AdapterSummary> {
    let instance = instance();
    let found = adapters(&instance).ok()?;
    let wanted = wanted_name();
    found
        .iter()
        .filter(|a| name_matches(a, wanted.as_deref()))
        .map(|a| AdapterSummary::of(&a.get_info()))
        .find(|s| !s.is_software())
}

/// An open wgpu device and its queue, with what it is.
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: AdapterSummary,
    limits: wgpu::Limits,
    /// The longest one wait may take, in nanoseconds (a test shortens it).
    wait_limit: AtomicU64,
    /// The pipelines, compiled on first use.
    kernels: Mutex<Option<Arc<kernels::Kernels>>>,
}

impl fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.adapter)
            .finish_non_exhaustive()
    }
}

/// The storage a workgroup of conv3x3.wgsl uses (the largest kernel).
const WORKGROUP_STORAGE_NEEDED: u32 = 864 * 4 + 576 * 16;

impl GpuContext {
    /// Opens a device on the best adapter `policy` allows: discrete, then integrated, virtual
    /// and other GPUs, then (with [`AdapterPolicy::AllowSoftware`]) a software adapter, with a
    /// warning. The error names every adapter found.
    pub fn open(policy: AdapterPolicy) -> Result<GpuContext, WgpuError> {
        let instance = instance();
        let found = adapters(&instance)?;
        let name = wanted_name();
        let chosen = found.iter().find(|a| {
            name_matches(a, name.as_deref())
                && (policy == AdapterPolicy::AllowSoftware
                    || a.get_info().device_type != wgpu::DeviceType::Cpu)
        });
        let Some(adapter) = chosen else {
            let mut wanted = match policy {
                AdapterPolicy::RealOnly => {
                    "a GPU adapter (software adapters are not used by generation.device = \"auto\"; \
                     \"wgpu\" accepts them)"
                }
                AdapterPolicy::AllowSoftware => "any adapter",
            }
            .to_string();
            if let Some(name) = &name {
                wanted += &format!(" whose name contains {name:?} (${ADAPTER_NAME_ENV})");
            }
            return Err(WgpuError::NoAdapter {
                wanted,
                found: found_list(&found),
            });
        };
        let mut summary = AdapterSummary::of(&adapter.get_info());
        summary.f16 = adapter.features().contains(wgpu::Features::SHADER_F16);
        if summary.is_software() {
            tracing::warn!(
                adapter = %summary,
                "wgpu: using a software adapter (the CPU networks of generation.device = \"cpu\" \
                 are faster; this is meant for tests)"
            );
        }
        let limits = adapter.limits();
        check_limits(&summary, &limits)?;
        // f16 activations where the adapter has them (generation.precision = "fast").
        let desc = wgpu::DeviceDescriptor {
            label: Some("dreamd"),
            required_features: adapter.features() & wgpu::Features::SHADER_F16,
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) = block_on(adapter.request_device(&desc), WAIT_LIMIT, "device")?
            .map_err(|e| WgpuError::RequestDevice {
                adapter: summary.to_string(),
                error: e.to_string(),
            })?;
        // Errors outside an error scope are logged, never a panic (wgpu's default handler).
        let name = summary.to_string();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            tracing::error!(adapter = %name, "wgpu error outside an error scope: {e}");
        }));
        tracing::info!(adapter = %summary, "wgpu: opened the device");
        Ok(GpuContext {
            device,
            queue,
            adapter: summary,
            limits,
            wait_limit: AtomicU64::new(WAIT_LIMIT.as_nanos() as u64),
            kernels: Mutex::new(None),
        })
    }

    /// The process's one context for `policy` (decoder and encoder share it), opened on first
    /// use. A software context already open does not serve [`AdapterPolicy::RealOnly`].
    pub fn shared(policy: AdapterPolicy) -> Result<Arc<GpuContext>, WgpuError> {
        static SHARED: Mutex<Option<Arc<GpuContext>>> = Mutex::new(None);
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(context) = shared.as_ref() {
            if policy == AdapterPolicy::AllowSoftware || !context.adapter.is_software() {
                return Ok(context.clone());
            }
        }
        let context = Arc::new(GpuContext::open(policy)?);
        *shared = Some(context.clone());
        Ok(context)
    }

    /// What the device runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.adapter
    }

    /// Whether the device can store activations as f16 (`SHADER_F16`).
    pub fn has_f16(&self) -> bool {
        self.device.features().contains(wgpu::Features::SHADER_F16)
    }

    /// The device's limits (the adapter's own).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// The compiled kernels (compiled on the first call, then shared).
    pub fn kernels(&self) -> Result<Arc<kernels::Kernels>, WgpuError> {
        let mut kernels = self.kernels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = kernels.as_ref() {
            return Ok(k.clone());
        }
        let k = Arc::new(kernels::Kernels::new(self)?);
        *kernels = Some(k.clone());
        Ok(k)
    }

    /// The longest one wait on the GPU may take.
    pub fn wait_limit(&self) -> Duration {
        Duration::from_nanos(self.wait_limit.load(Ordering::Relaxed))
    }

    /// Sets the longest one wait may take (tests force timeouts with it).
    #[cfg(test)]
    pub(crate) fn set_wait_limit(&self, limit: Duration) {
        self.wait_limit
            .store(limit.as_nanos() as u64, Ordering::Relaxed);
    }

    pub(crate) fn device(&self) -> &wgpu::Device {
        &self.device
    }

    pub(crate) fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// Runs `f`, which creates or records GPU work, inside validation and out-of-memory error
    /// scopes, and returns the first error it caused as [`WgpuError::Gpu`] naming `what`.
    pub(crate) fn checked<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T, WgpuError> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        let errors = [
            block_on(validation.pop(), self.wait_limit(), what)?,
            block_on(oom.pop(), self.wait_limit(), what)?,
        ];
        match errors.into_iter().flatten().next() {
            Some(error) => Err(self.error(what, error)),
            None => Ok(value),
        }
    }

    /// [`WgpuError::Gpu`] about `what` on this adapter.
    pub(crate) fn error(&self, what: &str, error: impl fmt::Display) -> WgpuError {
        WgpuError::Gpu {
            what: what.to_string(),
            adapter: self.adapter.to_string(),
            error: error.to_string(),
        }
    }

    /// Waits until submission `index` has run, at most [`GpuContext::wait_limit`].
    pub(crate) fn wait(&self, index: wgpu::SubmissionIndex, what: &str) -> Result<(), WgpuError> {
        let poll = wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: Some(self.wait_limit()),
        };
        match self.device.poll(poll) {
            Ok(_) => Ok(()),
            Err(wgpu::PollError::Timeout) => Err(WgpuError::Timeout {
                what: what.to_string(),
                adapter: self.adapter.to_string(),
                limit: self.wait_limit(),
            }),
            Err(e) => Err(self.error(what, e)),
        }
    }

    /// Reads back `size` bytes of `buffer` (usage `MAP_READ`) once submission `index` has run:
    /// maps it, waits (with the deadline), copies the bytes out and unmaps it.
    pub(crate) fn read(
        &self,
        buffer: &wgpu::Buffer,
        size: u64,
        index: wgpu::SubmissionIndex,
        what: &str,
    ) -> Result<Vec<u8>, WgpuError> {
        let slice = buffer.slice(..size);
        let (sender, receiver) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |result| {
            // The receiver waits below; if it is gone there is no one to tell.
            let _ = sender.send(result);
        });
        let mapped =
            self.wait(index, what)
                .and_then(|()| match receiver.recv_timeout(self.wait_limit()) {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(self.error(what, format!("mapping the result: {e}"))),
                    Err(_) => Err(WgpuError::Timeout {
                        what: format!("{what} (mapping the result)"),
                        adapter: self.adapter.to_string(),
                        limit: self.wait_limit(),
                    }),
                });
        if let Err(e) = mapped {
            // Cancels a mapping still pending, so the buffer is not left mapped.
            buffer.unmap();
            return Err(e);
        }
        let bytes = slice
            .get_mapped_range()
            .map(|view| view.to_vec())
            .map_err(|e| self.error(what, format!("reading the mapped result: {e}")));
        buffer.unmap();
        bytes
    }
}

/// Refuses an adapter whose limits are below what the kernels use.
fn check_limits(adapter: &AdapterSummary, limits: &wgpu::Limits) -> Result<(), WgpuError> {
    let needs: [(&'static str, u64, u64); 4] = [
        (
            "max_compute_workgroup_storage_size",
            u64::from(limits.max_compute_workgroup_storage_size),
            u64::from(WORKGROUP_STORAGE_NEEDED),
        ),
        (
            "max_compute_invocations_per_workgroup",
            u64::from(limits.max_compute_invocations_per_workgroup),
            256,
        ),
        (
            "max_storage_buffers_per_shader_stage",
            u64::from(limits.max_storage_buffers_per_shader_stage),
            5,
        ),
        // One hidden activation of one small picture must fit in a binding.
        (
            "max_storage_buffer_binding_size",
            limits.max_storage_buffer_binding_size,
            1 << 20,
        ),
    ];
    for (limit, have, need) in needs {
        if have < need {
            return Err(WgpuError::Limit {
                adapter: adapter.to_string(),
                limit,
                have,
                need,
            });
        }
    }
    Ok(())
}

/// Wakes the thread that polls a future.
struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `future` on this thread until it is ready, at most `limit` (wgpu's native futures are
/// ready at once or after a device poll elsewhere); [`WgpuError::Timeout`] after that.
pub(crate) fn block_on<F: Future>(
    future: F,
    limit: Duration,
    what: &str,
) -> Result<F::Output, WgpuError> {
    let deadline = Instant::now() + limit;
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut context) {
            return Ok(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(WgpuError::Timeout {
                what: what.to_string(),
                adapter: "(no device yet)".to_string(),
                limit,
            });
        }
        std::thread::park_timeout((deadline - now).min(Duration::from_millis(10)));
    }
}

#[cfg(test)]
pub(crate) mod tests;
