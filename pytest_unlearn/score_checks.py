"""The guards of scoring against non-finite logits: a NaN or +inf logit at a real token position,
in the teacher-forced pass (:func:`_finite_logits`) or while generating
(:func:`_nonfinite_step_hook`), would read as "the model does not predict the answer", i.e. as
forgotten, so the :class:`~pytest_unlearn.scoring.Scorer` refuses to score it; and how those
errors name the model and the samples."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .data import Dataset


def _sample_names(dataset: "Dataset") -> list[str]:
    """``path sample <id> (line 7)``: the file, the sample id and, when known, where it came from."""
    where = getattr(dataset, "locations", None)
    if where is None or len(where) != len(dataset):
        return [f"{dataset.source} sample {sid}" for sid in dataset.ids]
    return [f"{dataset.source} sample {sid} ({loc})" for sid, loc in zip(dataset.ids, where)]


def _model_label(handle) -> str:
    name = getattr(handle, "name", "model")
    return f"the {'' if name == 'model' else name + ' '}model ({getattr(handle, 'source', '<memory>')})"


def _finite_logits(logits_fn: Callable | None, bad_rows: list) -> Callable:
    """Wrap a ``logits_fn`` (default :func:`~pytest_unlearn.forward.answer_logits`) so that every
    batch row with a NaN or +inf logit at a real (non-padding) position is noted in ``bad_rows``
    (as its unpadded token ids).  A -inf logit (a token made impossible) is legitimate."""
    from .forward import answer_logits

    fn = logits_fn or answer_logits

    def checked(model, ids, mask, pos, keep):
        import torch

        logits = fn(model, ids, mask, pos, keep)
        real = mask[:, -logits.shape[1]:].bool()
        broken = ~torch.isfinite(logits.amax(-1)) & real  # amax propagates NaN and +inf
        for r in torch.nonzero(broken.any(-1)).flatten().tolist():
            bad_rows.append(tuple(ids[r][mask[r].bool()].tolist()))
        return logits

    return checked


def _nonfinite_step_hook(flag: list) -> Callable:
    """A forward hook noting (in ``flag``) a NaN or +inf next-token logit during generation."""
    def hook(module, args, output):
        import torch

        logits = getattr(output, "logits", None)
        if flag or logits is None or not torch.is_tensor(logits) or logits.dim() != 3:
            return None
        if not bool(torch.isfinite(logits[:, -1, :].amax(-1)).all()):
            flag.append(True)
        return None

    return hook
