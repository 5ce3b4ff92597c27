"""The per-token statistics are reduced in chunks of answer positions: the same numbers as one
full-vocabulary pass over every position (the published definitions, written out here), with
float32 temporaries within 1.5x the kept logits (measured with torch's CPU memory profiler)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pytest_unlearn.forward import STATS_MEMORY_FACTOR, position_stats, stats_from_logits  # noqa: E402
from pytest_unlearn.prompts import Encoded  # noqa: E402


def reference_stats(logits, rows, cols, targets):
    """log p(y), argmax hit, E[log p] and std[log p] under p, from the definitions, float64."""
    lg = logits[torch.tensor(rows), torch.tensor(cols)].double()
    logp = torch.log_softmax(lg, -1)
    p = logp.exp()
    t = torch.tensor(targets)
    lp = logp.gather(-1, t[:, None])[:, 0]
    terms = torch.where(p > 0, p * logp, torch.zeros_like(p))
    mu = terms.sum(-1)
    second = torch.where(p > 0, p * logp * logp, torch.zeros_like(p)).sum(-1)
    return lp, lg.argmax(-1) == t, mu, (second - mu * mu).clamp(min=0).sqrt()


def peak_cpu_bytes(fn) -> int:
    """Peak of live CPU tensor bytes allocated while ``fn`` runs (allocations by op, frees by the
    profiler's memory events, in time order)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.time_range.start, e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage)
                    for e in prof.events())
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return peak


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(0)
    vocab, keep = 5003, 40
    logits = torch.randn(3, keep, vocab, generator=gen) * 4
    logits[0, 5, :100] = -float("inf")  # impossible tokens: p log p must count as 0
    lengths = [39, 12, 25]
    rows = [r for r, n in enumerate(lengths) for _ in range(n)]
    cols = [c for n in lengths for c in range(keep - 1 - n, keep - 1)]
    targets = torch.randint(0, vocab, (len(rows),), generator=gen).tolist()
    targets[0] = int(logits[0, cols[0]].argmax())
    return logits, rows, cols, targets, lengths


@pytest.mark.parametrize("chunk", [1, 7, None, 10_000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_statistics_match_the_definitions(batch, chunk, dtype):
    logits, rows, cols, targets, _ = batch
    logits = logits.to(dtype)
    got = position_stats(logits, rows, cols, targets, chunk)
    want = reference_stats(logits.float(), rows, cols, targets)
    for g, w in zip(got, want):
        assert g.shape == w.shape
    assert torch.equal(got[1], want[1])
    for g, w in zip((got[0], got[2], got[3]), (want[0], want[2], want[3])):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=2e-5)
    # the chunking itself changes nothing: bit for bit the same as one chunk
    whole = position_stats(logits, rows, cols, targets, len(rows))
    assert all(torch.equal(a, b) for a, b in zip(got, whole))


def test_statistics_take_at_most_one_and_a_half_times_the_kept_logits(batch):
    logits, rows, cols, targets, lengths = batch
    encoded = [Encoded(input_ids=[1] * 10 + targets[sum(lengths[:r]):sum(lengths[:r + 1])], answer_start=10)
               for r in range(len(lengths))]
    kept = logits.numel() * logits.element_size()
    out: dict = {}
    peak_cpu_bytes(lambda: None)  # the profiler's own first-use allocations
    peak = peak_cpu_bytes(lambda: stats_from_logits(logits, encoded, range(3), out))
    assert peak <= STATS_MEMORY_FACTOR * kept, f"{peak / kept:.2f}x the kept logits"
    assert [len(out[i]["logprob"]) for i in range(3)] == lengths
