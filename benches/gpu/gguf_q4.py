"""A Llama HF state dict written as a llama-arch GGUF v3 file (Q4_0 linear weights), without the `gguf` package.

Layout (GGUF v3, little-endian): magic "GGUF", version 3, tensor count (u64), metadata count (u64),
metadata key/value pairs, tensor infos (name, n_dims, dims with ne0 = the contiguous dimension first,
ggml type, offset from the start of the data section), padding to `general.alignment`, tensor data
(each tensor at an aligned offset).

As llama.cpp's converter does for llama-arch models, Q and K projection rows are permuted per head so
that RoPE rotates adjacent pairs (our loader applies interleaved RoPE to llama-arch GGUFs). Q4_0 follows
ggml's reference quantizer (quantize_row_q4_0_ref): per block of 32 values d = (the value of largest
magnitude) / -8, q = min(15, trunc(x / d + 8.5)), stored as f16 d + 16 bytes (q[j] | q[j + 16] << 4).
The quantization runs in torch on the device that holds the weights (the GPU on the benchmark host).
The tokenizer is a GPT-2-style BPE vocabulary of words "t<i>" without merges: the benchmark drives the
engine with token ids only.
"""

import struct
from typing import BinaryIO, Dict, List, Tuple

import numpy as np

GGUF_MAGIC = b"GGUF"
ALIGNMENT = 32

# gguf value types
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, T_ARRAY, T_UINT64, T_INT64, T_FLOAT64 = range(13)
# ggml tensor types
GGML_F32, GGML_F16, GGML_Q4_0 = 0, 1, 2
FILE_TYPE = {"q4_0": 2, "f32": 0, "f16": 1}  # llama_ftype: ALL_F32, MOSTLY_F16, MOSTLY_Q4_0


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _value(vtype: int, v) -> bytes:
    if vtype == T_STRING:
        return _str(v)
    if vtype == T_ARRAY:
        etype, items = v
        out = [struct.pack("<IQ", etype, len(items))]
        if etype == T_STRING:
            out.extend(_str(s) for s in items)
        elif etype == T_INT32:
            out.append(np.asarray(items, dtype="<i4").tobytes())
        elif etype == T_FLOAT32:
            out.append(np.asarray(items, dtype="<f4").tobytes())
        else:
            raise ValueError(f"array of type {etype} not implemented")
        return b"".join(out)
    fmt = {T_UINT8: "<B", T_INT8: "<b", T_UINT16: "<H", T_INT16: "<h", T_UINT32: "<I", T_INT32: "<i",
           T_FLOAT32: "<f", T_BOOL: "<?", T_UINT64: "<Q", T_INT64: "<q", T_FLOAT64: "<d"}[vtype]
    return struct.pack(fmt, v)


def gguf_name(hf: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight` (llama.cpp's tensor names)."""
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    parts = hf.split(".")
    assert parts[0] == "model" and parts[1] == "layers", hf
    idx, module = parts[2], ".".join(parts[3:-1])
    g = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
         "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}[module]
    return f"blk.{idx}.{g}.{parts[-1]}"


def permute_qk(w, n_head: int):
    """llama.cpp convert_hf_to_gguf's LlamaModel.permute: rotate-half layout -> interleaved pairs."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def quantize_q4_0(w) -> "np.ndarray":
    """Torch tensor [rows, cols] (cols % 32 == 0) -> uint8 numpy array of ggml block_q4_0 bytes."""
    import torch

    x = w.to(torch.float32).reshape(-1, 32)
    idx = x.abs().argmax(dim=1, keepdim=True)
    vmax = x.gather(1, idx)  # signed value of the largest magnitude
    d = vmax / -8.0
    inv = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    q = torch.clamp(torch.trunc(x * inv + 8.5), max=15).to(torch.uint8)
    qs = q[:, :16] | (q[:, 16:] << 4)
    dbytes = d.to(torch.float16).view(torch.uint8).reshape(-1, 2)
    blocks = torch.cat([dbytes, qs], dim=1)  # [n_blocks, 18]
    return blocks.cpu().numpy().reshape(-1)


def _tensor_bytes(w, ggml_type: int) -> "np.ndarray":
    import torch

    if ggml_type == GGML_Q4_0:
        return quantize_q4_0(w)
    dt = torch.float32 if ggml_type == GGML_F32 else torch.float16
    return w.to(dt).contiguous().cpu().numpy().view(np.uint8).reshape(-1)


def _nbytes(shape: Tuple[int, ...], ggml_type: int) -> int:
    n = 1
    for s in shape:
        n *= s
    return {GGML_F32: 4 * n, GGML_F16: 2 * n, GGML_Q4_0: n // 32 * 18}[ggml_type]


def write_llama_gguf(path: str, state: Dict[str, "object"], shape: dict, weight_type: str = "q4_0") -> dict:
    """Writes `state` (HF names -> torch tensors, any device) as a llama-arch GGUF. Returns a summary."""
    wtype = {"q4_0": GGML_Q4_0, "f32": GGML_F32, "f16": GGML_F16}[weight_type]
    h, nh, kvh = shape["hidden_size"], shape["num_attention_heads"], shape["num_key_value_heads"]
    vocab = shape["vocab_size"]
    names = [n for n in state if not n.endswith("rotary_emb.inv_freq")]
    if shape["tie_word_embeddings"]:
        names = [n for n in names if n != "lm_head.weight"]
    order = ["model.embed_tokens.weight"] + sorted(
        (n for n in names if n.startswith("model.layers.")),
        key=lambda n: (int(n.split(".")[2]), n),
    ) + [n for n in ("model.norm.weight", "lm_head.weight") if n in names]
    assert sorted(order) == sorted(names), (sorted(set(names) - set(order)), sorted(set(order) - set(names)))

    infos: List[Tuple[str, str, Tuple[int, ...], int, int]] = []  # gguf name, hf name, hf shape, type, offset
    offset = 0
    for n in order:
        t = state[n]
        ttype = GGML_F32 if t.dim() == 1 else wtype
        if ttype == GGML_Q4_0 and t.shape[-1] % 32:
            ttype = GGML_F16
        infos.append((gguf_name(n), n, tuple(t.shape), ttype, offset))
        offset += _nbytes(tuple(t.shape), ttype)
        offset = (offset + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT

    md = [
        ("general.architecture", T_STRING, "llama"),
        ("general.name", T_STRING, "bench-random-llama"),
        ("general.alignment", T_UINT32, ALIGNMENT),
        ("general.file_type", T_UINT32, FILE_TYPE[weight_type]),
        ("llama.context_length", T_UINT32, shape["max_position_embeddings"]),
        ("llama.embedding_length", T_UINT32, h),
        ("llama.block_count", T_UINT32, shape["num_hidden_layers"]),
        ("llama.feed_forward_length", T_UINT32, shape["intermediate_size"]),
        ("llama.attention.head_count", T_UINT32, nh),
        ("llama.attention.head_count_kv", T_UINT32, kvh),
        ("llama.rope.dimension_count", T_UINT32, h // nh),
        ("llama.rope.freq_base", T_FLOAT32, float(shape["rope_theta"])),
        ("llama.attention.layer_norm_rms_epsilon", T_FLOAT32, float(shape["rms_norm_eps"])),
        ("llama.vocab_size", T_UINT32, vocab),
        ("tokenizer.ggml.model", T_STRING, "gpt2"),
        ("tokenizer.ggml.pre", T_STRING, "gpt-2"),
        ("tokenizer.ggml.tokens", T_ARRAY, (T_STRING, [f"t{i}" for i in range(vocab)])),
        ("tokenizer.ggml.token_type", T_ARRAY, (T_INT32, [1] * vocab)),
        ("tokenizer.ggml.merges", T_ARRAY, (T_STRING, [])),
        ("tokenizer.ggml.eos_token_id", T_UINT32, vocab - 1),
        ("tokenizer.ggml.add_bos_token", T_BOOL, False),
    ]
    with open(path, "wb") as f:
        f.write(GGUF_MAGIC + struct.pack("<IQQ", 3, len(infos), len(md)))
        for key, vtype, v in md:
            f.write(_str(key) + struct.pack("<I", vtype) + _value(vtype, v))
        for gname, _, hf_shape, ttype, off in infos:
            dims = tuple(reversed(hf_shape))  # ne0 (contiguous) first
            f.write(_str(gname) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims))
            f.write(struct.pack("<IQ", ttype, off))
        _pad(f)
        data_start = f.tell()
        for gname, hf, hf_shape, ttype, off in infos:
            t = state[hf]
            if hf.endswith("self_attn.q_proj.weight"):
                t = permute_qk(t, nh)
            elif hf.endswith("self_attn.k_proj.weight"):
                t = permute_qk(t, kvh)
            assert f.tell() - data_start == off, (gname, f.tell() - data_start, off)
            data = _tensor_bytes(t, ttype)
            assert data.nbytes == _nbytes(hf_shape, ttype), gname
            f.write(memoryview(np.ascontiguousarray(data)))
            _pad(f, data_start)
        size = f.tell()
    n_q = sum(1 for i in infos if i[3] == GGML_Q4_0)
    return dict(path=path, bytes=size, tensors=len(infos), quantized_tensors=n_q, weight_type=weight_type)


def _pad(f: BinaryIO, base: int = 0) -> None:
    rem = (f.tell() - base) % ALIGNMENT
    if rem:
        f.write(b"\0" * (ALIGNMENT - rem))
