import argparse
import logging
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerModel
from fairseq.models.transformer import transformer_legacy as stock

from .student_init import StudentInitError, init_student_from_teacher, num_layers, parse_layer_map, select_layers
from .width_pruning import SELECTIONS, check_widths, importance, select_units, widths

logger = logging.getLogger(__name__)


@register_model("transformer_student")
class TransformerStudentModel(TransformerModel):
    """
    A fairseq transformer that can start from a deeper teacher's weights, DistilBERT-style
    (Sanh et al., 2019, https://arxiv.org/abs/1910.01108): with ``--init-from-teacher`` each
    student layer is a copy of one teacher layer, per stack, and every tensor outside the layers
    (embeddings, positions, layer norms, output projection) is the teacher's. By default the
    student takes 1 of every n = L_teacher / L_student layers, the last of each block (see
    :func:`~fairseq_kd.models.student_init.select_layers`); ``--init-encoder-layers`` and
    ``--init-decoder-layers`` choose the layers explicitly. A student narrower than the teacher (width, FFN
    size, heads, head width) keeps a sub-network of those layers, chosen by the teacher's activation
    importance on a calibration sample of the training data or uniformly (``--init-width-selection``; see
    :mod:`~fairseq_kd.models.width_pruning`).

    The model itself is a plain :class:`~fairseq.models.transformer.TransformerModel`: it has the
    same modules, tensors and forward, so ``fairseq-kd-export`` writes it as an ordinary
    ``transformer``. The initialisation is done by the ``translation_kd`` task, which holds the
    teacher, when training starts; reloading a checkpoint (resuming, generating) never repeats it.

    .. note::

        Widths, FFN sizes, head counts and head widths must be at most the teacher's; the layer layout
        (layer-norm placement, activation, shared embeddings, positions) must be the teacher's.
    """

    # what fairseq-kd-export writes this model as: it adds no module to the stock transformer
    stock_arch = "transformer"
    plugin_args = (
        "init_from_teacher",
        "init_encoder_layers",
        "init_decoder_layers",
        "init_width_selection",
        "init_calibration_sentences",
    )

    @staticmethod
    def add_args(parser: argparse.ArgumentParser) -> None:
        """Add model-specific arguments to the parser."""
        TransformerModel.add_args(parser)
        # fmt: off
        parser.add_argument('--init-from-teacher', action='store_true',
                            help='initialise the student from the teacher of --teacher-path (task translation_kd): '
                                 '1 of every n teacher layers per stack, plus embeddings, layer norms and output '
                                 'projection; a narrower student keeps a sub-network of the teacher')
        parser.add_argument('--init-encoder-layers', type=str, metavar='I,J,...',
                            help='with --init-from-teacher: the 0-based teacher encoder layer copied into each student '
                                 'encoder layer, in order (default: the last of every n = L_teacher / L_student)')
        parser.add_argument('--init-decoder-layers', type=str, metavar='I,J,...',
                            help='the same for the decoder')
        parser.add_argument('--init-width-selection', choices=SELECTIONS, default='importance',
                            help='with --init-from-teacher, for a student narrower than the teacher: keep the '
                                 'channels, heads, head dimensions and FFN neurons of highest activation importance '
                                 'on a calibration sample of the training data (Minitron), or evenly spread ones')
        parser.add_argument('--init-calibration-sentences', type=int, default=1024, metavar='N',
                            help='the training sentences (drawn with --seed) that importance is computed on')
        # fmt: on

    @classmethod
    def build_model(cls, args: argparse.Namespace, task: Any) -> "TransformerStudentModel":
        """Build a new model instance."""
        base_architecture(args)
        check_heads(args)
        if args.init_calibration_sentences < 1:
            raise StudentInitError(f"--init-calibration-sentences {args.init_calibration_sentences}: give at least 1")
        if not args.init_from_teacher:
            for flag in ("init_encoder_layers", "init_decoder_layers"):
                if getattr(args, flag, None):
                    raise StudentInitError(
                        f"--{flag.replace('_', '-')} is set without --init-from-teacher: add it, or drop the map"
                    )
        elif not hasattr(task, "teachers"):
            # also the case of a trained student loaded by fairseq-generate's default task: not an error
            logger.warning(
                f"--init-from-teacher is not applied by task {type(task).__name__}: only task translation_kd "
                "(with --teacher-path) initialises a student from its teacher"
            )
        return super().build_model(args, task)

    def teacher_layers(self, teacher: torch.nn.Module) -> Dict[str, List[int]]:
        """{"encoder": [...], "decoder": [...]}: the teacher layer behind each student layer, from the
        explicit maps or 1 of every n. Raises StudentInitError for maps that do not fit."""
        layers = {}
        for stack in ("encoder", "decoder"):
            spec = getattr(self.args, f"init_{stack}_layers", None)
            n_teacher, n_student = num_layers(teacher, stack), num_layers(self, stack)
            if spec:
                layers[stack] = parse_layer_map(spec, n_teacher, n_student, stack)
            else:
                layers[stack] = select_layers(n_teacher, n_student, stack)
        return layers

    def init_from_teacher(self, teacher: torch.nn.Module,
                          calibration: Optional[Callable[[], Iterable[Dict[str, torch.Tensor]]]] = None) -> None:  # fmt: skip
        """Overwrites this model's weights with the chosen teacher layers and the teacher's other
        tensors (see :func:`~fairseq_kd.models.student_init.init_student_from_teacher`); a narrower
        student keeps the units chosen by ``--init-width-selection``, by importance on the one-sentence
        ``net_input`` dicts that *calibration* () yields."""
        layers = self.teacher_layers(teacher)
        selection = None
        if widths(self.cfg) != widths(teacher.cfg):
            how = self.args.init_width_selection
            check_widths(self.cfg, teacher.cfg)  # before the calibration's work
            scores = None
            if how == "importance":
                if calibration is None:
                    raise ValueError("a narrower student chosen by importance needs a calibration sample")
                on_gpu = torch.cuda.is_available() and not getattr(self.args, "cpu", False)
                scores = importance(teacher, calibration(), "cuda" if on_gpu else "cpu")
            selection = select_units(self.cfg, teacher.cfg, teacher, how, scores)
        return init_student_from_teacher(self, teacher, layers["encoder"], layers["decoder"], selection)


def check_heads(args: argparse.Namespace) -> None:
    """fairseq asserts this deep in the attention module; say it before anything is built."""
    for stack in ("encoder", "decoder"):
        dim, heads = getattr(args, f"{stack}_embed_dim"), getattr(args, f"{stack}_attention_heads")
        if heads < 1 or dim % heads:
            raise StudentInitError(
                f"--{stack}-attention-heads {heads} does not divide --{stack}-embed-dim {dim}: choose a head count "
                f"that divides the width (e.g. {max(h for h in range(1, min(heads, dim) + 1) if dim % h == 0)})"
            )


def _init_defaults(args):
    args.init_from_teacher = getattr(args, "init_from_teacher", False)
    args.init_encoder_layers = getattr(args, "init_encoder_layers", None)
    args.init_decoder_layers = getattr(args, "init_decoder_layers", None)
    args.init_width_selection = getattr(args, "init_width_selection", "importance")
    args.init_calibration_sentences = getattr(args, "init_calibration_sentences", 1024)


# The student architectures are the stock ones: the same defaults, under names of this model.


@register_model_architecture("transformer_student", "transformer_student")
def base_architecture(args: argparse.Namespace) -> None:
    _init_defaults(args)
    stock.base_architecture(args)


@register_model_architecture("transformer_student", "transformer_student_tiny")
def transformer_student_tiny(args: argparse.Namespace) -> None:
    _init_defaults(args)
    stock.tiny_architecture(args)


@register_model_architecture("transformer_student", "transformer_student_iwslt_de_en")
def transformer_student_iwslt_de_en(args: argparse.Namespace) -> None:
    _init_defaults(args)
    stock.transformer_iwslt_de_en(args)


@register_model_architecture("transformer_student", "transformer_student_wmt_en_de_big")
def transformer_student_wmt_en_de_big(args: argparse.Namespace) -> None:
    _init_defaults(args)
    stock.transformer_wmt_en_de_big(args)
