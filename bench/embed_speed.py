"""Raw embedding speed of the packaged MiniLM (CTranslate2, CPU): int8 vs float32 compute, for
64-token and 256-token inputs, in batches of ~2k padded tokens (the daemon's default batch size).

Inputs are real text (tldr English pages from bench/.cache/tldr-en, else the ../shared/data/eval
corpora) packed into pieces of exactly N tokens ([CLS] + N-2 word pieces + [SEP]). Each compute type
runs in its own child process, so its peak RSS is its own. The median of `--runs` timed passes over
all inputs is reported (one untimed batch first), as chunks/s and tokens/s.

With `--torch-venv PATH`, sentence-transformers in that venv's python (fp32, CPU, batch 32, same
thread count) embeds the same texts as a peer; its rate, the ratio and the cosine agreement of the
vectors are printed. Without a python there the peer is skipped.

    python bench/embed_speed.py [--threads 2] [--runs 3] [--tokens-per-length 65536] [--torch-venv PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CACHE = Path(__file__).resolve().parent / ".cache"
EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"
MODEL = "all-minilm-l6-v2"
LENGTHS = (64, 256)
COMPUTE_TYPES = ("int8", "float32")
BATCH_TOKENS = 2048


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def source_texts(limit_chars: int) -> tuple[str, list[str]]:
    """Real text, in a stable order: tldr English pages if extracted, else the eval corpora."""
    pages = sorted((CACHE / "tldr-en").rglob("*.md")) if (CACHE / "tldr-en").is_dir() else []
    texts: list[str] = []
    total = 0
    if pages:
        for page in pages:
            text = page.read_text(encoding="utf-8", errors="replace")
            texts.append(text)
            total += len(text)
            if total >= limit_chars:
                break
        return f"tldr-en ({len(texts)} pages)", texts
    for corpus in sorted(EVAL.glob("*/corpus.jsonl")):
        if corpus.parent.name == "drcd-retrieval":
            continue  # Chinese: the model is English
        with corpus.open(encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                texts.append(f"{d.get('title') or ''}\n{d.get('text') or ''}")
                total += len(texts[-1])
                if total >= limit_chars:
                    return "eval corpora", texts
    return "eval corpora", texts


def model_dir(home: Path) -> Path:
    from qmdd.models.registry import ModelRegistry
    from qmdd.paths import resolve_paths

    return ModelRegistry(resolve_paths({"QMDD_HOME": str(home)})).converted_dir(MODEL)


def make_inputs(folder: Path, tokens_per_length: int) -> dict[int, dict[str, Any]]:
    """For each length: exact-length id sequences and their decoded text (for the peer)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    need = sum(tokens_per_length for _ in LENGTHS)
    origin, texts = source_texts(limit_chars=need * 6)
    stream: list[int] = []
    for encoding in tokenizer.encode_batch(texts, add_special_tokens=False):
        stream.extend(encoding.ids)
    out: dict[int, dict[str, Any]] = {}
    offset = 0
    for length in LENGTHS:
        body = length - 2
        count = max(1, tokens_per_length // length)
        ids, decoded = [], []
        for _ in range(count):
            if offset + body > len(stream):
                offset = 0  # not enough text: wrap around (still real text, repeated)
            piece = stream[offset:offset + body]
            offset += body
            ids.append([cls, *piece, sep])
            decoded.append(tokenizer.decode(piece))
        out[length] = {"ids": ids, "texts": decoded, "origin": origin}
    return out


def batches(seqs: list[list[int]], batch_tokens: int) -> list[list[list[int]]]:
    per = max(1, batch_tokens // max(len(s) for s in seqs))
    return [seqs[i:i + per] for i in range(0, len(seqs), per)]


def child(args: argparse.Namespace) -> int:
    """One compute type, all lengths; prints a JSON line."""
    from qmdd.models.runtime import LoadedModel

    spec = json.loads(Path(args.child_inputs).read_text())
    t0 = time.perf_counter()
    model = LoadedModel(Path(spec["folder"]), device="cpu", compute_type=args.child, threads=args.threads, workers=1)
    load_s = time.perf_counter() - t0
    rss_loaded = peak_rss_mib()
    results: dict[str, Any] = {"compute_type": args.child, "load_s": load_s, "rss_after_load_mib": rss_loaded,
                               "lengths": {}}
    for length, data in spec["inputs"].items():
        seqs = data["ids"]
        parts = batches(seqs, args.batch_tokens)
        model.embed_ids(parts[0])  # warm-up
        runs, vectors = [], None
        for _ in range(args.runs):
            t0 = time.perf_counter()
            out = [model.embed_ids(b) for b in parts]
            runs.append(time.perf_counter() - t0)
            vectors = np.concatenate(out)
        assert vectors is not None
        median = statistics.median(runs)
        np.save(Path(args.child_inputs).with_name(f"ct2-{args.child}-{length}.npy"), vectors[:args.compare])
        results["lengths"][length] = {"chunks": len(seqs), "batch": len(parts[0]), "runs_s": runs,
                                      "median_s": median, "chunks_per_s": len(seqs) / median,
                                      "tokens_per_s": len(seqs) * int(length) / median}
    results["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(results))
    return 0


PEER = r"""
import json, resource, statistics, sys, time
spec = json.load(open(sys.argv[1]))
import numpy as np, torch
torch.set_num_threads(spec["threads"])
from sentence_transformers import SentenceTransformer
t0 = time.perf_counter()
model = SentenceTransformer(spec["model"], device="cpu")
load_s = time.perf_counter() - t0
model.max_seq_length = 256
out = {"load_s": load_s, "torch": torch.__version__, "lengths": {}}
for length, texts in spec["texts"].items():
    model.encode(texts[:32], batch_size=32, normalize_embeddings=True)
    runs = []
    for _ in range(spec["runs"]):
        t0 = time.perf_counter()
        vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        runs.append(time.perf_counter() - t0)
    median = statistics.median(runs)
    lens = [len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=256)["input_ids"]]
    np.save(spec["save"].format(length=length), vectors[: spec["compare"]])
    out["lengths"][length] = {"chunks": len(texts), "runs_s": runs, "median_s": median,
                              "chunks_per_s": len(texts) / median, "tokens_per_s": sum(lens) / median,
                              "mean_tokens": sum(lens) / len(lens)}
out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def run_json(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} … failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cosine_agreement(a: Path, b: Path) -> float | None:
    if not a.exists() or not b.exists():
        return None
    x, y = np.load(a), np.load(b)
    n = min(len(x), len(y))
    return float(np.mean(np.sum(x[:n] * y[:n], axis=1)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from qmdd.models.runtime import cpu_threads

    parser.add_argument("--threads", type=int, default=cpu_threads(), help="intra-op threads (default: all cores)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-tokens", type=int, default=BATCH_TOKENS)
    parser.add_argument("--tokens-per-length", type=int, default=65536,
                        help="tokens embedded per pass at each length (64 tok: /64 inputs, 256 tok: /256)")
    parser.add_argument("--compute-types", default=",".join(COMPUTE_TYPES))
    parser.add_argument("--torch-venv", type=Path, default=None,
                        help="a venv with sentence-transformers + torch: run it as a peer on the same texts")
    parser.add_argument("--compare", type=int, default=256, help="vectors kept per run for the agreement check")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-inputs", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    with tempfile.TemporaryDirectory(prefix="qmdd-embed-speed-", dir="/tmp") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        folder = model_dir(work / "home")
        convert_s = time.perf_counter() - t0
        inputs = make_inputs(folder, args.tokens_per_length)
        spec_file = work / "inputs.json"
        spec_file.write_text(json.dumps({"folder": str(folder), "inputs": {
            str(k): {"ids": v["ids"]} for k, v in inputs.items()}}))
        origin = next(iter(inputs.values()))["origin"]
        print(f"model {MODEL}, CTranslate2 on CPU, {args.threads} thread(s), 1 worker; converted in {convert_s:.1f}s")
        print(f"inputs: real text from {origin}, packed to exact lengths; batches of ~{args.batch_tokens} "
              f"tokens; median of {args.runs} runs")
        results = {}
        for compute_type in [c.strip() for c in args.compute_types.split(",") if c.strip()]:
            results[compute_type] = run_json([sys.executable, __file__, "--child", compute_type, "--child-inputs",
                                              str(spec_file), "--threads", str(args.threads), "--runs",
                                              str(args.runs), "--batch-tokens", str(args.batch_tokens),
                                              "--compare", str(args.compare)])

        print(f"\n{'compute':<9}{'tokens':>7}{'inputs':>7}{'batch':>6}{'median s':>10}{'chunks/s':>10}"
              f"{'tokens/s':>10}{'runs (s)':>24}")
        for compute_type, r in results.items():
            for length, m in r["lengths"].items():
                spread = ", ".join(f"{s:.2f}" for s in m["runs_s"])
                print(f"{compute_type:<9}{length:>7}{m['chunks']:>7}{m['batch']:>6}{m['median_s']:>10.2f}"
                      f"{m['chunks_per_s']:>10.1f}{m['tokens_per_s']:>10.0f}{spread:>24}")
        print()
        for compute_type, r in results.items():
            print(f"{compute_type}: load {r['load_s']:.2f}s, RSS after load {r['rss_after_load_mib']:.0f} MiB, "
                  f"peak RSS {r['peak_rss_mib']:.0f} MiB")
        if "int8" in results and "float32" in results:
            for length in results["int8"]["lengths"]:
                speedup = (results["int8"]["lengths"][length]["chunks_per_s"]
                           / results["float32"]["lengths"][length]["chunks_per_s"])
                agree = cosine_agreement(work / f"ct2-int8-{length}.npy", work / f"ct2-float32-{length}.npy")
                print(f"{length} tokens: int8 is {speedup:.2f}x float32; mean cosine int8 vs float32 vectors "
                      f"{agree:.4f}")

        if args.torch_venv is None:
            print("\npeer: skipped (no --torch-venv)")
            return 0
        python = args.torch_venv / "bin" / "python"
        if not python.exists():
            print(f"\npeer: skipped ({python} does not exist)")
            return 0
        from qmdd.models.registry import PACKAGED, packaged_source

        source = packaged_source(PACKAGED[MODEL])
        peer_spec = work / "peer.json"
        peer_spec.write_text(json.dumps({
            "model": str(source), "threads": args.threads, "runs": args.runs, "compare": args.compare,
            "save": str(work / "torch-{length}.npy"), "texts": {str(k): v["texts"] for k, v in inputs.items()}}))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "OMP_NUM_THREADS": str(args.threads)}
        try:
            peer = run_json([str(python), "-c", PEER, str(peer_spec)], env=env)
        except RuntimeError as exc:
            print(f"\npeer: failed: {exc}")
            return 1
        print(f"\npeer: sentence-transformers (torch {peer['torch']}), fp32, CPU, batch 32, {args.threads} thread(s); "
              f"load {peer['load_s']:.2f}s, peak RSS {peer['peak_rss_mib']:.0f} MiB")
        print(f"{'tokens':>7}{'mean tok':>9}{'chunks/s':>10}{'tokens/s':>10}{'int8 x':>8}{'fp32 x':>8}"
              f"{'cos int8':>10}{'cos fp32':>10}")
        for length, m in peer["lengths"].items():
            ratios = []
            for compute_type in ("int8", "float32"):
                ours = results.get(compute_type, {}).get("lengths", {}).get(length)
                ratios.append(f"{ours['chunks_per_s'] / m['chunks_per_s']:>8.2f}" if ours else f"{'-':>8}")
            cos = []
            for compute_type in ("int8", "float32"):
                agree = cosine_agreement(work / f"ct2-{compute_type}-{length}.npy", work / f"torch-{length}.npy")
                cos.append(f"{agree:>10.4f}" if agree is not None else f"{'-':>10}")
            print(f"{length:>7}{m['mean_tokens']:>9.1f}{m['chunks_per_s']:>10.1f}{m['tokens_per_s']:>10.0f}"
                  f"{''.join(ratios)}{''.join(cos)}")
        print("(x: CTranslate2 chunks/s over the peer's; cos: mean cosine of the same inputs' vectors. The peer "
              "re-tokenizes decoded text, so its lengths can differ slightly: see mean tok)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
