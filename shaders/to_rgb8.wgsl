// The decoder's output scaling: [N][3][H][W] f32 (≈[0, 1]) → one packed pixel per u32,
// r | g << 8 | b << 16, each round(clamp(v, 0, 1) · 255) (halves up, as the CPU path) — a quarter of the bytes to read back.
// One thread per pixel, 256 per workgroup; workgroups run along x then y (a dispatch dimension
// holds at most 65535 of them), `wg_x` in Params says how many there are along x.

struct Params {
    pixels: u32, // H * W of one picture
    total: u32, // N * H * W
    wg_x: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> rgb: array<f32>;
@group(0) @binding(2) var<storage, read_write> packed: array<u32>;

fn to_byte(v: f32) -> u32 {
    return u32(floor(clamp(v, 0.0, 1.0) * 255.0 + 0.5)); // half away from zero, as f32::round
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wg.y * params.wg_x + wg.x) * 256u + li;
    if (i >= params.total) {
        return;
    }
    let n = i / params.pixels;
    let p = i % params.pixels;
    let base = n * 3u * params.pixels + p;
    let r = to_byte(rgb[base]);
    let g = to_byte(rgb[base + params.pixels]);
    let b = to_byte(rgb[base + 2u * params.pixels]);
    packed[i] = r | (g << 8u) | (b << 16u);
}
