"""``--activation-fn swish`` for fairseq 0.12's transformer (OPUS-MT's activation, SiLU).

fairseq 0.12 lists swish nowhere in the transformer's ``--activation-fn`` choices, and its
``utils.get_activation_fn("swish")`` returns the class ``torch.nn.SiLU`` rather than a function (calling it
on a tensor builds a module). Importing fairseq_kd (``--user-dir fairseq_kd``) adds swish to the choices of
the transformer's configuration and makes the lookup return ``torch.nn.functional.silu``. A swish model
therefore runs in fairseq with the plugin only; CTranslate2 converts and runs it as it is.
"""

from typing import Any

import torch.nn.functional as F
from fairseq import utils
from fairseq.dataclass import ChoiceEnum
from fairseq.models.transformer.transformer_config import TransformerConfig


def enable_swish() -> None:
    """Idempotent: the two changes described above."""
    lookup = utils.get_activation_fn
    if not getattr(lookup, "fairseq_kd_swish", False):

        def get_activation_fn(activation):
            return F.silu if activation == "swish" else lookup(activation)

        get_activation_fn.fairseq_kd_swish = True
        utils.get_activation_fn = get_activation_fn
    field = TransformerConfig.__dataclass_fields__["activation_fn"]
    choices = list(field.type._member_names_) if hasattr(field.type, "_member_names_") else []
    if "swish" not in choices:
        field.type = ChoiceEnum(choices + ["swish"])


def uses_swish(model_cfg: Any) -> bool:
    """Whether a checkpoint's model configuration (a dict or a namespace) asks for swish."""
    value = model_cfg.get("activation_fn") if isinstance(model_cfg, dict) else getattr(model_cfg, "activation_fn", None)
    return str(value) == "swish"
