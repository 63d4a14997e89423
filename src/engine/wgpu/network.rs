//! A TAESD network on the GPU: a list of layers run over a batch in one command submission.
//!
//! Activations are NCHW in three storage buffers that take turns (a residual block needs its
//! input, one hidden activation and its output alive at once), plus the input buffer; hidden
//! activations are f32, or f16 where asked and the device can ([`Storage`]), the input and the
//! last layer's output always f32. They
//! are made for the input size and the number of pictures per pass, and kept for the next call
//! of the same size, together with the bind groups and the per-layer uniforms, so a steady
//! stream of same-size batches allocates nothing on the GPU.
//!
//! A pass holds as many pictures as fit the largest activation in one storage binding
//! (`max_storage_buffer_binding_size`: 128 MiB on many adapters; one 64×256×512 f32 activation
//! is 32 MiB, so a batch of 10 at 512×256 runs in three passes, two with f16). Every pass is
//! recorded into the
//! same command encoder — the batch's inputs are uploaded once and each pass copies its slice in,
//! and each pass copies its result out into one read-back buffer — so a whole batch is one
//! submission and one wait.

use std::num::NonZeroU64;
use std::sync::{Arc, Mutex};

use super::kernels::{
    buffer, bytes_f32, f32_bytes, flags, u32_bytes, ConvMode, ConvParams, ConvWeights, Kernels,
    Storage, Types, RGB8_GROUP, RGB8_GROUPS_X, TILE_H, TILE_W,
};
use super::{GpuContext, WgpuError};

/// One stage of a network.
#[derive(Debug)]
pub enum Layer {
    /// A stride-1 convolution (after nearest 2× upsampling for [`ConvMode::Upsample`]).
    Conv {
        conv: ConvWeights,
        mode: ConvMode,
        relu: bool,
        /// `tanh(x/3)·3` on the input first (the decoder's soft clamp of the latents).
        clamp: bool,
    },
    /// TAESD's residual block: `ReLU(conv(ReLU(conv(ReLU(conv(x))))) + x)`.
    Block([ConvWeights; 3]),
    /// A stride-2 convolution without bias or activation (encoder).
    Down(ConvWeights),
}

/// What a run reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readout {
    /// The last layer's f32 output, `[N][C][H][W]`.
    Raw,
    /// The last layer's 3 channels scaled to bytes by `to_rgb8.wgsl`: one little-endian `u32`
    /// per pixel, `r | g << 8 | b << 16`, `[N][H][W]`.
    Rgb8,
}

/// Where an activation lives while the plan is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Input,
    Act(usize),
}

/// One convolution dispatch of the plan.
struct Step {
    pipeline: wgpu::ComputePipeline,
    params: ConvParams,
    oc_blocks: u32,
    bind_group: wgpu::BindGroup,
}

/// The GPU buffers and recorded bindings for one input size and pictures-per-pass.
struct Scratch {
    /// Input `(height, width)` it was made for.
    size: (usize, usize),
    /// Pictures per pass it holds.
    capacity: usize,
    input: wgpu::Buffer,
    acts: [wgpu::Buffer; 3],
    /// Where the last layer writes.
    last: usize,
    steps: Vec<Step>,
    /// Keeps the uniforms alive with the bind groups that use them.
    _params: wgpu::Buffer,
    /// `to_rgb8.wgsl`'s output and bindings.
    packed: wgpu::Buffer,
    rgb8: wgpu::BindGroup,
    /// Whole-batch upload and read-back buffers, grown as needed.
    upload: Option<(wgpu::Buffer, u64)>,
    readback: Option<(wgpu::Buffer, u64)>,
}

/// Layers with their kernels on one device, and the scratch buffers of the last size run.
pub struct Network {
    context: Arc<GpuContext>,
    kernels: Arc<Kernels>,
    name: String,
    layers: Vec<Layer>,
    in_channels: usize,
    /// How hidden activations are stored (the input and the last layer's output are f32).
    storage: Storage,
    /// Largest activation (bytes) one binding may hold: the device's limit, smaller in tests.
    binding_limit: u64,
    scratch: Mutex<Option<Scratch>>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("name", &self.name)
            .field("adapter", self.context.adapter())
            .field("layers", &self.layers.len())
            .finish_non_exhaustive()
    }
}

/// Per-picture shapes `(channels, height, width)` through the network.
struct Shapes {
    /// Largest activation (input included), in bytes.
    max_bytes: usize,
    /// The last layer's output.
    out: (usize, usize, usize),
    /// Largest `(height, width)` any layer makes.
    max_size: (usize, usize),
}

impl Network {
    /// A network of `layers` taking `in_channels`-channel input, its hidden activations stored
    /// as `storage` (f16 only where the device has `SHADER_F16`, else f32); `name` labels errors.
    pub fn new(
        context: Arc<GpuContext>,
        name: &str,
        in_channels: usize,
        layers: Vec<Layer>,
        storage: Storage,
    ) -> Result<Network, WgpuError> {
        let storage = match storage {
            Storage::F16 if context.has_f16() => Storage::F16,
            _ => Storage::F32,
        };
        let kernels = context.kernels()?;
        // The shaders index with u32: no binding past 4 GiB, whatever the adapter allows.
        let binding_limit = context
            .limits()
            .max_storage_buffer_binding_size
            .min(context.limits().max_buffer_size)
            .min(u64::from(u32::MAX));
        Ok(Network {
            context,
            kernels,
            name: name.to_string(),
            layers,
            in_channels,
            storage,
            binding_limit,
            scratch: Mutex::new(None),
        })
    }

    /// The device it runs on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.context
    }

    /// Uses at most `bytes` per activation binding (tests force batch splitting with it).
    #[cfg(test)]
    pub(crate) fn set_binding_limit(&mut self, bytes: u64) {
        self.binding_limit = bytes;
        *self.scratch.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// How its hidden activations are stored.
    pub fn storage(&self) -> Storage {
        self.storage
    }

    /// Output shape `(channels, height, width)` of one picture of input size `h × w`.
    pub fn output_shape(&self, h: usize, w: usize) -> (usize, usize, usize) {
        self.shapes(h, w).out
    }

    fn shapes(&self, h: usize, w: usize) -> Shapes {
        let (mut c, mut h, mut w) = (self.in_channels, h, w);
        let mut max_bytes = c * h * w * 4;
        let mut max_size = (h, w);
        for (i, layer) in self.layers.iter().enumerate() {
            let (conv, mode) = match layer {
                Layer::Conv { conv, mode, .. } => (conv, *mode),
                Layer::Block(convs) => (&convs[2], ConvMode::Same),
                Layer::Down(conv) => (conv, ConvMode::Down),
            };
            (h, w) = mode.output_size(h, w);
            c = conv.c_out;
            // The last layer writes f32.
            let size = match i + 1 == self.layers.len() {
                true => 4,
                false => self.storage.bytes(),
            };
            max_bytes = max_bytes.max(c * h * w * size);
            max_size = (max_size.0.max(h), max_size.1.max(w));
        }
        Shapes {
            max_bytes,
            out: (c, h, w),
            max_size,
        }
    }

    /// Pictures per pass for input `h × w`: as many as fit the largest activation in one
    /// binding and the dispatch limits; an error naming the limit when not even one does.
    pub fn per_pass(&self, h: usize, w: usize) -> Result<usize, WgpuError> {
        let shapes = self.shapes(h, w);
        let per_picture = shapes.max_bytes as u64;
        let by_binding = self.binding_limit / per_picture.max(1);
        if by_binding == 0 {
            return Err(WgpuError::Limit {
                adapter: self.context.adapter().to_string(),
                limit: "max_storage_buffer_binding_size",
                have: self.binding_limit,
                need: per_picture,
            });
        }
        let max_groups = u64::from(self.context.limits().max_compute_workgroups_per_dimension);
        let (max_h, max_w) = shapes.max_size;
        let groups = (max_w as u64)
            .div_ceil(u64::from(TILE_W))
            .max((max_h as u64).div_ceil(u64::from(TILE_H)));
        if groups > max_groups {
            return Err(WgpuError::Limit {
                adapter: self.context.adapter().to_string(),
                limit: "max_compute_workgroups_per_dimension",
                have: max_groups,
                need: groups,
            });
        }
        // z = pictures × blocks of 32 output channels.
        let blocks = self
            .layers
            .iter()
            .map(|layer| match layer {
                Layer::Conv { conv, .. } | Layer::Down(conv) => conv.oc_blocks(),
                Layer::Block(convs) => convs.iter().map(ConvWeights::oc_blocks).max().unwrap_or(1),
            })
            .max()
            .unwrap_or(1) as u64;
        let by_groups = max_groups / blocks.max(1);
        Ok(by_binding.min(by_groups).max(1) as usize)
    }

    /// Runs the network on `batch` pictures `[N][in_channels][h][w]` (C-order f32) and reads
    /// back the result as `readout` says (bytes, little-endian). One command submission for the
    /// whole batch; one wait, with the context's deadline.
    pub fn run(
        &self,
        input: &[f32],
        batch: usize,
        h: usize,
        w: usize,
        readout: Readout,
    ) -> Result<Vec<u8>, WgpuError> {
        let in_elems = self.in_channels * h * w;
        if input.len() != batch * in_elems || h == 0 || w == 0 {
            return Err(WgpuError::Model(format!(
                "{}: {} input values for {batch} pictures of {}×{h}×{w}",
                self.name,
                input.len(),
                self.in_channels
            )));
        }
        let (c_out, out_h, out_w) = self.shapes(h, w).out;
        if readout == Readout::Rgb8 && c_out != 3 {
            return Err(WgpuError::Model(format!(
                "{}: RGB output needs 3 channels, the network makes {c_out}",
                self.name
            )));
        }
        if batch == 0 {
            return Ok(Vec::new());
        }
        let per_pass = self.per_pass(h, w)?.min(batch);
        let out_bytes = match readout {
            Readout::Raw => c_out * out_h * out_w * 4,
            Readout::Rgb8 => out_h * out_w * 4,
        } as u64;
        let in_bytes = (in_elems * 4) as u64;

        let mut guard = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let rebuild = match guard.as_ref() {
            Some(s) => s.size != (h, w) || s.capacity < per_pass,
            None => true,
        };
        if rebuild {
            *guard = None;
            *guard = Some(self.scratch_for(h, w, per_pass)?);
        }
        let Some(scratch) = guard.as_mut() else {
            return Err(self.context.error(&self.name, "no scratch buffers"));
        };
        let device = self.context.device();
        let total_in = in_bytes * batch as u64;
        let total_out = out_bytes * batch as u64;
        let what = format!("{} of {batch} pictures of {h}×{w}", self.name);
        let index = self.context.checked(&what, || {
            let upload = grown(&mut scratch.upload, total_in, || {
                buffer(
                    device,
                    "upload",
                    total_in,
                    wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                )
            });
            let readback = grown(&mut scratch.readback, total_out, || {
                buffer(
                    device,
                    "readback",
                    total_out,
                    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                )
            });
            self.context
                .queue()
                .write_buffer(&upload, 0, &f32_bytes(input));
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(&self.name),
            });
            for start in (0..batch).step_by(per_pass) {
                let n = per_pass.min(batch - start);
                encoder.copy_buffer_to_buffer(
                    &upload,
                    in_bytes * start as u64,
                    &scratch.input,
                    0,
                    in_bytes * n as u64,
                );
                {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(&self.name),
                        timestamp_writes: None,
                    });
                    for step in &scratch.steps {
                        let (x, y) = step.params.workgroups();
                        pass.set_pipeline(&step.pipeline);
                        pass.set_bind_group(0, &step.bind_group, &[]);
                        pass.dispatch_workgroups(x, y, n as u32 * step.oc_blocks);
                    }
                    if readout == Readout::Rgb8 {
                        let groups = ((n * out_h * out_w) as u32).div_ceil(RGB8_GROUP);
                        pass.set_pipeline(&self.kernels.rgb8);
                        pass.set_bind_group(0, &scratch.rgb8, &[]);
                        pass.dispatch_workgroups(
                            groups.min(RGB8_GROUPS_X),
                            groups.div_ceil(RGB8_GROUPS_X),
                            1,
                        );
                    }
                }
                let source = match readout {
                    Readout::Raw => &scratch.acts[scratch.last],
                    Readout::Rgb8 => &scratch.packed,
                };
                encoder.copy_buffer_to_buffer(
                    source,
                    0,
                    &readback,
                    out_bytes * start as u64,
                    out_bytes * n as u64,
                );
            }
            self.context.queue().submit([encoder.finish()])
        })?;
        let Some((readback, _)) = scratch.readback.as_ref() else {
            return Err(self.context.error(&what, "no read-back buffer"));
        };
        let bytes = self.context.read(readback, total_out, index, &what);
        if bytes.is_err() {
            // A mapping that timed out or failed may still complete later: the next call makes a
            // fresh read-back buffer rather than meet this one mapped.
            scratch.readback = None;
        }
        bytes
    }

    /// [`Network::run`] with [`Readout::Raw`], as f32 values.
    pub fn run_raw(
        &self,
        input: &[f32],
        batch: usize,
        h: usize,
        w: usize,
    ) -> Result<Vec<f32>, WgpuError> {
        Ok(bytes_f32(&self.run(input, batch, h, w, Readout::Raw)?))
    }

    /// The dispatches for input `h × w`: which buffer each convolution reads and writes.
    fn plan(&self, h: usize, w: usize) -> Plan<'_> {
        let mut plan = Plan {
            steps: Vec::new(),
            last: 0,
            storage: self.storage,
            held: [self.storage; 3],
            shape: (self.in_channels, h, w),
        };
        let mut current = Slot::Input;
        for layer in &self.layers {
            match layer {
                Layer::Conv {
                    conv,
                    mode,
                    relu,
                    clamp,
                } => {
                    let to = Plan::free(&[current]);
                    let mut f = 0;
                    if *relu {
                        f |= flags::RELU;
                    }
                    if *clamp {
                        f |= flags::CLAMP;
                    }
                    plan.push(conv, *mode, (current, None, to), f);
                    current = Slot::Act(to);
                }
                Layer::Block([c0, c2, c4]) => {
                    let x = current;
                    let h1 = Plan::free(&[x]);
                    let h2 = Plan::free(&[x, Slot::Act(h1)]);
                    plan.push(c0, ConvMode::Same, (x, None, h1), flags::RELU);
                    plan.push(c2, ConvMode::Same, (Slot::Act(h1), None, h2), flags::RELU);
                    // The output overwrites h1, no longer needed once h2 is made.
                    plan.push(
                        c4,
                        ConvMode::Same,
                        (Slot::Act(h2), Some(x), h1),
                        flags::RELU,
                    );
                    current = Slot::Act(h1);
                }
                Layer::Down(conv) => {
                    let to = Plan::free(&[current]);
                    plan.push(conv, ConvMode::Down, (current, None, to), 0);
                    current = Slot::Act(to);
                }
            }
        }
        // The last layer writes f32: what is read back, or scaled to bytes by to_rgb8.wgsl.
        if let Some(step) = plan.steps.last_mut() {
            step.types.output = Storage::F32;
        }
        plan
    }

    /// Allocates the buffers and records the bindings for input `h × w`, `capacity` per pass.
    fn scratch_for(&self, h: usize, w: usize, capacity: usize) -> Result<Scratch, WgpuError> {
        let device = self.context.device();
        let shapes = self.shapes(h, w);
        let act_bytes = (shapes.max_bytes * capacity) as u64;
        let in_bytes = (self.in_channels * h * w * 4 * capacity) as u64;
        let align = u64::from(self.context.limits().min_uniform_buffer_offset_alignment).max(32);
        let what = format!("{} buffers for {capacity} pictures of {h}×{w}", self.name);
        let plan = self.plan(h, w);
        let last = plan.last;
        let plan = plan.steps;
        let pipelines = plan
            .iter()
            .map(|p| self.kernels.conv_pipeline(&self.context, p.mode, p.types))
            .collect::<Result<Vec<_>, _>>()?;
        self.context.checked(&what, || {
            let input = buffer(
                device,
                "input",
                in_bytes,
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            );
            let acts = [0, 1, 2].map(|i| {
                buffer(
                    device,
                    &format!("activation {i}"),
                    act_bytes,
                    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                )
            });

            let params = buffer(
                device,
                "params",
                align * plan.len().max(1) as u64,
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            );
            let slot = |s: Slot| match s {
                Slot::Input => &input,
                Slot::Act(i) => &acts[i],
            };
            let mut steps = Vec::with_capacity(plan.len());
            for (i, (step, pipeline)) in plan.iter().zip(pipelines).enumerate() {
                let Planned {
                    mode,
                    params: p,
                    from,
                    residual,
                    to,
                    weights,
                    ..
                } = step;
                let offset = align * i as u64;
                self.context
                    .queue()
                    .write_buffer(&params, offset, &p.bytes());
                let mut entries = vec![
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &params,
                            offset,
                            size: NonZeroU64::new(32),
                        }),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: slot(*from).as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: weights.weights.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 3,
                        resource: weights.bias.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 5,
                        resource: acts[*to].as_entire_binding(),
                    },
                ];
                if *mode != ConvMode::Down {
                    // Without a residual the binding is unused; the input stands in.
                    entries.push(wgpu::BindGroupEntry {
                        binding: 4,
                        resource: slot(residual.unwrap_or(*from)).as_entire_binding(),
                    });
                }
                let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &pipeline.get_bind_group_layout(0),
                    entries: &entries,
                });
                steps.push(Step {
                    pipeline,
                    params: *p,
                    oc_blocks: weights.oc_blocks() as u32,
                    bind_group,
                });
            }

            let (_, out_h, out_w) = shapes.out;
            let pixels = (out_h * out_w) as u32;
            let packed = buffer(
                device,
                "packed",
                u64::from(pixels) * 4 * capacity as u64,
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            );
            let rgb8_params = buffer(
                device,
                "rgb8 params",
                16,
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            );
            self.context.queue().write_buffer(
                &rgb8_params,
                0,
                &u32_bytes(&[pixels, pixels * capacity as u32, RGB8_GROUPS_X, 0]),
            );
            let rgb8 = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("to_rgb8"),
                layout: &self.kernels.rgb8.get_bind_group_layout(0),
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: rgb8_params.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: acts[last].as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: packed.as_entire_binding(),
                    },
                ],
            });
            Scratch {
                size: (h, w),
                capacity,
                input,
                acts,
                last,
                steps,
                _params: params,
                packed,
                rgb8,
                upload: None,
                readback: None,
            }
        })
    }
}

/// One planned dispatch: the convolution, its sizes and flags, where it reads, adds and writes.
struct Planned<'a> {
    mode: ConvMode,
    /// Element types of the buffers it reads and writes.
    types: Types,
    params: ConvParams,
    from: Slot,
    residual: Option<Slot>,
    to: usize,
    weights: &'a ConvWeights,
}

/// The dispatches of a network for one input size, and which activation holds the result.
struct Plan<'a> {
    steps: Vec<Planned<'a>>,
    last: usize,
    /// How hidden activations are stored, and what each activation buffer holds now.
    storage: Storage,
    held: [Storage; 3],
    /// Shape `(c, h, w)` of the activation made last.
    shape: (usize, usize, usize),
}

impl<'a> Plan<'a> {
    /// An activation buffer none of `busy` is in.
    fn free(busy: &[Slot]) -> usize {
        (0..3)
            .find(|i| !busy.contains(&Slot::Act(*i)))
            .unwrap_or_default()
    }

    /// Appends a convolution of the current shape from `from` into activation `to`.
    fn push(
        &mut self,
        weights: &'a ConvWeights,
        mode: ConvMode,
        (from, residual, to): (Slot, Option<Slot>, usize),
        mut bits: u32,
    ) {
        let (c, h, w) = self.shape;
        let (oh, ow) = mode.output_size(h, w);
        if residual.is_some() {
            bits |= flags::RESIDUAL;
        }
        if mode == ConvMode::Upsample {
            bits |= flags::UPSAMPLE;
        }
        let params = ConvParams {
            c_in: c as u32,
            c_out: weights.c_out as u32,
            in_h: h as u32,
            in_w: w as u32,
            out_h: oh as u32,
            out_w: ow as u32,
            flags: bits,
            c_in_pad: weights.c_in_pad() as u32,
        };
        let held = |slot: Slot| match slot {
            Slot::Input => Storage::F32,
            Slot::Act(i) => self.held[i],
        };
        let types = Types {
            input: held(from),
            residual: held(residual.unwrap_or(from)),
            output: self.storage,
        };
        self.held[to] = self.storage;
        self.steps.push(Planned {
            mode,
            types,
            params,
            from,
            residual,
            to,
            weights,
        });
        self.shape = (weights.c_out, oh, ow);
        self.last = to;
    }
}

/// The buffer in `slot` when it holds at least `size` bytes, else a new one from `make`.
fn grown(
    slot: &mut Option<(wgpu::Buffer, u64)>,
    size: u64,
    make: impl FnOnce() -> wgpu::Buffer,
) -> wgpu::Buffer {
    match slot {
        Some((buffer, have)) if *have >= size => buffer.clone(),
        _ => {
            let buffer = make();
            *slot = Some((buffer.clone(), size));
            buffer
        }
    }
}
