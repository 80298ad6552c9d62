"""Model surgery, narrower: a student that is a sub-network of its teacher (Minitron-style width pruning).

A student narrower than its teacher (embedding width, FFN size, attention heads or head dimensions) keeps
a subset of the teacher's units:

* **residual-stream channels**: one choice per stack (one for both when the embeddings are shared), used by
  the embeddings, every layer's inputs and outputs, every layer norm and the output projection;
* **attention heads** of each attention block, and within each kept head its **head dimensions** (for
  queries and keys, and for values, separately);
* **FFN neurons** of each layer.

The units are chosen by **activation importance** on a calibration sample of the training data, as
Minitron does (Muralidharan et al., 2024, https://arxiv.org/abs/2407.14679, section 2.2), or
**uniformly** (evenly spread indices). The scores, over the real tokens of the sample (no padding):

* a channel: the mean |activation| of that channel at the output of each layer norm of its stack,
  summed over the stack's layer norms (and over both stacks for a shared stream);
* an FFN neuron: its mean |activation| after the FFN's activation function;
* a head: the mean L2 norm of its attention output (before the output projection);
* a value dimension of a head: its mean |attention output|; a query/key dimension: its mean contribution
  to the attention logits where the attention goes, sum_s p(t, s) |q_t,i k_s,i| averaged over queries t.

The kept indices are used in ascending order, so a student of the teacher's width keeps every unit in its
place and its initialisation is exactly the depth-only one. The tensors are the teacher's slices with one
exception: when the head dimension shrinks, the query projection is multiplied by
sqrt(head_dim_student / head_dim_teacher), so that fairseq's 1/sqrt(head_dim) scaling gives the kept
dimensions the logits they had in the teacher. What a slice cannot keep (a layer norm over fewer channels,
fairseq's sqrt(width) embedding scale, sinusoidal positions of another width, which are not parameters) the
student's training recovers.
"""

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

from ..io import UserError

logger = logging.getLogger(__name__)

SELECTIONS = ("importance", "uniform")

# a layer's parameter: (stack, layer index, the rest of its name)
LAYER_KEY = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.(.+)$")


class WidthError(UserError):
    pass


def widths(cfg: Any) -> Dict[str, Dict[str, int]]:
    """The widths of a transformer configuration that a narrower student may shrink, per stack."""
    return {
        stack: {
            "embed_dim": getattr(cfg, f"{stack}_embed_dim"),
            "ffn_dim": getattr(cfg, f"{stack}_ffn_embed_dim"),
            "heads": getattr(cfg, f"{stack}_attention_heads"),
        }
        for stack in ("encoder", "decoder")
    }


def check_widths(student_cfg: Any, teacher_cfg: Any) -> None:
    """Raises WidthError for a student that is not a sub-network of the teacher: wider anywhere, more heads,
    wider heads, a decoder input/output width of its own, or streams that cannot be shared."""
    ours, theirs = widths(student_cfg), widths(teacher_cfg)
    for stack in ("encoder", "decoder"):
        for name, what in (("embed_dim", "width"), ("ffn_dim", "FFN size"), ("heads", "attention heads")):
            flag = f"--{stack}-{'ffn-embed-dim' if name == 'ffn_dim' else 'embed-dim' if name == 'embed_dim' else 'attention-heads'}"
            if ours[stack][name] > theirs[stack][name]:
                raise WidthError(
                    f"cannot initialise the student from the teacher: its {stack} {what} ({flag}) is "
                    f"{ours[stack][name]}, more than the teacher's {theirs[stack][name]}; a student initialised "
                    f"from its teacher keeps a subset of the teacher's units: give {flag} <= {theirs[stack][name]}"
                )
        head_dims = [w[stack]["embed_dim"] // w[stack]["heads"] for w in (ours, theirs)]
        if head_dims[0] > head_dims[1]:
            raise WidthError(
                f"cannot initialise the student from the teacher: its {stack} heads are {head_dims[0]} wide "
                f"(--{stack}-embed-dim / --{stack}-attention-heads), the teacher's {head_dims[1]}: keep the width "
                f"per head at most the teacher's, e.g. --{stack}-attention-heads "
                f"{-(-ours[stack]['embed_dim'] // head_dims[1])}"
            )
    for cfg, who in ((student_cfg, "student"), (teacher_cfg, "teacher")):
        for name in ("decoder_input_dim", "decoder_output_dim"):
            if getattr(cfg, name, cfg.decoder_embed_dim) != cfg.decoder_embed_dim:
                raise WidthError(
                    f"cannot initialise a narrower student: the {who}'s --{name.replace('_', '-')} differs from its "
                    "--decoder-embed-dim (extra projections are not narrowed); give both the same value"
                )
    if getattr(student_cfg, "share_all_embeddings", False) and ours["encoder"]["embed_dim"] != ours["decoder"]["embed_dim"]:
        raise WidthError("--share-all-embeddings needs --encoder-embed-dim equal to --decoder-embed-dim")


@dataclass
class Importance:
    """Activation importance of a teacher's units (teacher layer numbering).

    channels: {stack: [C]}; neurons: {"{stack}.layers.{i}": [F]};
    heads: {"{stack}.layers.{i}.{attn}": [H]}; qk_dims and v_dims: the same keys -> [H, head_dim]."""

    channels: dict = field(default_factory=dict)
    neurons: dict = field(default_factory=dict)
    heads: dict = field(default_factory=dict)
    qk_dims: dict = field(default_factory=dict)
    v_dims: dict = field(default_factory=dict)


class _Mean:
    """Running sums of per-unit values and of the number of tokens they were summed over."""

    def __init__(self):
        self.sums, self.counts = {}, {}

    def add(self, key: str, total: torch.Tensor, count: int) -> None:
        self.sums[key] = self.sums.get(key, 0) + total.double()
        self.counts[key] = self.counts.get(key, 0) + count

    def means(self) -> Dict[str, torch.Tensor]:
        return {key: (total / self.counts[key]).float().cpu() for key, total in self.sums.items()}


def head_outputs(attn: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attn_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Recomputes a fairseq MultiheadAttention's per-head queries, keys, attention probabilities and outputs
    for one unpadded sentence (time-first inputs, batch 1): q [H, T, d] (scaled), k [H, S, d],
    p [H, T, S], out [H, T, d]. Needed because fairseq's fast path runs the whole attention in one call."""
    heads, head_dim = attn.num_heads, attn.head_dim

    def split(x):  # [T, 1, H*d] -> [H, T, d]
        return x.squeeze(1).view(x.size(0), heads, head_dim).transpose(0, 1)

    q = split(attn.q_proj(query) * attn.scaling)
    k, v = split(attn.k_proj(key)), split(attn.v_proj(value))
    logits = torch.bmm(q, k.transpose(1, 2))
    if attn_mask is not None:
        logits = logits + attn_mask.to(logits.dtype).unsqueeze(0)
    p = torch.softmax(logits.float(), dim=-1).to(q.dtype)
    return q, k, p, torch.bmm(p, v)


@torch.no_grad()
def importance(teacher: torch.nn.Module, samples: Iterable[Dict[str, torch.Tensor]],
               device: Optional[torch.device] = None) -> Importance:  # fmt: skip
    """Minitron's activation importance of *teacher*'s units over *samples*, an iterable of one-sentence
    ``net_input`` dicts (``src_tokens``, ``src_lengths``, ``prev_output_tokens``; batch 1, so no padding),
    computed on DEVICE (default: where the teacher is; it is moved back afterwards)."""
    home = next(teacher.parameters()).device
    device = torch.device(device) if device is not None else home
    mean = _Mean()
    hooks = _register_hooks(teacher, mean)
    was_training = teacher.training
    teacher.eval().to(device)
    try:
        for net_input in samples:
            teacher(**{k: v.to(device) for k, v in net_input.items()})
    finally:
        for hook in hooks:
            hook.remove()
        teacher.train(was_training).to(home)

    result, scores = Importance(), mean.means()
    if not scores:
        raise WidthError("the calibration sample is empty: no sentence to compute the teacher's activations on")
    for key, value in scores.items():
        kind = key[0]
        if kind == "ln":
            stack = key[1]
            result.channels[stack] = result.channels.get(stack, 0) + value
        else:
            getattr(result, kind)[key[1]] = value
    return result


def _register_hooks(teacher, mean):
    """Forward hooks that add every layer norm's, FFN's and attention block's activations to *mean*."""

    def on_layer_norm(name, stack):
        def hook(module, inputs, output):
            x = output.reshape(-1, output.size(-1))
            mean.add(("ln", stack, name), x.abs().sum(0), x.size(0))

        return hook

    def on_fc1(layer_key, activation_fn):
        def hook(module, inputs, output):
            x = activation_fn(output.reshape(-1, output.size(-1)).float())
            mean.add(("neurons", layer_key), x.abs().sum(0), x.size(0))

        return hook

    def on_attention(attn_key):
        def hook(module, args, kwargs):
            mask = kwargs.get("key_padding_mask")
            if mask is not None and mask.any():
                raise ValueError("importance is computed on unpadded one-sentence batches")
            key = kwargs["key"] if kwargs.get("key") is not None else kwargs["query"]
            value = kwargs["value"] if kwargs.get("value") is not None else key
            q, k, p, out = head_outputs(module, kwargs["query"], key, value, kwargs.get("attn_mask"))
            tokens = q.size(1)
            mean.add(("heads", attn_key), out.norm(dim=-1).sum(1), tokens)
            mean.add(("v_dims", attn_key), out.abs().sum(1), tokens)
            mean.add(("qk_dims", attn_key), torch.einsum("hts,hti,hsi->hi", p, q.abs(), k.abs()), tokens)

        return hook

    hooks = []
    for name, module in teacher.named_modules():
        stack = name.split(".")[0]
        # torch's LayerNorm, or apex's FusedLayerNorm, which fairseq takes where it is installed
        if "LayerNorm" in type(module).__name__ and stack in ("encoder", "decoder"):
            hooks.append(module.register_forward_hook(on_layer_norm(name, stack)))
        match = re.match(r"^((?:encoder|decoder)\.layers\.\d+)\.(fc1|self_attn|encoder_attn)$", name)
        if match and match[2] == "fc1":
            layer = teacher.get_submodule(match[1])
            hooks.append(module.register_forward_hook(on_fc1(match[1], layer.activation_fn)))
        elif match:
            hooks.append(module.register_forward_pre_hook(on_attention(name), with_kwargs=True))
    return hooks


def keep(scores, k):
    """The indices (ascending) of the k highest *scores*; ties go to the lower index."""
    if k == scores.numel():
        return torch.arange(k)
    # a stable sort keeps equal scores in index order
    order = torch.sort(-scores.detach().float().flatten(), stable=True).indices
    return torch.sort(order[:k]).values


@dataclass
class WidthSelection:
    """What a student keeps of its teacher (teacher numbering; all indices ascending).

    channels: {stack: LongTensor}; neurons: {layer key: LongTensor};
    heads: {attention key: LongTensor [H_s]}; qk_dims, v_dims: {attention key: LongTensor [H_s, d_s]}."""

    channels: dict
    neurons: dict
    heads: dict
    qk_dims: dict
    v_dims: dict
    head_dims: dict  # {stack: (teacher's head_dim, student's head_dim)}


def select_units(student_cfg: Any, teacher_cfg: Any, teacher: torch.nn.Module, how: str = "importance",
                 scores: Optional[Importance] = None) -> "WidthSelection":  # fmt: skip
    """The teacher units a student of *student_cfg*'s widths keeps: the top units of *scores*
    (an :class:`Importance`) or, with ``how="uniform"``, evenly spread ones."""
    check_widths(student_cfg, teacher_cfg)
    if how not in SELECTIONS:
        raise WidthError(f"--init-width-selection {how!r}: choose one of {', '.join(SELECTIONS)}")
    if how == "importance" and scores is None:
        raise ValueError("select_units(how='importance') needs the teacher's importance scores")
    ours, theirs = widths(student_cfg), widths(teacher_cfg)

    def pick(score, n, k):
        if how == "importance":
            return keep(score, k)
        # here, not at the top: student_init imports this module
        from .student_init import spread_layers

        return torch.tensor(spread_layers(n, k))  # the uniform selection: the layers' even spread

    shared = getattr(teacher_cfg, "share_all_embeddings", False)

    def stream_scores(stack):
        if scores is None:
            return None
        # one choice for a shared stream, by the scores of both stacks
        return scores.channels["encoder"] + scores.channels["decoder"] if shared else scores.channels[stack]

    channels = {
        stack: pick(stream_scores(stack), theirs[stack]["embed_dim"], ours[stack]["embed_dim"])
        for stack in ("encoder", "decoder")
    }
    selection = WidthSelection(channels, {}, {}, {}, {}, {})
    for stack in ("encoder", "decoder"):
        t_heads, s_heads = theirs[stack]["heads"], ours[stack]["heads"]
        t_dim, s_dim = theirs[stack]["embed_dim"] // t_heads, ours[stack]["embed_dim"] // s_heads
        selection.head_dims[stack] = (t_dim, s_dim)
        for i, layer in enumerate(getattr(teacher, stack).layers):
            layer_key = f"{stack}.layers.{i}"
            f_t, f_s = theirs[stack]["ffn_dim"], ours[stack]["ffn_dim"]
            selection.neurons[layer_key] = pick(scores.neurons[layer_key] if scores else None, f_t, f_s)
            for attn in ("self_attn", "encoder_attn"):
                if not hasattr(layer, attn):
                    continue
                key = f"{layer_key}.{attn}"
                heads = pick(scores.heads[key] if scores else None, t_heads, s_heads)
                selection.heads[key] = heads
                for kind in ("qk_dims", "v_dims"):
                    dims = [pick(getattr(scores, kind)[key][h] if scores else None, t_dim, s_dim) for h in heads.tolist()]
                    getattr(selection, kind)[key] = torch.stack(dims)
    return selection


def inner(heads: torch.Tensor, dims: torch.Tensor, head_dim: int) -> torch.Tensor:
    """The rows of q/k/v_proj (columns of out_proj) of the kept heads' kept dimensions."""
    return (heads.unsqueeze(1) * head_dim + dims).flatten()


def axes(student_key: str, teacher_key: str, selection: "WidthSelection") -> Tuple[List[Optional[torch.Tensor]], float]:
    """The index along each axis of teacher tensor *teacher_key* that student tensor *student_key* keeps
    (None: the whole axis), and the factor its values are multiplied by."""
    match = LAYER_KEY.match(teacher_key)
    stack = student_key.split(".")[0]
    stream = selection.channels[stack]
    if not match:
        if re.match(r"^(encoder|decoder)\.(embed_tokens|embed_positions|output_projection)\.weight$", teacher_key):
            return (None, stream), 1.0
        if re.match(r"^(encoder|decoder)\.(layer_norm|layernorm_embedding)\.(weight|bias)$", teacher_key):
            return (stream,), 1.0
        return None, 1.0
    layer_key, rest = f"{match[1]}.layers.{match[2]}", match[3]
    neurons = selection.neurons[layer_key]
    if rest in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
        return {
            "fc1.weight": (neurons, stream),
            "fc1.bias": (neurons,),
            "fc2.weight": (stream, neurons),
            "fc2.bias": (stream,),
        }[rest], 1.0
    if re.match(r"^(self_attn|encoder_attn|final)_layer_norm\.(weight|bias)$", rest):
        return (stream,), 1.0
    attn_match = re.match(r"^(self_attn|encoder_attn)\.(q|k|v|out)_proj\.(weight|bias)$", rest)
    if not attn_match:
        return None, 1.0
    attn, proj, kind = attn_match.groups()
    key = f"{layer_key}.{attn}"
    t_dim, s_dim = selection.head_dims[stack]
    rows = inner(selection.heads[key], (selection.v_dims if proj in ("v", "out") else selection.qk_dims)[key], t_dim)
    # the cross-attention's keys and values read the encoder's stream
    source = selection.channels["encoder"] if attn == "encoder_attn" and proj in ("k", "v") else stream
    if proj == "out":
        return ((stream, rows) if kind == "weight" else (stream,)), 1.0
    factor = math.sqrt(s_dim / t_dim) if proj == "q" else 1.0
    return ((rows, source) if kind == "weight" else (rows,)), factor


def take(tensor: torch.Tensor, index: List[Optional[torch.Tensor]]) -> torch.Tensor:
    """*tensor* restricted to the given index on each axis (None: all of it)."""
    for dim, ids in enumerate(index):
        if ids is not None:
            tensor = tensor.index_select(dim, ids.to(tensor.device))
    return tensor


def sliced_tensors(student_state: Dict[str, torch.Tensor], teacher_state: Dict[str, torch.Tensor],
                   mapping: Dict[str, str], selection: "WidthSelection") -> Dict[str, torch.Tensor]:  # fmt: skip
    """{student tensor name: the teacher tensor's slice (times its factor)}, each checked for its shape
    before anything is copied."""
    result = {}
    for key, source in mapping.items():
        if source not in teacher_state:
            raise WidthError(f"the teacher has no tensor {source!r} for the student's {key!r}")
        index, factor = axes(key, source, selection)
        value = teacher_state[source] if index is None else take(teacher_state[source], index) * factor
        if value.shape != student_state[key].shape:
            raise WidthError(
                f"the student's {key!r} has shape {tuple(student_state[key].shape)} but the teacher's {source!r} "
                f"narrows to {tuple(value.shape)}: this tensor has no rule for a narrower student"
            )
        result[key] = value
    return result
