"""Property: teacher-forced ES equals ES found by actual greedy generation.

For random tiny models and random token sequences, k* from the single forward pass
must equal the smallest prefix length k from which greedy decoding reproduces the
rest of the answer, found by calling ``generate`` for every k (the method of the
paper's own code).  Models run in float64 so that the cached and uncached
computations agree to the last bit on argmax decisions.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_unlearn.forward import teacher_forced_stats
from pytest_unlearn.metrics import extraction_strength
from pytest_unlearn.prompts import Encoded
from pytest_unlearn.toy import tiny_llama, tiny_tokenizer

_TOK = tiny_tokenizer(["abc def ghi jkl mno pqr stu vwx yz"] * 4, vocab_size=300)
_MODELS: dict[int, torch.nn.Module] = {}


def _model(seed: int):
    if seed not in _MODELS:
        m = tiny_llama(_TOK, hidden_size=32, layers=2, heads=2, intermediate_size=64, seed=seed).double()
        # a small vocabulary slice makes correct argmaxes common enough to matter
        _MODELS[seed] = m
    return _MODELS[seed]


def _es_by_generation(model, ids, answer_start):
    answer = ids[answer_start:]
    n = len(answer)
    for k in range(n + 1):
        prefix = torch.tensor([ids[: answer_start + k]])
        if k == n:
            return 1 - k / n
        out = model.generate(prefix, attention_mask=torch.ones_like(prefix), max_new_tokens=n - k,
                             min_new_tokens=n - k, do_sample=False, pad_token_id=_TOK.pad_token_id,
                             eos_token_id=None)
        if out[0, prefix.shape[1]:].tolist() == answer[k:]:
            return 1 - k / n
    raise AssertionError


def _greedy_continuation(model, prefix, n):
    """Tokens the model itself would produce: answers that are partly extractable."""
    t = torch.tensor([prefix])
    out = model.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=n, min_new_tokens=n,
                         do_sample=False, pad_token_id=_TOK.pad_token_id, eos_token_id=None)
    return out[0, len(prefix):].tolist()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 3),
    prompt=st.lists(st.integers(3, 40), min_size=1, max_size=6),
    n_answer=st.integers(1, 6),
    corrupt=st.lists(st.integers(0, 5), max_size=2),
    batch_size=st.integers(1, 3),
)
def test_teacher_forced_es_equals_generation_es(seed, prompt, n_answer, corrupt, batch_size):
    model = _model(seed)
    answer = _greedy_continuation(model, prompt, n_answer)
    for pos in corrupt:  # make some positions wrong, like a model that half-knows
        if pos < n_answer:
            answer[pos] = (answer[pos] + 7) % 40 + 3
    sample = Encoded(prompt + answer, len(prompt))
    other = Encoded([5, 6, 7, 8, 9, 10, 11], 4)  # batch neighbour of another length
    stats = teacher_forced_stats(model, [other, sample][: 1 + 1] if batch_size > 1 else [sample],
                                 pad_token_id=_TOK.pad_token_id, batch_size=batch_size)
    es_tf = extraction_strength(stats.correct[-1])
    assert es_tf == pytest.approx(_es_by_generation(model, sample.input_ids, sample.answer_start))
