#!/usr/bin/env bash
# method: seq_kd
# Sequence-level KD (Kim & Rush, 2016; the NeMo guide's "Sequence-level Distillation"):
# 1. "Use the teacher to run beam search over the transfer dataset (which can be the same as the
#    training dataset)": fairseq-kd-pseudolabel --subset train, beam 4 (the guide found beam search
#    better than greedy or top-k sampling).
# 2. "Train the student with NLL on this teacher-generated dataset": the pseudo-labels are the whole
#    training set (a mixture of one), plain NLL without label smoothing (the guide's
#    model.label_smoothing=0.0); validation stays on $DATA's references.
# The settings are fairseq_kd/methods.py's (python -m fairseq_kd.methods), where each is traced to the guide.
source "$(dirname "$0")/common.sh"
pseudolabel teacher_train --subset train
"$BIN/fairseq-train" "$DATA" "${TRAIN[@]}" --save-dir "$OUT/seq_kd" \
  --train-mixture "$OUT/teacher_train/data-bin" \
  --criterion label_smoothed_cross_entropy --label-smoothing 0
