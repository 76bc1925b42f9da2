// lossd from JavaScript (Node 18+, Deno, or a browser): a JSON call and a safetensors call, no dependencies.
//
//   node examples/javascript/lossd.mjs http://127.0.0.1:8000
//
// Prints one JSON line per call. tests/test_examples.py runs it against a live server and checks the
// numbers against torch.

const BASE = (typeof process !== "undefined" && process.argv[2]) || "http://127.0.0.1:8000";

// safetensors: an 8-byte little-endian header length, a JSON header, then each tensor's raw
// little-endian bytes at the offsets the header gives.
const TYPED = { F32: Float32Array, F64: Float64Array, I32: Int32Array, I64: BigInt64Array, U8: Uint8Array };

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
  const json = JSON.stringify(header);
  const head = new TextEncoder().encode(json + " ".repeat((8 - (json.length % 8)) % 8)); // aligned data
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
    out.tensors[name] = { dtype: t.dtype, shape: t.shape, data: new TYPED[t.dtype](bytes.buffer) };
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
