// A 3×3 convolution with stride 2 and padding 1 (the encoder's downsampling layers, no bias, no
// activation), over NCHW f32 activations: out[y][x] = Σ in[2y+ky-1][2x+kx-1] · w[ky][kx].
//
// Same tiling as conv3x3.wgsl — 64 threads make 4 × 16 output pixels for 32 output channels,
// each thread 4 pixels × 8 channels in registers — but the staged input tile is twice as large
// per side, (2·TILE_H+1) × (2·TILE_W+1), so input channels go in chunks of 4 to keep workgroup
// memory at 4.6 + 4.5 KiB. Storage types as in conv3x3.wgsl (in_t, out_t; f16 variants are made
// by the host). Weights and bias use conv3x3.wgsl's layout ([c_out/32][c_in_pad][9][32],
// c_in_pad a multiple of 8, so of 4 as well); binding 4 (the residual) is absent.

const TILE_W: u32 = 16u;
const TILE_H: u32 = 4u;
const OC_BLOCK: u32 = 32u;
const CI_CHUNK: u32 = 4u;
const IN_W: u32 = 33u; // 2 * TILE_W + 1
const IN_H: u32 = 9u; // 2 * TILE_H + 1
const IN_TILE: u32 = 297u; // IN_W * IN_H

alias in_t = f32;
alias out_t = f32;

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
@group(0) @binding(5) var<storage, read_write> output: array<out_t>;

var<workgroup> in_tile: array<f32, 1188>; // CI_CHUNK * IN_TILE
var<workgroup> w_tile: array<vec4<f32>, 288>; // CI_CHUNK * 9 * OC_BLOCK / 4

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

    let og = li / 16u;
    let pt = li % 16u;
    let ty = pt / 4u;
    let tx = pt % 4u;

    var acc: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i++) {
        acc[i] = vec4<f32>(0.0);
    }

    let in_plane = params.in_h * params.in_w;
    let in_image = n * params.c_in * in_plane;
    let chunks = params.c_in_pad / CI_CHUNK;
    for (var chunk = 0u; chunk < chunks; chunk++) {
        let ci0 = chunk * CI_CHUNK;
        for (var i = li; i < CI_CHUNK * IN_TILE; i += 64u) {
            let ci = ci0 + i / IN_TILE;
            let r = i % IN_TILE;
            let yy = 2 * i32(y0) + i32(r / IN_W) - 1;
            let xx = 2 * i32(x0) + i32(r % IN_W) - 1;
            var v = 0.0;
            if (ci < params.c_in && yy >= 0 && xx >= 0 && u32(yy) < params.in_h && u32(xx) < params.in_w) {
                v = f32(input[in_image + ci * in_plane + u32(yy) * params.in_w + u32(xx)]);
            }
            in_tile[i] = v;
        }
        let w_base = (ob * params.c_in_pad + ci0) * 9u * (OC_BLOCK / 4u);
        for (var i = li; i < 288u; i += 64u) {
            w_tile[i] = weights[w_base + i];
        }
        workgroupBarrier();

        for (var c = 0u; c < CI_CHUNK; c++) {
            for (var ky = 0u; ky < 3u; ky++) {
                let row = c * IN_TILE + (2u * ty + ky) * IN_W + tx * 8u;
                var v: array<f32, 9>;
                for (var j = 0u; j < 9u; j++) {
                    v[j] = in_tile[row + j];
                }
                for (var kx = 0u; kx < 3u; kx++) {
                    let wi = ((c * 9u + ky * 3u + kx) * OC_BLOCK + og * 8u) / 4u;
                    let w0 = w_tile[wi];
                    let w1 = w_tile[wi + 1u];
                    for (var p = 0u; p < 4u; p++) {
                        let x = v[2u * p + kx];
                        acc[p * 2u] = fma(vec4<f32>(x), w0, acc[p * 2u]);
                        acc[p * 2u + 1u] = fma(vec4<f32>(x), w1, acc[p * 2u + 1u]);
                    }
                }
            }
        }
        workgroupBarrier();
    }

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
                output[base + x] = out_t(acc[p * 2u + h][k] + b);
            }
        }
    }
}
