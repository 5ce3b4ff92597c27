"""Cold and warm loads of a model folder: loading by path then hashing the files, against
mapping each shard once and hashing it from that mapping (``pytest_unlearn/models/shards.py``).

    python benchmarks/bench_loading.py [--hidden 1024] [--layers 16] [--vocab 32000]
                                       [--shard-size 500MB] [--rounds 3] [--dtype float32]

Builds a random Llama folder from a config (float32 safetensors, sharded by ``save_pretrained``)
and loads it with ``load_model`` on the CPU, alternating the two routes:

* **by path** (the previous code, still used for ``sharded``, ``trust_remote_code``, quantized
  and pickle checkpoints): ``from_pretrained(folder)`` maps the shards, then the fingerprint
  opens every file again and hashes it through ``read()``;
* **mapped once** (the default now): each shard opened and mapped once, hashed from the mapping
  in background threads while ``from_pretrained`` builds the model from views of it.

A **cold** load starts with no digest memo (a fresh ``PYTEST_UNLEARN_CACHE_DIR``) and the
folder's pages evicted from the page cache (``posix_fadvise(POSIX_FADV_DONTNEED)`` on every
file, after the previous model was freed so no mapping pins them); a **warm** load follows it
with the memo and the page cache filled.  Per load: wall seconds; CPU seconds of the process
(all threads, steadier than wall time on a shared machine); ``disk``: bytes the process caused
to be fetched from storage (``read_bytes`` in ``/proc/self/io``); ``read()``: bytes returned by
read system calls (``rchar``; a mapping's page faults are not counted); opens of the weight
shards (inotify, Linux).  Medians over ``--rounds``; the fingerprints of the two routes are
checked to be equal.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def proc_io() -> dict[str, int]:
    with open("/proc/self/io") as fh:
        return {k: int(v) for k, v in (line.split(": ") for line in fh.read().splitlines())}


def evict(folder: Path) -> None:
    for path in folder.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class Opens:
    """inotify open events of the watched files (closes watched too, so opens are not merged)."""

    def __init__(self, paths):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        for path in paths:
            self.libc.inotify_add_watch(self.fd, os.fsencode(path), 0x20 | 0x10)  # IN_OPEN | IN_CLOSE_NOWRITE

    def count(self) -> int:
        opens = 0
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            pos = 0
            while pos < len(data):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", data, pos)
                pos += 16 + length
                opens += bool(mask & 0x20)
        os.close(self.fd)
        return opens


def build(folder: Path, hidden: int, layers: int, vocab: int, shard_size: str) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pytest_unlearn.toy import tiny_tokenizer

    tokenizer = tiny_tokenizer(["The capital of France is Paris."] * 4, vocab_size=300)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 1),
                         max_position_embeddings=512, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.save_pretrained(folder, max_shard_size=shard_size)
    tokenizer.save_pretrained(folder)
    n = sum(p.numel() for p in model.parameters())
    del model
    gc.collect()
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--shard-size", default="500MB")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from pytest_unlearn.models import load_model, loading
    from pytest_unlearn.models.shards import NotMappable

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    mapped_route = loading.load_mapped

    def by_path_route(*_args, **_kwargs):
        raise NotMappable("benchmark: load by path")

    results: dict[tuple[str, str], list[dict]] = {}
    fingerprints = set()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        n_params = build(folder, args.hidden, args.layers, args.vocab, args.shard_size)
        shards = sorted(folder.glob("*.safetensors"))
        size = sum(p.stat().st_size for p in shards)
        for r in range(args.rounds):
            for route in (("by path", "mapped once") if r % 2 == 0 else ("mapped once", "by path")):
                loading.load_mapped = mapped_route if route == "mapped once" else by_path_route
                os.environ["PYTEST_UNLEARN_CACHE_DIR"] = str(Path(tmp) / f"cache-{r}-{route}")
                for state in ("cold", "warm"):
                    if state == "cold":
                        evict(folder)
                    opens = Opens(shards)
                    before, t0, c0 = proc_io(), time.perf_counter(), time.process_time()
                    handle = load_model(folder, device="cpu", dtype=args.dtype)
                    wall, cpu, after = time.perf_counter() - t0, time.process_time() - c0, proc_io()
                    fingerprints.add(handle.fingerprint)
                    del handle
                    gc.collect()
                    results.setdefault((route, state), []).append(
                        {"wall": wall, "cpu": cpu, "disk": after["read_bytes"] - before["read_bytes"],
                         "read": after["rchar"] - before["rchar"], "opens": opens.count()})
        loading.load_mapped = mapped_route
    assert len(fingerprints) == 1, "the two routes gave different fingerprints"
    mb = 1e6
    print(f"bench_loading: {n_params / 1e6:.0f}M parameters, {len(shards)} shards, {size / mb:.0f} MB of "
          f"safetensors, loaded as {args.dtype} on the CPU; medians of {args.rounds} rounds "
          f"(torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs)")
    print("")
    print("| load | route | wall s | CPU s | disk read (read_bytes) | read() bytes (rchar) | opens per shard |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for state in ("cold", "warm"):
        for route in ("by path", "mapped once"):
            rows = results[(route, state)]
            med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
            print(f"| {state} | {route} | {med['wall']:.2f} | {med['cpu']:.2f} | {med['disk'] / mb:.0f} MB | "
                  f"{med['read'] / mb:.0f} MB | {med['opens'] / len(shards):.1f} |")
    print(f"\nall {2 * 2 * args.rounds} loads gave the same fingerprint {next(iter(fingerprints))[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
