#!/usr/bin/env python3
"""Peer benchmark: dreamd's TAESD decoder versus onnxruntime on the same weights and latents.

Builds the TAESD / TAEF1 decoder (or encoder) as an ONNX graph directly with ``onnx.helper``
(no PyTorch) from a ``.safetensors`` file (BF16 / F16 / F32; original index layout or the
diffusers ``AutoencoderTiny`` layout), then times it with onnxruntime on the CPU.

Install:  python3 -m venv /tmp/ortvenv && /tmp/ortvenv/bin/pip install -r tools/requirements-bench.txt

Usage (models default to $DREAMD_MODELS, else <repo>/../shared/models):
  ort_taesd.py export  --weights taesd_decoder.safetensors --out taesd_dec.onnx [--kind decoder|encoder]
  ort_taesd.py golden  [--models DIR]          # taesd + taef1 decoders vs the golden vectors (<= 1e-4)
  ort_taesd.py bench   --weights FILE --batch 10 --latent 4x32x64 [--threads 2] [--runs 5] [--json]
  ort_taesd.py bench   --kind encoder --weights taesd_encoder.safetensors --batch 10 --latent 3x256x512
  ort_taesd.py compare --dreamd target/release/dreamd --weights FILE --batch 10 \\
                       --latents 4x16x32,4x32x64 [--rounds 3] [--precision fast|exact|bf16] [--json]
  ort_taesd.py compare --kind encoder --dreamd target/release/dreamd --batch 10 --shapes 3x256x512

Benchmark inputs (identical to dreamd's): z[n,c,h,w] = 2*sin(0.7c + 0.3h + 0.11w + 0.37n) for the
decoder; images 0.5 + 0.5*sin(same) for the encoder.  Each timed run is one batched session.run;
after 2 warm-up runs the median of --runs runs is reported.  GFLOP counts conv MACs x 2.
"""
import argparse, json, os, re, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
REPO = Path(__file__).resolve().parent.parent
# Layer plans: ("clamp",) ("relu",) ("up",) ("conv", index, stride) ("block", index)
DECODER_PLAN = ([("clamp",), ("conv", 1, 1), ("relu",)] + [("block", i) for i in (3, 4, 5)]
                + [("up",), ("conv", 7, 1)] + [("block", i) for i in (8, 9, 10)]
                + [("up",), ("conv", 12, 1)] + [("block", i) for i in (13, 14, 15)]
                + [("up",), ("conv", 17, 1), ("block", 18), ("conv", 19, 1)])
ENCODER_PLAN = ([("conv", 0, 1), ("block", 1), ("conv", 2, 2)] + [("block", i) for i in (3, 4, 5)]
                + [("conv", 6, 2)] + [("block", i) for i in (7, 8, 9)]
                + [("conv", 10, 2)] + [("block", i) for i in (11, 12, 13)] + [("conv", 14, 1)])


class WeightsError(Exception):
    pass


# ---------------------------------------------------------------- safetensors
def read_safetensors(path):
    """Return {name: float32 array} from a .safetensors file (BF16, F16 or F32)."""
    raw = Path(path).read_bytes()
    if len(raw) < 8:
        raise WeightsError(f"{path}: too short to be a safetensors file")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        raise WeightsError(f"{path}: header length {n} exceeds file size {len(raw)}")
    try:
        header = json.loads(raw[8:8 + n])
    except ValueError as e:
        raise WeightsError(f"{path}: header is not valid JSON ({e})") from None
    data, out = memoryview(raw)[8 + n:], {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (a, b) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise WeightsError(f"{path}: malformed header entry for tensor {name!r}: {info}") from None
        width = {"BF16": 2, "F16": 2, "F32": 4}.get(dtype)
        if width is None:
            raise WeightsError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        if not (0 <= a <= b <= len(data)) or b - a != width * int(np.prod(shape, dtype=np.int64)):
            raise WeightsError(f"{path}: tensor {name!r} offsets [{a},{b}) do not fit shape {shape}")
        buf = data[a:b]
        if dtype == "BF16":
            arr = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(buf, "<f2" if dtype == "F16" else "<f4").astype(np.float32)
        out[name] = arr.reshape(shape)
    return out


def to_index_layout(tensors, kind, path):
    """Map diffusers AutoencoderTiny keys (`decoder.layers.i` -> i+1, `encoder.layers.i` -> i)."""
    prefix = f"{kind}.layers."
    if not any(k.startswith(prefix) for k in tensors):
        return dict(tensors)
    shift = 1 if kind == "decoder" else 0
    out = {}
    for k, v in tensors.items():
        if k.startswith(prefix):
            i, _, rest = k[len(prefix):].partition(".")
            if not i.isdigit():
                raise WeightsError(f"{path}: tensor {k!r} does not look like {prefix}<int>.*")
            out[f"{int(i) + shift}.{rest}"] = v
    return out


# ---------------------------------------------------------------- graph building
class Builder:
    """Accumulates ONNX nodes/initialisers and a shape-free op list used for FLOP counting."""

    def __init__(self, tensors, path):
        self.t, self.path, self.used = tensors, path, set()
        self.nodes, self.inits, self.ops, self.n, self.have = [], [], [], 0, set()

    def get(self, key):
        if key not in self.t:
            raise WeightsError(f"{self.path}: missing tensor {key!r}")
        self.used.add(key)
        return self.t[key]

    def const(self, key, arr):
        if key not in self.have:
            self.have.add(key)
            self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, np.float32), key))
        return key

    def node(self, op, inputs, **attrs):
        self.n += 1
        out = f"{op.lower()}_{self.n}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x, prefix, cin, stride=1, bias="auto"):
        w = self.get(prefix + "weight")
        if w.ndim != 4 or w.shape[1] != cin or w.shape[2] != w.shape[3] or w.shape[2] % 2 == 0:
            raise WeightsError(f"{self.path}: tensor {prefix}weight has shape {list(w.shape)}, "
                               f"expected [out, {cin}, k, k] with odd k")
        inputs = [x, self.const(prefix + "weight", w)]
        if prefix + "bias" in self.t and bias != "none":
            b = self.get(prefix + "bias")
            if b.shape != (w.shape[0],):
                raise WeightsError(f"{self.path}: tensor {prefix}bias has shape {list(b.shape)}, "
                                   f"expected [{w.shape[0]}]")
            inputs.append(self.const(prefix + "bias", b))
        k, p = w.shape[2], w.shape[2] // 2
        self.ops.append(("conv", w.shape[0], cin, k, stride))
        return self.node("Conv", inputs, kernel_shape=[k, k], pads=[p] * 4,
                         strides=[stride] * 2), int(w.shape[0])

    def block(self, x, i, c):
        h, c1 = self.conv(x, f"{i}.conv.0.", c)
        h, c2 = self.conv(self.node("Relu", [h]), f"{i}.conv.2.", c1)
        h, c3 = self.conv(self.node("Relu", [h]), f"{i}.conv.4.", c2)
        if f"{i}.skip.weight" in self.t:
            skip, cs = self.conv(x, f"{i}.skip.", c, bias="none")
        elif c3 == c:
            skip, cs = x, c
        else:
            raise WeightsError(f"{self.path}: block {i} maps {c}->{c3} channels but has no "
                               f"{i}.skip.weight")
        if cs != c3:
            raise WeightsError(f"{self.path}: tensor {i}.skip.weight gives {cs} channels, need {c3}")
        return self.node("Relu", [self.node("Add", [h, skip])]), c3


def build(path, kind="decoder"):
    """Build the ONNX model; returns (model, in_channels, out_channels, ops)."""
    tensors = to_index_layout(read_safetensors(path), kind, path)
    plan = DECODER_PLAN if kind == "decoder" else ENCODER_PLAN
    first = f"{next(s[1] for s in plan if s[0] == 'conv')}.weight"  # fixes input channels
    if first not in tensors:
        raise WeightsError(f"{path}: missing tensor {first!r} (is this a {kind} file?)")
    cin = c = int(tensors[first].shape[1])
    b = Builder(tensors, path)
    three, scales = np.array(3.0, np.float32), np.array([1, 1, 2, 2], np.float32)
    x = xin = "z" if kind == "decoder" else "image"
    for step in plan:
        if step[0] == "clamp":
            t3 = b.const("three", three)
            x = b.node("Mul", [b.node("Tanh", [b.node("Div", [x, t3])]), t3])
        elif step[0] == "relu":
            x = b.node("Relu", [x])
        elif step[0] == "up":
            x = b.node("Resize", [x, "", b.const("up_scales", scales)], mode="nearest",
                       coordinate_transformation_mode="asymmetric", nearest_mode="floor")
            b.ops.append(("up",))
        elif step[0] == "conv":
            x, c = b.conv(x, f"{step[1]}.", c, stride=step[2])
        else:
            x, c = b.block(x, step[1], c)
    unused = sorted(set(tensors) - b.used)
    if unused:
        raise WeightsError(f"{path}: unexpected tensors for a TAESD {kind}: {unused[:8]}")
    xout = "image" if kind == "decoder" else "latent"
    b.nodes.append(helper.make_node("Identity", [x], [xout], name="output"))
    graph = helper.make_graph(
        b.nodes, f"taesd_{kind}",
        [helper.make_tensor_value_info(xin, TensorProto.FLOAT, ["N", cin, "H", "W"])],
        [helper.make_tensor_value_info(xout, TensorProto.FLOAT, ["N", c, "Hout", "Wout"])],
        b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="dreamd/tools/ort_taesd.py")
    model.ir_version = 8  # readable by any onnxruntime >= 1.10
    onnx.checker.check_model(model)
    return model, cin, c, b.ops


def flops_per_item(ops, h, w):
    """Conv MACs x 2 for one input of spatial size h x w; returns (flops, out_h, out_w)."""
    total = 0
    for op in ops:
        if op[0] == "up":
            h, w = 2 * h, 2 * w
            continue
        _, cout, cin, k, s = op
        p = k // 2
        h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        total += 2 * cout * cin * k * k * h * w
    return total, h, w


# ---------------------------------------------------------------- running
def parse_shape(text):
    m = re.fullmatch(r"(\d+)x(\d+)x(\d+)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not CxHxW, e.g. 4x32x64")
    return tuple(int(g) for g in m.groups())


def make_input(batch, shape, kind):
    c, h, w = shape
    n, ci, hi, wi = np.meshgrid(*(np.arange(d, dtype=np.float32) for d in (batch, c, h, w)),
                                indexing="ij")
    phase = np.float32(0.7) * ci + np.float32(0.3) * hi + np.float32(0.11) * wi \
        + np.float32(0.37) * n
    z = np.sin(phase, dtype=np.float32)
    return (2 * z if kind == "decoder" else 0.5 + 0.5 * z).astype(np.float32)


def session(model, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    blob = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])


def time_runs(sess, x, runs, warmup=2):
    name = sess.get_inputs()[0].name
    for _ in range(warmup):
        sess.run(None, {name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def ort_bench(sess, built, kind, batch, shape, threads, runs):
    import onnxruntime as ort
    _, cin, cout, ops = built
    if shape[0] != cin:
        raise SystemExit(f"error: --latent {'x'.join(map(str, shape))} has {shape[0]} channels, "
                         f"the weights expect {cin}")
    flops, oh, ow = flops_per_item(ops, shape[1], shape[2])
    busy = other_cpu_load()
    if busy and busy > 0.2:
        print(f"warning: other processes are using {busy:.1f} of {os.cpu_count()} cores; "
              "timings will be pessimistic", file=sys.stderr)
    med, times = time_runs(sess, make_input(batch, shape, kind), runs)
    return {"tool": "onnxruntime", "onnxruntime": ort.__version__, "kind": kind,
            "batch": batch, "latent": "x".join(map(str, shape)), "output": f"{cout}x{oh}x{ow}",
            "device": "cpu", "threads": threads, "runs": runs,
            "ms_per_frame": 1e3 * med / batch, "frames_per_s": batch / med,
            "gflop_per_frame": flops / 1e9, "gflop_per_s": flops * batch / med / 1e9,
            "run_ms": [round(1e3 * t, 3) for t in times], "other_cpu_cores": busy}


def dreamd_bench(exe, decoder, batch, shape, kind="decoder", precision=None):
    s = "x".join(map(str, shape))
    verb, flag = ("decode", "--latent") if kind == "decoder" else ("encode", "--size")
    cmd = [str(exe), "bench", verb, "--decoder", decoder, "--batch", str(batch),
           flag, s, "--device", "cpu", "--json"]
    if precision:
        cmd += ["--precision", precision]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"error: {' '.join(cmd)} did not finish within 30 min") from None
    if p.returncode:
        raise SystemExit(f"error: {' '.join(cmd)} exited {p.returncode} (this tool needs "
                         f"`dreamd bench {verb} ... --json`):\n{p.stderr.strip()}")
    try:  # the whole of stdout, else its last line (in case of progress lines before it)
        res = json.loads(p.stdout)
    except ValueError:
        try:
            res = json.loads((p.stdout.strip().splitlines() or [""])[-1])
        except ValueError:
            raise SystemExit(f"error: {' '.join(cmd)} did not print a JSON object:\n{p.stdout}") from None
    missing = {"frames_per_s", "ms_per_frame", "batch", "latent"} - set(res)
    if missing or str(res["batch"]) != str(batch) or res["latent"] != s:
        raise SystemExit(f"error: unexpected dreamd JSON (missing {sorted(missing)} or wrong "
                         f"batch/latent): {res}")
    return res


def other_cpu_load(interval=0.5):
    """Cores' worth of CPU used by other processes over `interval` s (Linux; None elsewhere)."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]  # up to steal
        return sum(v), v[3] + v[4], sum(os.times()[:2])
    try:
        t0, idle0, own0 = sample()
        time.sleep(interval)
        t1, idle1, own1 = sample()
    except OSError:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    return round(((t1 - t0) - (idle1 - idle0) - (own1 - own0) * hz) / hz / interval, 2)


def machine():
    """`lscpu` model name and CPU count, e.g. "AMD EPYC, 2 cores"."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        out = ""
    info = {k.strip(): v.strip() for k, _, v in (l.partition(":") for l in out.splitlines())}
    return f"{info.get('Model name', 'unknown CPU')}, {info.get('CPU(s)', os.cpu_count())} cores"


# ---------------------------------------------------------------- subcommands
def default_models():
    return Path(os.environ.get("DREAMD_MODELS", REPO.parent / "shared" / "models"))


def default_weights(args):
    return args.weights or default_models() / "taesd" / f"taesd_{args.kind}.safetensors"


def cmd_export(args):
    model, cin, cout, ops = build(args.weights, args.kind)
    onnx.save(model, args.out)
    print(f"wrote {args.out}: TAESD {args.kind}, {cin} -> {cout} channels, "
          f"{sum(op[0] == 'conv' for op in ops)} convs, opset {OPSET}")


def cmd_golden(args):
    import onnxruntime as ort
    gdir, worst = Path(args.models) / "golden", 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, c in (("taesd", 4), ("taef1", 16)):
            onnx_path = Path(tmp) / f"{name}_decoder.onnx"
            onnx.save(build(Path(args.models) / "taesd" / f"{name}_decoder.safetensors")[0], onnx_path)
            z = np.fromfile(gdir / f"{name}_dec_in_{c}x8x8_f32le.bin", "<f4").reshape(1, c, 8, 8)
            ref = np.fromfile(gdir / f"{name}_dec_out_3x64x64_f32le.bin", "<f4").reshape(1, 3, 64, 64)
            out = session(onnx_path, 1).run(None, {"z": z})[0]
            err = float(np.max(np.abs(out - ref))) if out.shape == ref.shape else float("inf")
            worst = max(worst, err)
            print(f"{name} decoder: output {list(out.shape)}, max abs error {err:.3g} "
                  f"({'ok' if err <= 1e-4 else 'FAIL'})")
    print(f"onnxruntime {ort.__version__}: {'PASS' if worst <= 1e-4 else 'FAIL'} (tolerance 1e-4)")
    return 0 if worst <= 1e-4 else 1


def cmd_bench(args):
    weights = default_weights(args)
    built = build(weights, args.kind)
    res = ort_bench(session(built[0], args.threads), built, args.kind, args.batch,
                    args.latent, args.threads, args.runs)
    res["weights"] = str(weights)
    if args.json:
        print(json.dumps(res))
    else:
        unit = "frame" if args.kind == "decoder" else "image"
        print(f"onnxruntime {res['onnxruntime']} {args.kind} {Path(weights).name}, batch {args.batch}, "
              f"{res['latent']} -> {res['output']}, {args.threads} threads, median of {args.runs}:\n"
              f"  {res['ms_per_frame']:.2f} ms/{unit}, {res['frames_per_s']:.2f} {unit}s/s, "
              f"{res['gflop_per_s']:.1f} GFLOP/s ({res['gflop_per_frame']:.2f} GFLOP/{unit})")


def cmd_compare(args):
    import onnxruntime as ort
    exe = Path(args.dreamd)
    if not (exe.is_file() and os.access(exe, os.X_OK)):
        raise SystemExit(f"error: dreamd binary {exe} not found or not executable "
                         "(build it with `cargo build --release`)")
    weights = default_weights(args)
    decoder = args.decoder or Path(weights).stem.removesuffix(f"_{args.kind}")
    built = build(weights, args.kind)
    sess, rows = session(built[0], args.threads), []
    shapes = args.latents or ([(4, 16, 32), (4, 32, 64)] if args.kind == "decoder"
                              else [(3, 256, 512)])
    for shape in shapes:
        ort_fps, dd_fps, dd, loads = [], [], None, []
        for _ in range(args.rounds):
            loads.append(os.getloadavg()[0])
            ort_fps.append(ort_bench(sess, built, args.kind, args.batch, shape, args.threads,
                                     args.runs)["frames_per_s"])
            dd = dreamd_bench(exe, decoder, args.batch, shape, args.kind, args.precision)
            dd_fps.append(float(dd["frames_per_s"]))
        o, d = statistics.median(ort_fps), statistics.median(dd_fps)
        gflop = flops_per_item(built[3], shape[1], shape[2])[0] / 1e9
        rows.append({"latent": "x".join(map(str, shape)), "batch": args.batch, "decoder": decoder,
                     "ort_frames_per_s": o, "dreamd_frames_per_s": d, "ratio": d / o,
                     "ort_ms_per_frame": 1e3 / o, "dreamd_ms_per_frame": 1e3 / d,
                     "gflop_per_frame": gflop, "ort_rounds": ort_fps, "dreamd_rounds": dd_fps,
                     "load_1min": loads, "dreamd_last": dd})
    meta = {"machine": machine(), "onnxruntime": ort.__version__, "threads": args.threads,
            "rounds": args.rounds, "kind": args.kind, "rows": rows}
    if args.json:
        print(json.dumps(meta))
        return
    print(f"Machine: {meta['machine']}; onnxruntime {ort.__version__} CPU, {args.threads} threads; "
          f"median of {args.rounds} interleaved rounds, batch {args.batch}, {args.kind}.\n")
    unit = "frame" if args.kind == "decoder" else "image"
    print(f"| model | input | GFLOP/{unit} | dreamd ms/{unit} | dreamd {unit}s/s "
          f"| ort ms/{unit} | ort {unit}s/s | dreamd/ort | load (1 min) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        load = "/".join(f"{v:.1f}" for v in r["load_1min"])
        print(f"| {r['decoder']} | {r['latent']} | {r['gflop_per_frame']:.1f} "
              f"| {r['dreamd_ms_per_frame']:.1f} | {r['dreamd_frames_per_s']:.2f} "
              f"| {r['ort_ms_per_frame']:.1f} | {r['ort_frames_per_s']:.2f} | {r['ratio']:.2f}x "
              f"| {load} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write the ONNX graph")
    ex.add_argument("--weights", required=True)
    ex.add_argument("--out", required=True)
    ex.add_argument("--kind", choices=["decoder", "encoder"], default="decoder")
    go = sub.add_parser("golden", help="check taesd/taef1 decoders against golden vectors")
    go.add_argument("--models", default=str(default_models()))
    for name in ("bench", "compare"):
        p = sub.add_parser(name)
        p.add_argument("--weights", help="default: <models>/taesd/taesd_<kind>.safetensors")
        p.add_argument("--batch", type=int, default=10)
        p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
        p.add_argument("--runs", type=int, default=5)
        p.add_argument("--json", action="store_true")
    bench, comp = sub.choices["bench"], sub.choices["compare"]
    bench.add_argument("--latent", "--shape", type=parse_shape, default=(4, 32, 64),
                       help="CxHxW of each input (latent, or image for --kind encoder)")
    bench.add_argument("--kind", choices=["decoder", "encoder"], default="decoder")
    comp.add_argument("--dreamd", required=True, help="path to the dreamd binary")
    comp.add_argument("--decoder", help="dreamd --decoder name (default: from the weights file)")
    comp.add_argument("--latents", "--shapes", default=None,
                      type=lambda s: [parse_shape(x) for x in s.split(",")],
                      help="CxHxW inputs (default 4x16x32,4x32x64; 3x256x512 for --kind encoder)")
    comp.add_argument("--rounds", type=int, default=3)
    comp.add_argument("--kind", choices=["decoder", "encoder"], default="decoder")
    comp.add_argument("--precision", choices=["fast", "exact", "bf16"],
                      help="dreamd --precision (default: dreamd's configured default)")
    args = ap.parse_args(argv)
    try:
        return {"export": cmd_export, "golden": cmd_golden, "bench": cmd_bench,
                "compare": cmd_compare}[args.cmd](args) or 0
    except (WeightsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
