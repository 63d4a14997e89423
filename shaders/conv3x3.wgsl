// A 3×3 convolution, stride 1, padding 1, over NCHW f32 activations, with its epilogue fused:
// out = relu?(conv(in) + bias + residual?).
//
// Options (Params.flags):
// - UPSAMPLE: the input is first enlarged 2× by nearest neighbour — folded into the indexing
//   (the input is read at (y/2, x/2) of the enlarged picture; nothing is written at 2×).
// - CLAMP: the input is soft-clamped, tanh(v/3)·3, as it is read (the decoder's first layer).
// - RESIDUAL: `residual` (same shape as the output) is added before the ReLU.
// - RELU: max(v, 0) last.
//
// Register tiling: a workgroup of 64 threads makes a tile of TILE_H × TILE_W = 4 × 16 output
// pixels for OC_BLOCK = 32 output channels. Thread t computes 4 neighbouring pixels of one row
// for 8 output channels (32 accumulators in registers); threads 0..15, 16..31, … share their
// output channels, so every subgroup reads the same weights. Input channels go in chunks of
// CI_CHUNK: the chunk's input tile with its 1-pixel border, (TILE_H+2) × (TILE_W+2), and its
// weights, CI_CHUNK × 9 × OC_BLOCK, are staged in workgroup memory (3.4 + 9.2 KiB).
//
// Storage: activations are f32, or f16 where the adapter has SHADER_F16 (the host compiles
// variants with `enable f16;` and these aliases changed: in_t, res_t, out_t are the element types
// of `input`, `residual` and `output`). Arithmetic and workgroup memory are f32 either way.
//
// Weights are laid out by the host as [c_out/32][c_in_pad][9][32] (c_in padded to a multiple
// of CI_CHUNK, c_out to a multiple of 32, with zeros), so a chunk is one contiguous run; bias is
// padded to a multiple of 32 likewise (zeros where a layer has none).

const TILE_W: u32 = 16u;
const TILE_H: u32 = 4u;
const OC_BLOCK: u32 = 32u;
const CI_CHUNK: u32 = 8u;
const IN_W: u32 = 18u; // TILE_W + 2
const IN_H: u32 = 6u; // TILE_H + 2
const IN_TILE: u32 = 108u; // IN_W * IN_H

alias in_t = f32;
alias res_t = f32;
alias out_t = f32;

const FLAG_RELU: u32 = 1u;
const FLAG_RESIDUAL: u32 = 2u;
const FLAG_CLAMP: u32 = 4u;
const FLAG_UPSAMPLE: u32 = 8u;

struct Params {
    c_in: u32,
    c_out: u32,
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    flags: u32,
    c_in_pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> input: array<in_t>;
@group(0) @binding(2) var<storage, read> weights: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<res_t>;
@group(0) @binding(5) var<storage, read_write> output: array<out_t>;

var<workgroup> in_tile: array<f32, 864>; // CI_CHUNK * IN_TILE
var<workgroup> w_tile: array<vec4<f32>, 576>; // CI_CHUNK * 9 * OC_BLOCK / 4

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let oc_blocks = (params.c_out + OC_BLOCK - 1u) / OC_BLOCK;
    let n = wg.z / oc_blocks;
    let ob = wg.z % oc_blocks;
    let x0 = wg.x * TILE_W;
    let y0 = wg.y * TILE_H;
    let upsample = (params.flags & FLAG_UPSAMPLE) != 0u;
    let clamp_input = (params.flags & FLAG_CLAMP) != 0u;

    // This thread: output channels og*8 .. og*8+7 of the block, row ty, columns tx*4 .. tx*4+3.
    let og = li / 16u;
    let pt = li % 16u;
    let ty = pt / 4u;
    let tx = pt % 4u;

    var acc: array<vec4<f32>, 8>; // [pixel p][half h] = acc[p * 2 + h], channels og*8 + h*4 ..
    for (var i = 0u; i < 8u; i++) {
        acc[i] = vec4<f32>(0.0);
    }

    let in_plane = params.in_h * params.in_w;
    let in_image = n * params.c_in * in_plane;
    let chunks = params.c_in_pad / CI_CHUNK;
    for (var chunk = 0u; chunk < chunks; chunk++) {
        let ci0 = chunk * CI_CHUNK;
        // Stage the input tile (zero outside the picture and past c_in).
        for (var i = li; i < CI_CHUNK * IN_TILE; i += 64u) {
            let ci = ci0 + i / IN_TILE;
            let r = i % IN_TILE;
            // Coordinates in the (possibly enlarged) picture the convolution sees.
            let yy = i32(y0) + i32(r / IN_W) - 1;
            let xx = i32(x0) + i32(r % IN_W) - 1;
            var v = 0.0;
            if (ci < params.c_in && yy >= 0 && xx >= 0 && u32(yy) < params.out_h && u32(xx) < params.out_w) {
                var sy = u32(yy);
                var sx = u32(xx);
                if (upsample) {
                    sy = sy / 2u;
                    sx = sx / 2u;
                }
                v = f32(input[in_image + ci * in_plane + sy * params.in_w + sx]);
                if (clamp_input) {
                    // Clamped first: some drivers' tanh overflows to NaN for large arguments;
                    // tanh(±10) is ±1 in f32 already.
                    v = tanh(clamp(v / 3.0, -10.0, 10.0)) * 3.0;
                }
            }
            in_tile[i] = v;
        }
        // Stage the chunk's weights: one contiguous run.
        let w_base = (ob * params.c_in_pad + ci0) * 9u * (OC_BLOCK / 4u);
        for (var i = li; i < 576u; i += 64u) {
            w_tile[i] = weights[w_base + i];
        }
        workgroupBarrier();

        for (var c = 0u; c < CI_CHUNK; c++) {
            for (var ky = 0u; ky < 3u; ky++) {
                let row = c * IN_TILE + (ty + ky) * IN_W + tx * 4u;
                var v: array<f32, 6>;
                for (var j = 0u; j < 6u; j++) {
                    v[j] = in_tile[row + j];
                }
                for (var kx = 0u; kx < 3u; kx++) {
                    let wi = ((c * 9u + ky * 3u + kx) * OC_BLOCK + og * 8u) / 4u;
                    let w0 = w_tile[wi];
                    let w1 = w_tile[wi + 1u];
                    for (var p = 0u; p < 4u; p++) {
                        let x = v[p + kx];
                        acc[p * 2u] = fma(vec4<f32>(x), w0, acc[p * 2u]);
                        acc[p * 2u + 1u] = fma(vec4<f32>(x), w1, acc[p * 2u + 1u]);
                    }
                }
            }
        }
        workgroupBarrier();
    }

    // Epilogue: bias, residual, ReLU; only pixels and channels inside the output.
    let y = y0 + ty;
    let out_plane = params.out_h * params.out_w;
    for (var h = 0u; h < 2u; h++) {
        for (var k = 0u; k < 4u; k++) {
            let oc = ob * OC_BLOCK + og * 8u + h * 4u + k;
            if (oc >= params.c_out || y >= params.out_h) {
                continue;
            }
            let b = bias[oc];
            let base = (n * params.c_out + oc) * out_plane + y * params.out_w;
            for (var p = 0u; p < 4u; p++) {
                let x = x0 + tx * 4u + p;
                if (x >= params.out_w) {
                    continue;
                }
                var r = acc[p * 2u + h][k] + b;
                if ((params.flags & FLAG_RESIDUAL) != 0u) {
                    r += f32(residual[base + x]);
                }
                if ((params.flags & FLAG_RELU) != 0u) {
                    r = max(r, 0.0);
                }
                output[base + x] = out_t(r);
            }
        }
    }
}
