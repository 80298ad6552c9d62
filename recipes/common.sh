# Settings shared by the recipes. Every value can be overridden from the environment; the defaults are
# the README's example data, made by `make toy-demo` (runs/toy: a letter-cipher corpus and its teacher).
#
#   DATA     data-bin of the labelled corpus (references), binarized with the teacher's dictionaries
#   RAW      its raw text: RAW/train.$SRC, RAW/train.$TGT (used by the low-data recipe)
#   TEACHER  the teacher checkpoint
#   OUT      where a recipe writes its pseudo-labels and student
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python}
BIN=$(dirname "$(command -v "$PY")")
DATA=${DATA:-runs/toy/data-bin}
RAW=${RAW:-runs/toy/raw}
TEACHER=${TEACHER:-runs/toy/teacher/checkpoint_best.pt}
SRC=${SRC:-in}
TGT=${TGT:-out}
OUT=${OUT:-runs/recipes}
MAX_UPDATE=${MAX_UPDATE:-300}
CPU=${CPU---cpu}
# the student: the same for every recipe, so that their results compare
STUDENT_ARCH=${STUDENT_ARCH:---arch transformer --encoder-layers 1 --decoder-layers 1 --encoder-embed-dim 32
  --decoder-embed-dim 32 --encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64 --encoder-attention-heads 2
  --decoder-attention-heads 2}
# shellcheck disable=SC2206
TRAIN=(--user-dir fairseq_kd --task translation_kd --source-lang "$SRC" --target-lang "$TGT"
       $STUDENT_ARCH --optimizer adam --lr 0.005 --lr-scheduler inverse_sqrt --warmup-updates 50
       --max-tokens 4000 --dropout 0.1 --max-update "$MAX_UPDATE" --no-epoch-checkpoints
       --log-format simple --log-interval 50 --seed 1 $CPU)

# pseudolabel NAME ARGS...: the teacher's beam-4 translations, as $OUT/NAME/data-bin (resumes when rerun)
pseudolabel() {
  local name=$1
  shift
  "$BIN/fairseq-kd-pseudolabel" --teacher "$TEACHER" --data "$DATA" --source-lang "$SRC" --target-lang "$TGT" \
    --output "$OUT/$name" --beam 4 $CPU "$@"
}
