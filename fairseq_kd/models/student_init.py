"""Model surgery: a student transformer initialised from a deeper teacher (DistilBERT-style).

The student takes some of the teacher's layers, per stack (encoder and decoder separately), plus
every tensor outside the layers: token and positional embeddings, embedding and final layer
norms, the output projection. Sanh et al., 2019 (https://arxiv.org/abs/1910.01108) build DistilBERT
this way; the NeMo NMT distillation guide applies it to translation (a 24x6 teacher -> a 3x3
student). A student narrower than its teacher keeps a sub-network of the chosen layers
(:mod:`fairseq_kd.models.width_pruning`).

The functions here are pure: they map tensor names and validate shapes, and
:func:`init_student_from_teacher` copies the tensors in place.
"""

import logging
from typing import Any, Dict, Iterable, List, Optional

import torch

from ..io import UserError
from .width_pruning import LAYER_KEY, WidthSelection, sliced_tensors

logger = logging.getLogger(__name__)

# Widths a student may narrow (fairseq_kd.models.width_pruning): without a width selection they must be
# equal. Heads do not change any tensor's shape, so only a check of the configuration catches them.
WIDTH_SETTINGS = [
    ("encoder_embed_dim", "encoder width"),
    ("encoder_ffn_embed_dim", "encoder FFN size"),
    ("encoder_attention_heads", "encoder attention heads"),
    ("decoder_embed_dim", "decoder width"),
    ("decoder_ffn_embed_dim", "decoder FFN size"),
    ("decoder_attention_heads", "decoder attention heads"),
    ("decoder_input_dim", "decoder input width"),
    ("decoder_output_dim", "decoder output width"),
]

# Settings that must be equal for the teacher's tensors to mean the same thing in the student, at any width:
# layer-norm placement and activations do not change any tensor's shape either.
LAYOUT_SETTINGS = [
    ("encoder_normalize_before", "encoder layer-norm placement"),
    ("decoder_normalize_before", "decoder layer-norm placement"),
    ("no_decoder_final_norm", "decoder final layer norm"),
    ("layernorm_embedding", "embedding layer norm"),
    ("no_scale_embedding", "embedding scaling"),
    ("no_token_positional_embeddings", "positional embeddings"),
    ("encoder_learned_pos", "encoder learned positions"),
    ("decoder_learned_pos", "decoder learned positions"),
    ("share_all_embeddings", "shared encoder/decoder/output embeddings"),
    ("share_decoder_input_output_embed", "shared decoder input/output embeddings"),
    ("activation_fn", "activation function"),
    ("cross_self_attention", "cross+self attention"),
    ("adaptive_input", "adaptive input"),
]


def layout_flags(model_cfg: Any) -> List[str]:
    """fairseq-train flags that give a model the layer layout (LAYOUT_SETTINGS) of *model_cfg*, a checkpoint's
    model config (an argparse Namespace or a DictConfig): the settings that are not fairseq's defaults, and
    the positions' range where they are learned. A student given them can take the teacher's tensors."""

    def value(name):
        return model_cfg.get(name) if hasattr(model_cfg, "get") else getattr(model_cfg, name, None)

    flags = []
    for name, _ in LAYOUT_SETTINGS:
        if name == "activation_fn":
            if value(name) not in (None, "relu"):
                flags += ["--activation-fn", value(name)]
        elif name == "share_decoder_input_output_embed" and value("share_all_embeddings"):
            continue  # implied by --share-all-embeddings (fairseq sets it when it builds the model)
        elif value(name):
            flags.append("--" + name.replace("_", "-"))
    for side, stack in (("source", "encoder"), ("target", "decoder")):
        if value(f"{stack}_learned_pos") and value(f"max_{side}_positions") is not None:
            flags += [f"--max-{side}-positions", str(value(f"max_{side}_positions"))]
    return flags


class StudentInitError(UserError):
    pass


def select_layers(num_teacher_layers: int, num_student_layers: int, stack: str = "encoder") -> List[int]:
    """The teacher layers (0-based) that a student of *num_student_layers* layers takes by
    default: 1 of every n = L_t / L_s, the last layer of each block of n.

    The last of each block, because then the student's top layer is the teacher's top layer: the
    final layer norm and output projection copied from the teacher keep reading the
    representation they were trained on (e.g. 24 -> 3: layers 7, 15, 23; 6 -> 3: 1, 3, 5). This is
    also the even spread the hidden-state loss pairs layers with when no map is given.
    """
    if num_student_layers < 1:
        raise StudentInitError(f"the student's {stack} has {num_student_layers} layers: nothing to initialise")
    if num_student_layers > num_teacher_layers or num_teacher_layers % num_student_layers != 0:
        raise StudentInitError(
            f"cannot take 1 of every n {stack} layers: the teacher's {num_teacher_layers} {stack} layers are not "
            f"divisible by the student's {num_student_layers}. Choose a student depth that divides "
            f"{num_teacher_layers}, or give the layers explicitly with --init-{stack}-layers "
            f"(e.g. --init-{stack}-layers {','.join(str(i) for i in spread_layers(num_teacher_layers, num_student_layers))})"
        )
    return spread_layers(num_teacher_layers, num_student_layers)


def spread_layers(num_teacher_layers: int, num_student_layers: int) -> List[int]:
    """The teacher layer (0-based) of each student layer, spread evenly for any counts: student layer i takes
    the last teacher layer of the i-th of *num_student_layers* equal blocks, ceil((i + 1) * L_t / L_s) - 1, so
    the two stacks' final layers are always paired (3 of 6: 1, 3, 5; 1 of every n when L_s divides L_t).
    The default of the initialisation, and of the hidden-state loss's pairing when no map is given."""
    return [-(-(i + 1) * num_teacher_layers // num_student_layers) - 1 for i in range(num_student_layers)]


def parse_layer_map(spec: str, num_teacher_layers: int, num_student_layers: int, stack: str = "encoder") -> List[int]:
    """Parses ``--init-{stack}-layers`` ("i,j,..."): one 0-based teacher layer per student layer,
    in student order. Any teacher layers may be chosen, in any order, repeated or not."""
    flag = f"--init-{stack}-layers"
    try:
        layers = [int(x) for x in str(spec).split(",")]
    except ValueError:
        raise StudentInitError(f"{flag} {spec!r} is not a comma-separated list of 0-based layer numbers") from None
    if len(layers) != num_student_layers:
        raise StudentInitError(
            f"{flag} {spec!r} names {len(layers)} teacher layers, but the student's {stack} has "
            f"{num_student_layers} layers: give one teacher layer per student layer"
        )
    bad = [i for i in layers if not 0 <= i < num_teacher_layers]
    if bad:
        raise StudentInitError(
            f"{flag} {spec!r}: layer {bad[0]} does not exist; the teacher's {stack} has layers 0 to {num_teacher_layers - 1}"
        )
    return layers


def num_layers(model: torch.nn.Module, stack: str) -> int:
    return len(getattr(model, stack).layers)


def check_same_settings(student_cfg: Any, teacher_cfg: Any, widths: bool = True) -> None:
    """Raises StudentInitError naming the first setting (layer-norm placement, ..., and with *widths* the
    width, FFN size, heads) that differs."""
    for name, what in (WIDTH_SETTINGS if widths else []) + LAYOUT_SETTINGS:
        ours, theirs = getattr(student_cfg, name, None), getattr(teacher_cfg, name, None)
        if ours != theirs:
            raise StudentInitError(
                f"cannot initialise the student from the teacher: the {what} (--{name.replace('_', '-')}) is "
                f"{ours} for the student but {theirs} for the teacher. Initialisation copies the teacher's "
                f"tensors, so this setting must be the teacher's: give the student "
                f"--{name.replace('_', '-')} {theirs}, or train it without --init-from-teacher"
            )
    for side in ("source", "target"):
        learned = getattr(student_cfg, f"{'encoder' if side == 'source' else 'decoder'}_learned_pos", False)
        name = f"max_{side}_positions"
        ours, theirs = getattr(student_cfg, name, None), getattr(teacher_cfg, name, None)
        if learned and ours != theirs:
            raise StudentInitError(
                f"cannot initialise the student from the teacher: its learned positional embeddings cover "
                f"--{name.replace('_', '-')} {ours} positions, the teacher's {theirs}: give the student "
                f"--{name.replace('_', '-')} {theirs}"
            )


def teacher_key_map(student_keys: Iterable[str], layer_maps: Dict[str, List[int]]) -> Dict[str, str]:
    """{student tensor name: teacher tensor name}: ``{stack}.layers.{i}.*`` comes from
    ``{stack}.layers.{layer_maps[stack][i]}.*``, every other tensor from the same name."""
    mapping = {}
    for key in student_keys:
        match = LAYER_KEY.match(key)
        if match:
            stack, i, rest = match[1], int(match[2]), match[3]
            mapping[key] = f"{stack}.layers.{layer_maps[stack][i]}.{rest}"
        else:
            mapping[key] = key
    return mapping


def init_student_from_teacher(student: torch.nn.Module, teacher: torch.nn.Module, encoder_layers: List[int],
                              decoder_layers: List[int], selection: Optional[WidthSelection] = None) -> None:  # fmt: skip
    """Copies *teacher*'s tensors into *student* in place: student layer i of each stack from teacher
    layer ``{encoder,decoder}_layers[i]``, everything else (embeddings, positions, layer norms,
    output projection) from the tensor of the same name; with a *selection*
    (:class:`~fairseq_kd.models.width_pruning.WidthSelection`, for a narrower student) the selected slice of
    each. Every tensor of the student's state dict, buffers included, is written exactly once, and every
    teacher tensor outside the layers is used; anything else is an error, raised before anything is copied.

    Returns:
        dict: {student tensor name: teacher tensor name} of what was copied
    """
    check_same_settings(student.cfg, teacher.cfg, widths=selection is None)
    layer_maps = {"encoder": list(encoder_layers), "decoder": list(decoder_layers)}
    for stack, layers in layer_maps.items():
        if len(layers) != num_layers(student, stack):
            raise StudentInitError(f"{len(layers)} {stack} layers given for a student with {num_layers(student, stack)}")
    student_state, teacher_state = student.state_dict(), teacher.state_dict()
    mapping = teacher_key_map(student_state.keys(), layer_maps)
    if selection is None:
        values = {key: teacher_state.get(source) for key, source in mapping.items()}
        for key, source in mapping.items():
            if values[key] is None:
                raise StudentInitError(f"the teacher has no tensor {source!r} for the student's {key!r}")
            if student_state[key].shape != values[key].shape:
                raise StudentInitError(
                    f"the student's {key!r} has shape {tuple(student_state[key].shape)} but the teacher's {source!r} "
                    f"has {tuple(values[key].shape)}"
                )
    else:
        values = sliced_tensors(student_state, teacher_state, mapping, selection)
    unused = [k for k in teacher_state if not LAYER_KEY.match(k) and k not in mapping.values()]
    if unused:
        raise StudentInitError(f"the teacher's {unused[0]!r} has no counterpart in the student: the architectures differ")

    with torch.no_grad():
        for key, value in values.items():
            student_state[key].copy_(value)
    shape = "" if selection is None else " (a narrower sub-network)"
    logger.info(
        f"student initialised from the teacher{shape}: {len(mapping)} tensors; encoder layers {layer_maps['encoder']}, "
        f"decoder layers {layer_maps['decoder']} of the teacher's {num_layers(teacher, 'encoder')}x"
        f"{num_layers(teacher, 'decoder')}"
    )
    return mapping
