"""Sizes and budgets of the demo. Every model is a transformer with shared embeddings and one joint
sentencepiece vocabulary; all students of a preset have the same shape and the same number of updates.

* ``default``: the whole story in under 20 minutes on 2 CPU cores. The teacher is shallower (4 encoder and
  2 decoder layers, which learn several times faster per second than 6+6 here) and gets about 5 epochs;
  the students get about one epoch, enough for the student that starts from the teacher's layers, not for
  the ones that start from scratch.
* ``full``: a 6+6 teacher of 7,600 updates (about 46 epochs, where its valid NLL has nearly stopped
  falling) and students of 4,200 updates (about 25 epochs; at 2,800 their valid NLL still fell by 0.05 per
  400 updates) on the whole corpus: about 6.5 h on 2 CPU cores by the stages' measured times (the teacher
  2 h; not run from scratch at this budget). Every stage resumes where it stopped; a run made with a smaller
  student budget continues its students. The README's table comes from it.
* ``smoke``: tiny models and a handful of updates, for the tests.

Everything runs on the CPU (training, generation and the timings), as on the machines the demo was
sized for.

The student shape is one the DistilBERT-style initialisation allows: the teacher's width, 2 encoder layers
(1 of every 2 or 3) and 1 decoder layer (1 of every 2 or 6). Decoding cost is dominated by the decoder.
"""

TEACHER = dict(encoder_layers=6, decoder_layers=6, embed_dim=128, ffn_dim=512, heads=4)
FAST_TEACHER = dict(TEACHER, encoder_layers=4, decoder_layers=2)
STUDENT = dict(encoder_layers=2, decoder_layers=1, embed_dim=128, ffn_dim=512, heads=4)

# what default and full share
REAL_DATA = dict(
    vocab_size=4000,
    student=STUDENT,
    max_tokens=4096,
    lr=0.002,
    dropout=0.1,
    beam=4,
    eval_batch_size=64,
    # output length bound of every translation (fairseq's: max_len_a * source length + max_len_b), as in
    # the pseudo-labelling: an undertrained model's runaway outputs then cost neither minutes nor BLEU
    max_len_a=1.5,
    max_len_b=10,
    # the NeMo guide, "Hinton-style ... EXAMPLE": "Label-smoothing is not recommended when training the
    # teacher or student when performing distillation [Muller et al. 2019]"
    teacher_label_smoothing=0.0,
)

PRESETS = {
    "default": dict(
        REAL_DATA,
        teacher=FAST_TEACHER,
        warmup_updates=150,
        teacher_max_update=800,
        student_warmup_updates=50,
        student_max_update=100,
        # each system's speed is the one of its evaluation: 20 minutes leave no room for more
        timing_rounds=0,
    ),
    "full": dict(
        REAL_DATA,
        teacher=TEACHER,
        warmup_updates=400,
        teacher_max_update=7600,
        student_warmup_updates=400,
        student_max_update=4200,
        # each system's speed is the median of 5 translations of the test split, taken by turns
        timing_rounds=5,
    ),
    "smoke": dict(
        vocab_size=200,
        teacher=dict(encoder_layers=2, decoder_layers=2, embed_dim=32, ffn_dim=64, heads=2),
        student=dict(encoder_layers=1, decoder_layers=1, embed_dim=32, ffn_dim=64, heads=2),
        max_tokens=2048,
        lr=0.005,
        warmup_updates=10,
        dropout=0.0,
        teacher_max_update=200,
        student_warmup_updates=10,
        student_max_update=10,
        beam=2,
        eval_batch_size=64,
        max_len_a=0,
        max_len_b=20,
        teacher_label_smoothing=0.0,
        timing_rounds=1,
    ),
}

# The methods' settings, the same in every preset (the recipes' and the NeMo guide's values; nothing here
# was tuned on the test split).
WORD_KD = ["--nll-weight", "0.5", "--kd-weight", "0.5", "--kd-temperature", "2"]
MIXTURE_PROBS = "0.66,0.34"  # ground truth, teacher translations
COSINE = ["--cosine-weight", "1", "--cosine-encoder"]
