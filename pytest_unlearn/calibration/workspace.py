"""The one working copy of the weights a calibration mixes into (:class:`_Workspace`), shared
by every alpha, tau and metric of an unlearned model, and the handles of the mixed models in it
(:class:`_MixedHandle`), which mix their own alpha back in when another one was used since."""

from __future__ import annotations

from ..models import ModelHandle
from .mixing import empty_copy, mix_into, mixed_fingerprint


class _Workspace:
    """The one working copy of the weights, created on first use (on ``device``, default the
    unlearned model's) and reused across alphas, taus and metrics (and across candidates in
    :func:`compare`).  Handles it gives out re-mix their alpha into it whenever they are used
    (:class:`_MixedHandle`), so any number of calibrated models share one copy."""

    def __init__(self, device=None):
        self.device = device
        self.model = None
        self.holds: tuple | None = None
        self.copies = 0  # working copies made (1 unless the copy was released and needed again)

    def ensure(self, original: "ModelHandle", unlearned: "ModelHandle", alpha: float):
        """The working copy holding theta(alpha) of these two models."""
        if self.model is None:
            from ..models import require_one_device

            for source in (original, unlearned):
                require_one_device(source.model, f"calibration (mixing {source.name} {source.source} into a "
                                                  "working copy of the weights)")
            self.model = empty_copy(unlearned.model, self.device).eval()
            self.holds = None
            self.copies += 1
        state = (id(original.model), id(unlearned.model), original.fingerprint, unlearned.fingerprint, alpha)
        if self.holds != state:
            self.holds = None
            mix_into(self.model, original.model, unlearned.model, alpha)
            self.holds = state
        return self.model

    def handle(self, original: "ModelHandle", unlearned: "ModelHandle", alpha: float,
               name: str) -> "ModelHandle":
        self.ensure(original, unlearned, alpha)
        fingerprint = mixed_fingerprint(original.fingerprint, unlearned.fingerprint, alpha)
        source = f"uwc({original.source} -> {unlearned.source}, alpha={alpha:.6g})"
        return _MixedHandle(self, original, unlearned, alpha, tokenizer=unlearned.tokenizer,
                            fingerprint=fingerprint, name=name, source=source, opt_ins=unlearned.opt_ins)

    def release(self) -> None:
        if self.model is None:
            return
        import gc

        on_cuda = any(p.is_cuda for p in self.model.parameters())
        self.model, self.holds = None, None
        gc.collect()
        if on_cuda:
            import torch
            torch.cuda.empty_cache()


class _MixedHandle(ModelHandle):
    """The mixed model theta(alpha) in a shared working copy (:class:`_Workspace`): reading
    ``model`` mixes its alpha back in when another handle of the same copy changed it."""

    def __init__(self, workspace: _Workspace, original, unlearned, alpha: float, **kwargs):
        self._workspace, self._mix = workspace, (original, unlearned, float(alpha))
        super().__init__(model=None, **kwargs)
        self._released = False

    @property
    def model(self):
        return None if self._released else self._workspace.ensure(*self._mix)

    @model.setter
    def model(self, value) -> None:
        if value is not None:
            raise ValueError("a calibrated model's weights are mixed into its working copy; they cannot be replaced")
        self._released = True  # Suite.close() drops its references this way

    @property
    def alpha(self) -> float:
        return self._mix[2]

    @property
    def device(self):
        from ..forward import input_device

        held = self._workspace.model  # where the copy lives does not depend on alpha: no mixing
        return input_device(held if held is not None else self.model)

    @property
    def dtype(self):
        held = self._workspace.model
        model = held if held is not None else self.model
        return next(p.dtype for p in model.parameters() if p.is_floating_point())

    def release(self) -> None:
        """Free the shared working copy (the next use of any handle of it makes it again)."""
        self._released = True
        self._workspace.release()
