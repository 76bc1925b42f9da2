// lossd from JavaScript (Node 18+, Deno, or a browser): a JSON call and a safetensors call, no dependencies.
// A page on another origin than lossd's needs the server started with LOSSD_CORS_ORIGINS naming it.
//
//   node examples/javascript/lossd.mjs http://127.0.0.1:8000
//
// Prints one JSON line per call. tests/test_examples.py runs it against a live server and checks the
// numbers against torch.

const BASE = (typeof process !== "undefined" && process.argv[2]) || "http://127.0.0.1:8000";

// safetensors: an 8-byte little-endian header length, a JSON header, then each tensor's raw
// little-endian bytes at the offsets the header gives.
const TYPED = {
  F32: Float32Array, F64: Float64Array, I64: BigInt64Array, I32: Int32Array, I16: Int16Array, I8: Int8Array,
  U8: Uint8Array, BOOL: Uint8Array,
};

// float16 bits of a normal number or zero (data meant for float16: nothing to round).
function float16Bits(v) {
  if (v === 0) return 0;
  const exp = Math.floor(Math.log2(Math.abs(v)));
  return (v < 0 ? 0x8000 : 0) | ((exp + 15) << 10) | Math.round((Math.abs(v) / 2 ** exp - 1) * 1024);
}

// Gradients come back in the input's dtype: float16 and bfloat16 have no typed array, so widen them.
function halfToFloat32(bits, dtype) {
  const out = new Float32Array(bits.length);
  if (dtype === "BF16") {
    new Uint32Array(out.buffer).set(Array.from(bits, (b) => b << 16)); // the top half of a float32
    return out;
  }
  for (let i = 0; i < bits.length; i++) {
    const sign = bits[i] & 0x8000 ? -1 : 1;
    const exp = (bits[i] >> 10) & 0x1f;
    const frac = bits[i] & 0x3ff;
    out[i] =
      exp === 0 ? sign * 2 ** -14 * (frac / 1024)
      : exp === 31 ? (frac ? NaN : sign * Infinity)
      : sign * 2 ** (exp - 15) * (1 + frac / 1024);
  }
  return out;
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function encodeSafetensors(tensors, metadata = {}) {
  // tensors: {name: {dtype: "F32" | "F64" | "I32" | "I64" | "U8", shape: [...], data: a typed array}}
  const header = Object.keys(metadata).length ? { __metadata__: metadata } : {};
  const parts = [];
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    parts.push(bytes);
    offset += bytes.length;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const head = concat([json, new TextEncoder().encode(" ".repeat((8 - (json.length % 8)) % 8))]); // aligned data
  const size = new Uint8Array(8);
  new DataView(size.buffer).setBigUint64(0, BigInt(head.length), true);
  return concat([size, head, ...parts]);
}

export function decodeSafetensors(buf) {
  const n = Number(new DataView(buf.buffer, buf.byteOffset, 8).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(buf.subarray(8, 8 + n)));
  const out = { metadata: header.__metadata__ || {}, tensors: {} };
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const [begin, end] = t.data_offsets;
    const bytes = buf.slice(8 + n + begin, 8 + n + end); // a copy, so the typed array is aligned
    const data = t.dtype === "F16" || t.dtype === "BF16"
      ? halfToFloat32(new Uint16Array(bytes.buffer), t.dtype)
      : new TYPED[t.dtype](bytes.buffer);
    out.tensors[name] = { dtype: t.dtype, shape: t.shape, data };
  }
  return out;
}

async function call(path, body, contentType) {
  const r = await fetch(BASE + path, { method: "POST", headers: { "Content-Type": contentType }, body });
  if (!r.ok) {
    const problem = await r.json(); // application/problem+json: type, title, status, detail, errors
    throw new Error(`${problem.status} ${problem.title}: ${problem.detail}`);
  }
  return r;
}

// JSON. JavaScript prints 2.0 as 2, so float data goes in the object form with an explicit dtype
// (a bare [2, 0.5] would still be floats; [2, 1] would be read as int64).
const logits = { dtype: "float32", shape: [2, 3], data: [2, 0.5, -1, 0.1, 1.5, 0.3] };
const r1 = await call(
  "/v1/losses/cross_entropy",
  JSON.stringify({ inputs: { input: logits, target: [0, 1] }, grad: ["input"] }),
  "application/json",
);
const j = await r1.json(); // non-finite numbers would arrive as "NaN", "Infinity", "-Infinity"
console.log(JSON.stringify({ call: "json", loss: j.loss, value: j.value, grad: j.grads.input.data }));

// safetensors: params and grad travel as JSON strings in the metadata; the answer holds `value`
// (shape [] for a scalar) and one `grad.<input>` per gradient.
const x = Float32Array.from({ length: 1000 }, (_, i) => Math.sin(i));
const y = new Float32Array(1000);
const body = encodeSafetensors(
  { input: { dtype: "F32", shape: [1000], data: x }, target: { dtype: "F32", shape: [1000], data: y } },
  { params: JSON.stringify({ reduction: "sum" }), grad: JSON.stringify(["input"]) },
);
const r2 = await call("/v1/losses/mse", body, "application/x-safetensors");
const out = decodeSafetensors(new Uint8Array(await r2.arrayBuffer()));
const g = out.tensors["grad.input"];
console.log(
  JSON.stringify({
    call: "safetensors",
    loss: out.metadata.loss,
    value: out.tensors.value.data[0],
    value_shape: out.tensors.value.shape,
    grad_shape: g.shape,
    grad_head: Array.from(g.data.slice(0, 4)),
  }),
);

// float16 in, float16 gradient back (widened to float32 here); the value is float32.
const h = [0.5, -1.25, 2, 0.125];
const r3 = await call(
  "/v1/losses/mse",
  encodeSafetensors(
    {
      input: { dtype: "F16", shape: [4], data: Uint16Array.from(h, float16Bits) },
      target: { dtype: "F32", shape: [4], data: new Float32Array(4) },
    },
    { params: JSON.stringify({ reduction: "sum" }), grad: "true" },
  ),
  "application/x-safetensors",
);
const half = decodeSafetensors(new Uint8Array(await r3.arrayBuffer()));
console.log(
  JSON.stringify({
    call: "float16",
    value: half.tensors.value.data[0],
    grad_dtype: half.tensors["grad.input"].dtype,
    grad: Array.from(half.tensors["grad.input"].data),
  }),
);
