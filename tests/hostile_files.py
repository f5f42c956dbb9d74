"""Corrupt model files for the hostile-engine suite: GGUF and safetensors edited at the byte level
(truncated, bit-flipped, a field overwritten), and HF config.json values set out of range.

GGUF layout (llama.cpp's gguf.md): magic "GGUF", u32 version, u64 tensor count, u64 key count, the
keys (u64-length string, u32 type, value), the tensor infos (name, u32 n_dims, u64 dims, u32 ggml
type, u64 offset), padding to the alignment, then the data. safetensors: u64 header length, a JSON
header, the data.
"""

import json
import random
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def _string(buf: bytes, off: int) -> Tuple[str, int]:
    (n,) = struct.unpack_from("<Q", buf, off)
    return buf[off + 8 : off + 8 + n].decode("utf-8", "replace"), off + 8 + n


def _skip_value(buf: bytes, off: int, vtype: int) -> int:
    if vtype in _SCALARS:
        return off + struct.calcsize(_SCALARS[vtype])
    if vtype == _STRING:
        return _string(buf, off)[1]
    if vtype == _ARRAY:
        etype, n = struct.unpack_from("<IQ", buf, off)
        off += 12
        if etype in _SCALARS:
            return off + n * struct.calcsize(_SCALARS[etype])
        for _ in range(n):
            off = _skip_value(buf, off, etype)
        return off
    raise ValueError(f"GGUF value type {vtype}")


@dataclass
class GgufLayout:
    """Byte offsets of a GGUF file's fields: `keys[name] = (value type, offset of the key's length,
    offset of the value)`, `tensors[name] = offset of the tensor info's n_dims`."""

    keys: Dict[str, Tuple[int, int, int]]
    tensors: Dict[str, int]
    infos_start: int
    infos_end: int


def gguf_layout(buf: bytes) -> GgufLayout:
    _, _, n_tensors, n_kv = struct.unpack_from("<4sIQQ", buf, 0)
    off = 24
    keys: Dict[str, Tuple[int, int, int]] = {}
    for _ in range(n_kv):
        start = off
        key, off = _string(buf, off)
        (vtype,) = struct.unpack_from("<I", buf, off)
        keys[key] = (vtype, start, off + 4)
        off = _skip_value(buf, off + 4, vtype)
    infos_start = off
    tensors: Dict[str, int] = {}
    for _ in range(n_tensors):
        name, off = _string(buf, off)
        tensors[name] = off
        (n_dims,) = struct.unpack_from("<I", buf, off)
        off += 4 + 8 * n_dims + 4 + 8
    return GgufLayout(keys, tensors, infos_start, off)


def pack(buf: bytes, off: int, fmt: str, value: Any) -> bytes:
    out = bytearray(buf)
    struct.pack_into(fmt, out, off, value)
    return bytes(out)


def gguf_set(buf: bytes, key: str, value: Any) -> bytes:
    """`key` set to `value` in its own scalar type."""
    vtype, _, off = gguf_layout(buf).keys[key]
    return pack(buf, off, _SCALARS[vtype], value)


def gguf_cases(buf: bytes) -> Iterator[Tuple[str, bytes, bool]]:
    """(name, file bytes, whether loading may succeed) for a valid GGUF `buf`."""
    lay = gguf_layout(buf)
    arch = "llama"
    for cut in (0, 3, 4, 8, 16, 23, 24, 40, 100, 700, lay.keys["tokenizer.ggml.merges"][2] + 20,
                lay.infos_start + 10, lay.infos_end - 3, lay.infos_end + 100, len(buf) // 2, len(buf) - 1):
        yield f"gguf truncated at {cut}", buf[:cut], False
    values: List[Tuple[str, Any]] = [
        ("context_length", 0), ("context_length", 0xFFFFFFFF), ("context_length", 1 << 25),
        ("embedding_length", 0), ("embedding_length", 1), ("embedding_length", 0xFFFFFFFF), ("embedding_length", 255),
        ("feed_forward_length", 0), ("feed_forward_length", 0xFFFFFFFF), ("feed_forward_length", 7),
        ("block_count", 0), ("block_count", 0xFFFFFFFF), ("block_count", 3),
        ("attention.head_count", 0), ("attention.head_count", 3), ("attention.head_count", 0xFFFFFFFF),
        ("attention.head_count_kv", 0), ("attention.head_count_kv", 3), ("attention.head_count_kv", 0xFFFFFFFF),
        ("rope.dimension_count", 0), ("rope.dimension_count", 63), ("rope.dimension_count", 0xFFFFFFFF),
        ("rope.freq_base", 0.0), ("rope.freq_base", -1.0), ("rope.freq_base", float("nan")), ("rope.freq_base", float("inf")),
        ("attention.layer_norm_rms_epsilon", -1e-5), ("attention.layer_norm_rms_epsilon", float("nan")),
        ("attention.layer_norm_rms_epsilon", 0.0), ("attention.layer_norm_rms_epsilon", 1e30),
        ("vocab_size", 0), ("vocab_size", 1), ("vocab_size", 0xFFFFFFFF),
    ]
    for key, value in values:
        yield f"gguf {arch}.{key} = {value}", gguf_set(buf, f"{arch}.{key}", value), False
    u64 = 0xFFFF_FFFF_FFFF_FFF0
    yield "gguf bad magic", b"GGML" + buf[4:], False
    yield "gguf version 0", pack(buf, 4, "<I", 0), False
    yield "gguf version 99", pack(buf, 4, "<I", 99), False
    yield "gguf tensor count 2^64-16", pack(buf, 8, "<Q", u64), False
    yield "gguf key count 2^64-16", pack(buf, 16, "<Q", u64), False
    yield "gguf tensor count + 1", pack(buf, 8, "<Q", len(lay.tensors) + 1), False
    yield "gguf first key length 2^64-16", pack(buf, 24, "<Q", u64), False
    name_type, name_start, name_value = lay.keys["general.name"]
    yield "gguf string value length 2^64-16", pack(buf, name_value, "<Q", u64), False
    yield "gguf value type 99", pack(buf, name_value - 4, "<I", 99), False
    _, _, tokens = lay.keys["tokenizer.ggml.tokens"]
    yield "gguf token array length 2^64-16", pack(buf, tokens + 4, "<Q", u64), False
    yield "gguf token array element type 99", pack(buf, tokens, "<I", 99), False
    first = next(iter(lay.tensors.values()))
    (n_dims,) = struct.unpack_from("<I", buf, first)
    yield "gguf tensor n_dims 99", pack(buf, first, "<I", 99), False
    yield "gguf tensor n_dims 0", pack(buf, first, "<I", 0), False
    yield "gguf tensor dim 2^64-16", pack(buf, first + 4, "<Q", u64), False
    yield "gguf tensor dim 0", pack(buf, first + 4, "<Q", 0), False
    yield "gguf tensor ggml type 99", pack(buf, first + 4 + 8 * n_dims, "<I", 99), False
    yield "gguf tensor offset 2^64-16", pack(buf, first + 8 + 8 * n_dims, "<Q", u64), False
    yield "gguf tensor offset past the end", pack(buf, first + 8 + 8 * n_dims, "<Q", len(buf)), False
    rng = random.Random(14)
    for i in range(12):
        flipped = bytearray(buf)
        for _ in range(4):
            at = rng.randrange(0, lay.infos_end)
            flipped[at] ^= 1 << rng.randrange(8)
        yield f"gguf 4 bits flipped in the header ({i})", bytes(flipped), True


def safetensors_cases(buf: bytes) -> Iterator[Tuple[str, bytes, bool]]:
    (n,) = struct.unpack_from("<Q", buf, 0)
    header: Dict[str, Any] = json.loads(buf[8 : 8 + n])
    data = buf[8 + n :]

    def rebuild(h: Any, payload: bytes = data) -> bytes:
        text = json.dumps(h).encode() if not isinstance(h, bytes) else h
        return struct.pack("<Q", len(text)) + text + payload

    for cut in (0, 4, 8, 100, 8 + n, 8 + n + 10, len(buf) // 2, len(buf) - 1):
        yield f"safetensors truncated at {cut}", buf[:cut], False
    yield "safetensors header length 2^64-16", pack(buf, 0, "<Q", 0xFFFF_FFFF_FFFF_FFF0), False
    yield "safetensors header length past the end", pack(buf, 0, "<Q", len(buf)), False
    yield "safetensors header length 0", pack(buf, 0, "<Q", 0), False
    yield "safetensors header not JSON", rebuild(b"{not json" + b" " * 10), False
    yield "safetensors header a list", rebuild([1, 2, 3]), False
    name = "lm_head.weight"

    def edited(**fields: Any) -> Dict[str, Any]:
        h = json.loads(json.dumps(header))
        h[name].update(fields)
        return h

    yield "safetensors dtype F99", rebuild(edited(dtype="F99")), False
    yield "safetensors dtype BOOL", rebuild(edited(dtype="BOOL")), False
    yield "safetensors shape disagrees with bytes", rebuild(edited(shape=[2048, 65])), False
    yield "safetensors shape transposed", rebuild(edited(shape=[64, 2048])), False
    yield "safetensors shape 2^62", rebuild(edited(shape=[1 << 62, 1 << 62])), False
    yield "safetensors negative shape", rebuild(edited(shape=[-1, 64])), False
    yield "safetensors offsets past the end", rebuild(edited(data_offsets=[0, len(data) + 4096])), False
    yield "safetensors offsets reversed", rebuild(edited(data_offsets=[524288, 0])), False
    yield "safetensors offsets 2^64", rebuild(edited(data_offsets=[0, 1 << 64])), False
    missing = {k: v for k, v in header.items() if k != name}
    yield "safetensors tensor missing", rebuild(missing), False
    shape_1d = {**header, "model.norm.weight": {**header["model.norm.weight"], "shape": [16, 4]}}
    yield "safetensors norm weight 2-D", rebuild(shape_1d), False


CONFIG_SIZE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings")


def config_cases(config: Dict[str, Any]) -> Iterator[Tuple[str, Callable[[Dict[str, Any]], Any]]]:
    """(name, edit) where edit(config) changes a copy in place, or returns bytes for the whole file."""
    for key in CONFIG_SIZE_KEYS:
        for value in (0, -1, 1 << 40, 1.5, "64"):
            yield f"config {key} = {value!r}", lambda c, k=key, v=value: c.__setitem__(k, v)
    for key, value in [
        ("rms_norm_eps", -1e-6), ("rms_norm_eps", 0), ("rms_norm_eps", "tiny"), ("rms_norm_eps", 1e30),
        ("num_key_value_heads", 3), ("head_dim", 17), ("head_dim", 2), ("hidden_act", "relu6"), ("hidden_act", 5),
        ("tie_word_embeddings", "yes"), ("model_type", 5),
        ("layer_types", ["full_attention"]), ("sliding_window", 0), ("attention_bias", "maybe"),
    ]:
        yield f"config {key} = {value!r}", lambda c, k=key, v=value: c.__setitem__(k, v)
    for scaling in ("linear", {"rope_type": "alien", "factor": 2.0}, {"rope_type": "yarn"},
                    {"rope_type": "linear", "factor": -2.0}, {"rope_type": "dynamic", "factor": 1e300}):
        def set_scaling(c: Dict[str, Any], s: Any = scaling) -> None:
            del c["rope_parameters"]  # the transformers 4 form, where rope_scaling is read
            c["rope_scaling"] = s
        yield f"config rope_scaling = {scaling!r}", set_scaling
    for theta in (0.0, -10.0, 1.0):
        def set_theta(c: Dict[str, Any], t: float = theta) -> None:
            c["rope_theta"] = t
            c["rope_parameters"]["rope_theta"] = t
        yield f"config rope_theta = {theta}", set_theta
    yield "config not JSON", lambda c: b"{ this is not json"
    yield "config a JSON list", lambda c: b"[1, 2]"
    yield "config empty", lambda c: b""
    yield "config nested 100,000 deep", lambda c: b"[" * 100_000 + b"]" * 100_000


def write_dir_case(good: Path, dest: Path, file_name: str, content: bytes) -> Path:
    """A copy of the model directory `good` with `file_name` replaced by `content`."""
    dest.mkdir(parents=True)
    for f in good.iterdir():
        if f.is_file():
            (dest / f.name).write_bytes(content if f.name == file_name else f.read_bytes())
    return dest
