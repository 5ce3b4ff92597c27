"""The optimizer of every training run (relearning, the reference methods): on float32 weights
it is torch's AdamW with gradient clipping, the per-tensor arithmetic, bit for bit."""

import pytest

torch = pytest.importorskip("torch")


def _params(seed):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(49, 32), (32,), (7, 5, 3), (1,), (128, 16)]
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]


def _grads(params, step):
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=gen) * (3.0 if step % 2 else 0.01) for p in params]


@pytest.mark.parametrize("max_grad_norm", [0.5, 1e9])
def test_master_adamw_on_float32_weights_is_per_tensor_adamw_bit_for_bit(max_grad_norm):
    from pytest_unlearn.training import MasterAdamW

    ours, ref = _params(0), _params(0)
    opt = MasterAdamW(ours, 1e-2, weight_decay=0.1, max_grad_norm=max_grad_norm)
    ref_opt = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.1, foreach=False)
    for step in range(6):
        grads = _grads(ours, step)  # large on odd steps: the clip is active when max_grad_norm is 0.5
        opt.zero_grad()
        ref_opt.zero_grad()
        for p, q, g in zip(ours, ref, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step(lr=1e-2 / (step + 1))
        torch.nn.utils.clip_grad_norm_(ref, max_grad_norm, foreach=False)
        for group in ref_opt.param_groups:
            group["lr"] = 1e-2 / (step + 1)
        ref_opt.step()
    for p, q in zip(ours, ref):
        assert torch.equal(p.detach(), q.detach())
    assert not torch.equal(ours[0].detach(), _params(0)[0].detach())  # it trained
