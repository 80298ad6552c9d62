#!/usr/bin/env bash
# method: low_data
# The low-data regime (the NeMo guide's experiment with little labelled data): 5% of the labelled pairs,
# plus the teacher's translations of monolingual source text (here: the other 95% of the sources, their
# references thrown away), sampled 1:2, plus word-level KD.
# - every 20th labelled pair is kept (deterministic), binarized with the teacher's dictionaries;
# - fairseq-kd-pseudolabel --input translates raw monolingual text (add --spm-model/--bpe-codes when the
#   data was encoded with them);
# - --train-mixture-probs 0.333333,0.666667: labelled 1 : teacher-labelled 2;
# - hybrid distillation at temperature 1 (NLL 1 + word-level KD 1), label smoothing 0.
# The settings are fairseq_kd/methods.py's (python -m fairseq_kd.methods), where each is traced to the guide.
source "$(dirname "$0")/common.sh"
mkdir -p "$OUT/low_data_raw"
awk 'NR % 20 == 1' "$RAW/train.$SRC" > "$OUT/low_data_raw/train.$SRC"
awk 'NR % 20 == 1' "$RAW/train.$TGT" > "$OUT/low_data_raw/train.$TGT"
awk 'NR % 20 != 1' "$RAW/train.$SRC" > "$OUT/low_data_raw/mono.$SRC"
if [ ! -f "$OUT/labelled_5pct/train.$SRC-$TGT.$SRC.idx" ]; then
  "$BIN/fairseq-preprocess" --source-lang "$SRC" --target-lang "$TGT" --trainpref "$OUT/low_data_raw/train" \
    --srcdict "$DATA/dict.$SRC.txt" --tgtdict "$DATA/dict.$TGT.txt" --destdir "$OUT/labelled_5pct" --workers 1 \
    > "$OUT/low_data_raw/preprocess.log" 2>&1
fi
pseudolabel teacher_mono --input "$OUT/low_data_raw/mono.$SRC"
"$BIN/fairseq-train" "$DATA" "${TRAIN[@]}" --save-dir "$OUT/low_data" \
  --train-mixture "$OUT/labelled_5pct,$OUT/teacher_mono/data-bin" --train-mixture-probs 0.333333,0.666667 \
  --teacher-path "$TEACHER" \
  --criterion label_smoothed_cross_entropy_with_kd --nll-weight 1 --kd-weight 1 --kd-temperature 1 \
  --label-smoothing 0
