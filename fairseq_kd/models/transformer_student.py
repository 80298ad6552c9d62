import logging

from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerModel
from fairseq.models.transformer import transformer_legacy as stock

from .student_init import StudentInitError, init_student_from_teacher, num_layers, parse_layer_map, select_layers

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
    ``--init-decoder-layers`` choose the layers explicitly.

    The model itself is a plain :class:`~fairseq.models.transformer.TransformerModel`: it has the
    same modules, tensors and forward, so ``fairseq-kd-export`` writes it as an ordinary
    ``transformer``. The initialisation is done by the ``translation_kd`` task, which holds the
    teacher, when training starts; reloading a checkpoint (resuming, generating) never repeats it.

    .. note::

        Widths, FFN sizes and head counts must equal the teacher's; only depths differ.
    """

    # what fairseq-kd-export writes this model as: it adds no module to the stock transformer
    stock_arch = "transformer"
    plugin_args = ("init_from_teacher", "init_encoder_layers", "init_decoder_layers")

    @staticmethod
    def add_args(parser):
        """Add model-specific arguments to the parser."""
        TransformerModel.add_args(parser)
        # fmt: off
        parser.add_argument('--init-from-teacher', action='store_true',
                            help='initialise the student from the teacher of --teacher-path (task translation_kd): '
                                 '1 of every n teacher layers per stack, plus embeddings, layer norms and output '
                                 'projection; widths, FFN sizes and heads must equal the teacher\'s')
        parser.add_argument('--init-encoder-layers', type=str, metavar='I,J,...',
                            help='with --init-from-teacher: the 0-based teacher encoder layer copied into each student '
                                 'encoder layer, in order (default: the last of every n = L_teacher / L_student)')
        parser.add_argument('--init-decoder-layers', type=str, metavar='I,J,...',
                            help='the same for the decoder')
        # fmt: on

    @classmethod
    def build_model(cls, args, task):
        """Build a new model instance."""
        base_architecture(args)
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

    def teacher_layers(self, teacher):
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

    def init_from_teacher(self, teacher):
        """Overwrites this model's weights with the chosen teacher layers and the teacher's other
        tensors (see :func:`~fairseq_kd.models.student_init.init_student_from_teacher`)."""
        layers = self.teacher_layers(teacher)
        return init_student_from_teacher(self, teacher, layers["encoder"], layers["decoder"])


def _init_defaults(args):
    args.init_from_teacher = getattr(args, "init_from_teacher", False)
    args.init_encoder_layers = getattr(args, "init_encoder_layers", None)
    args.init_decoder_layers = getattr(args, "init_decoder_layers", None)


# The student architectures are the stock ones: the same defaults, under names of this model.


@register_model_architecture("transformer_student", "transformer_student")
def base_architecture(args):
    _init_defaults(args)
    stock.base_architecture(args)


@register_model_architecture("transformer_student", "transformer_student_tiny")
def transformer_student_tiny(args):
    _init_defaults(args)
    stock.tiny_architecture(args)


@register_model_architecture("transformer_student", "transformer_student_iwslt_de_en")
def transformer_student_iwslt_de_en(args):
    _init_defaults(args)
    stock.transformer_iwslt_de_en(args)


@register_model_architecture("transformer_student", "transformer_student_wmt_en_de_big")
def transformer_student_wmt_en_de_big(args):
    _init_defaults(args)
    stock.transformer_wmt_en_de_big(args)
