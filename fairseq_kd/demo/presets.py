"""Sizes and budgets of the demo. Every model is a transformer with shared embeddings and one joint
sentencepiece vocabulary; all students of a preset have the same shape and the same number of updates.
The methods' settings are :mod:`fairseq_kd.methods`'s, the same in every preset.

* ``default``: the main job, in 11 minutes on 2 CPU cores (benchmarks/results/README.md): a pre-norm
  teacher (4 encoder and 2 decoder layers, which learn several times faster per second than 6+6 here) and
  students with small batches, a high learning rate and no dropout (what learns most in minutes,
  benchmarks/results/default_sizing.md), the recommended recipe (init_kd: the
  teacher's layers, then NLL + word-level KD) against the baseline at the same budget, and the recommended
  student in CTranslate2 int8. Systems below the chrF floor are not shown in its table.
* ``full``: every method of the guide on the whole corpus, the baseline and the best student with 3 seeds:
  64 minutes on 2 CPU cores (benchmarks/results/demo_full_guide; every stage resumes where it stopped).
  Its teacher is the default's trained longer (recipe T2 of benchmarks/results/default_sizing.md, 2,000
  updates), its students have the default's recipe with 800 updates. The README's table comes from it.
* ``big``: a transformer-base-deep teacher (6+6 pre-norm layers, 256 wide, FFN 1,024, 12.1M parameters) on
  the same data as default and full, trained until its valid NLL has not improved for 5 validations (at
  most 6,000 updates): hours on 2 CPU cores, sized from ``benchmarks/teacher_speed.py``
  (benchmarks/results/big_teacher/). The preset's own student is the deep-encoder, shallow-decoder 6+1.
* ``smoke``: tiny models and a handful of updates, for the tests.

Everything runs on the CPU (training, generation and the timings), as on the machines the demo was
sized for. The student shape is one the DistilBERT-style initialisation allows: the teacher's width,
2 encoder layers (1 of every 2 or 3) and 1 decoder layer (1 of every 2 or 6).
"""

from ..methods import BEYOND_GUIDE, METHODS, TEACHER_LABEL_SMOOTHING
from ..pipeline import DEFAULT_LAYOUT, Shape, Training

TEACHER = Shape(encoder_layers=4, decoder_layers=2, embed_dim=128, ffn_dim=512, heads=4)
BIG_TEACHER = Shape(encoder_layers=6, decoder_layers=6, embed_dim=256, ffn_dim=1024, heads=4)
STUDENT = Shape(encoder_layers=2, decoder_layers=1, embed_dim=128, ffn_dim=512, heads=4)
PRE_NORM_LAYOUT = ("--share-all-embeddings", "--encoder-normalize-before", "--decoder-normalize-before")

# every method of the guide, the baseline first (the ablation's init_nll, init_kd and its variants are not among them)
GUIDE_METHODS = [name for name in METHODS if name not in BEYOND_GUIDE]

# what default and full share
REAL_DATA = dict(
    vocab_size=4000,
    student=STUDENT,
    beam=4,
    eval_batch_size=64,
    # output length bound of every translation (fairseq's: max_len_a * source length + max_len_b), as in
    # the pseudo-labelling: an undertrained model's runaway outputs then cost neither minutes nor BLEU
    max_len_a=1.5,
    max_len_b=10,
    teacher_label_smoothing=TEACHER_LABEL_SMOOTHING,
    teacher=TEACHER,
    # pre-norm layers, which take a higher learning rate: on 2 cores they learn the most per second of the
    # recipes tried, and the students take the layout (benchmarks/results/default_sizing.md)
    teacher_layout=PRE_NORM_LAYOUT,
    # the teacher's translations by CTranslate2 float32: on the former 6+6 teacher the same labels as
    # fairseq-generate's at twice its speed (benchmarks/results/pseudolabel_engines_full.md)
    pseudolabel_engine="ctranslate2",
    # each system's speed is that of its scoring translation; benchmarks/fast_students.py times them by turns
    timing_rounds=0,
)


def recipe(max_update: int, warmup_updates: int) -> Training:
    """The optimisation that learns most in minutes on 2 cores (benchmarks/results/default_sizing.md)."""
    return Training(max_update=max_update, warmup_updates=warmup_updates, lr=0.003, max_tokens=2048, dropout=0.0)


PRESETS = {
    "default": dict(
        REAL_DATA,
        teacher_training=recipe(max_update=1100, warmup_updates=200),
        student_training=recipe(max_update=700, warmup_updates=100),
        # the recommended recipe: the best student on valid BLEU of the full preset and of the default's own run
        # with init_seq_kd beside it (benchmarks/results/README.md), at about init_seq_kd's cost (no pseudo-labels)
        methods=["baseline", "init_kd"],
        seeds=1,
        chrf_floor=30.0,
    ),
    "full": dict(
        REAL_DATA,
        teacher_training=recipe(max_update=2000, warmup_updates=200),
        student_training=recipe(max_update=800, warmup_updates=100),
        # and init_kd, the DistilBERT-style student without its cosine loss: what the guide's claim about that
        # loss is measured against (benchmarks/guide_claims.py)
        methods=GUIDE_METHODS + ["init_kd"],
        seeds=3,
        chrf_floor=None,
    ),
    "big": dict(
        REAL_DATA,
        teacher=BIG_TEACHER,
        # 2.6 s an update of 4,096 tokens on 2 cores (benchmarks/results/big_teacher/speed.md): the default's
        # high learning rate with a longer warm-up for 12 pre-norm layers; it stops once the valid NLL has not
        # improved for 5 validations (one every 200 updates and at each epoch's end, about 164 updates)
        teacher_training=Training(max_update=6000, warmup_updates=500, lr=0.002, max_tokens=4096, patience=5),
        student=Shape(encoder_layers=6, decoder_layers=1, embed_dim=256, ffn_dim=1024, heads=4),
        student_training=Training(max_update=3000, warmup_updates=400, lr=0.002, max_tokens=4096),
        methods=["baseline", "init_kd"],
        seeds=1,
        chrf_floor=None,
    ),
    "smoke": dict(
        vocab_size=200,
        teacher=Shape(encoder_layers=2, decoder_layers=2, embed_dim=32, ffn_dim=64, heads=2),
        student=Shape(encoder_layers=1, decoder_layers=1, embed_dim=32, ffn_dim=64, heads=2),
        teacher_layout=DEFAULT_LAYOUT,
        teacher_training=Training(max_update=200, warmup_updates=10, lr=0.005, max_tokens=2048, dropout=0.0),
        student_training=Training(max_update=10, warmup_updates=10, lr=0.005, max_tokens=2048, dropout=0.0),
        teacher_label_smoothing=TEACHER_LABEL_SMOOTHING,
        methods=["baseline", "seq_kd", "init_seq_kd"],
        seeds=2,
        beam=2,
        eval_batch_size=64,
        max_len_a=0,
        max_len_b=20,
        timing_rounds=0,  # each speed is its scoring run's; fairseq-kd-evaluate's test times rounds by turns
        chrf_floor=30.0,
    ),
}
