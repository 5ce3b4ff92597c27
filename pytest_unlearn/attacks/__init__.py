"""Red-team attacks that try to bring "forgotten" knowledge back.

>>> from pytest_unlearn.attacks import parse_attack, run_attack, AttackContext
>>> parse_attack("quantize:4").spec
'quantize:bits=4,bitsandbytes=false,group_size=128,include_head=false,method=rtn'

Names (``ATTACKS``): prompt attacks ``jailbreak``, ``prefill``, ``paraphrase``, ``icl``,
``noise`` (:mod:`.prompt_attacks`) and the optimised suffix or prefix ``gcg`` (:mod:`.gcg`, its
optimiser :mod:`.gcg_search`); weight
attacks ``quantize`` (:mod:`.quantize`), ``relearn`` (:mod:`.relearn`) and ``ablate``
(:mod:`.ablate`), which share :mod:`.snapshot` (restoring the weights) and
:mod:`.session_memo` (keeping outcomes); the representation attack ``logit_lens``
(:mod:`.logit_lens`).  ``a+b`` chains a weight attack and an attack on its attacked weights
(:class:`~.chain.Chain`).  The framework (:class:`Attack`, the registry) is in :mod:`.base`,
the spec parser in :mod:`.spec`, the control rule (is an attack informative?) in :mod:`.controls`.
Each ``run`` returns an :class:`AttackOutcome`: per-sample scores aligned with the data
rows (worst case over the attack's variants), the variant behind each, the prompt used,
notes and the cost.  See ``docs/attacks.md``.

Importing this package does not import torch.
"""

from __future__ import annotations

from .base import (ATTACKS, Attack, AttackContext, AttackOutcome, Param, attack_is_uninformative, judged_by_control,
                   knowledge_kept, normalise_answer,
                   parse_attack, register_attack, run_attack, split_chain, worst_case)
from .ablate import Ablate
from .chain import Chain
from .gcg import GCG
from .logit_lens import LogitLens
from .prompt_attacks import InContext, Jailbreak, Noise, Paraphrase, Prefill
from .quantize import Quantize
from .relearn import Relearn

__all__ = ["ATTACKS", "Ablate", "Attack", "AttackContext", "AttackOutcome", "Chain", "GCG", "InContext",
           "Jailbreak", "LogitLens", "Noise", "Param", "Paraphrase", "Prefill", "Quantize", "Relearn",
           "attack_is_uninformative", "judged_by_control", "knowledge_kept", "normalise_answer",
           "parse_attack", "register_attack", "run_attack", "split_chain", "worst_case"]
