"""The methods of :mod:`fairseq_kd.methods` as ``fairseq-hydra-train`` configuration files.

One YAML file per method of the guide, in ``configs/`` at the repository's root, made from the method table
(so that a config and the table cannot disagree; a test regenerates them and compares)::

    python -m fairseq_kd.hydra_configs configs          # (re)writes configs/NAME.yaml

    fairseq-hydra-train --config-dir configs --config-name word_kd \\
        task.data=data-bin task.teacher_path=teacher.pt checkpoint.save_dir=student

Each file names the plugin through ``common.user_dir`` (``fairseq_kd``: run from the repository's root, or
give its path), leaves what only the user knows as ``???`` (the data, the teacher, the pseudo-labels), and
says in comments where each setting of its method comes from in the guide. The architecture and the
optimisation are the former full preset's student (2+1 layers, 128 wide, Adam at 0.002, 4,200 updates): a starting
point to override (``model.encoder_layers=3``, ``optimization.max_update=...``).
"""

import argparse
import os
import textwrap
from typing import List, Optional

from .methods import LOW_DATA, METHODS, MIXTURE, REFERENCES, TEACHER, TEACHER_SAMPLED, TOPK_CACHE, Method

# the methods of the guide that get a config, and the recommended init_kd (the ablation init_nll, the baselines
# and the top-k-sampled variant are measured by the demo, not recipes of their own)
CONFIG_METHODS = ["word_kd", "word_kd_nll", "word_kd_topk", "distilbert", "seq_kd", "init_seq_kd", "init_kd",
                  "interpolation", "hybrid", "low_data", "init_kd_rkl", "init_kd_jsd", "init_kd_tvd", "init_kd_skl",
                  "init_kd_on_policy"]  # fmt: skip

STUDENT = dict(
    encoder_layers=2, decoder_layers=1, encoder_embed_dim=128, decoder_embed_dim=128, encoder_ffn_embed_dim=512,
    decoder_ffn_embed_dim=512, encoder_attention_heads=4, decoder_attention_heads=4, share_all_embeddings=True,
    dropout=0.1,
)  # fmt: skip

TRAIN_DATA = {
    TEACHER: "the teacher's translations: the data-bin of fairseq-kd-pseudolabel",
    TEACHER_SAMPLED: "the teacher's sampled translations: fairseq-kd-pseudolabel --sampling-topk K",
    MIXTURE: "REFERENCES_DATA_BIN,PSEUDOLABEL_DATA_BIN (the references' data-bin first)",
    LOW_DATA: "the 5% of the references and the teacher's translations of the other 95% of the sources, two data-bins",
}


def _value(x):
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, float):
        return f"{x:g}" if x != int(x) else f"{x:.1f}"
    return str(x)


def _comment(text, indent=0):
    return textwrap.fill(text, 115, initial_indent=" " * indent + "# ", subsequent_indent=" " * indent + "# ")


def config(method: Method) -> str:
    """The YAML text of METHOD's config."""
    m = method
    lines = [
        f"# method: {m.name} ({m.summary})",
        "# made by: python -m fairseq_kd.hydra_configs configs (from fairseq_kd/methods.py)",
    ]
    lines.append(_comment("guide: " + (m.guide or "nothing (not a method of the guide)")))
    if m.not_in_guide:
        lines.append(_comment("not in the guide: " + m.not_in_guide))
    lines += ["", "common:", "  user_dir: fairseq_kd  # the plugin: run from the repository's root, or give its path",
              "  log_format: simple", "  log_interval: 100", "", "task:", "  _name: translation_kd",
              "  data: ???  # the references' data-bin (the dictionaries and the valid split)"]  # fmt: skip
    if m.teacher == "live" or m.init_from_teacher:
        lines.append("  teacher_path: ???  # the teacher's checkpoint")
    if m.teacher == TOPK_CACHE:
        lines.append(f"  teacher_topk_cache: ???  # fairseq-kd-cache-topk --k {m.kd_topk} of the training split")
    if m.data != REFERENCES:
        lines.append(f"  train_mixture: ???  # {TRAIN_DATA[m.data]}")
    if m.mixture:
        lines.append(f"  train_mixture_probs: \"{','.join(_value(p) for p in m.mixture)}\"")
    if m.on_policy_fraction:
        lines.append(
            f"  on_policy_fraction: {_value(m.on_policy_fraction)}  # the share of updates on the student's translations"
        )
    lines += ["", "model:", f"  _name: {'transformer_student' if m.init_from_teacher else 'transformer'}"]
    if m.init_from_teacher:
        lines.append("  init_from_teacher: true  # 1 of every n teacher layers, and the teacher's other tensors")
    lines += [f"  {k}: {_value(v)}" for k, v in STUDENT.items()]
    lines += ["", "criterion:"]
    if m.needs_kd_criterion:
        lines += ["  _name: label_smoothed_cross_entropy_with_kd", f"  label_smoothing: {_value(m.label_smoothing)}",
                  f"  nll_weight: {_value(m.nll_weight)}", f"  kd_weight: {_value(m.kd_weight)}",
                  f"  kd_temperature: {_value(m.kd_temperature)}"]  # fmt: skip
        if m.cosine_weight:
            lines += [f"  cosine_weight: {_value(m.cosine_weight)}", f"  cosine_encoder: {_value(m.cosine_encoder)}"]
        if m.kd_divergence != "forward_kl":
            lines.append(f"  kd_divergence: {m.kd_divergence}")
        if m.kd_beta is not None:
            lines.append(f"  kd_beta: {_value(m.kd_beta)}")
    else:
        lines += ["  _name: label_smoothed_cross_entropy", f"  label_smoothing: {_value(m.label_smoothing)}"]
    lines += ["", "optimizer:", "  _name: adam", '  adam_betas: "(0.9,0.98)"', "", "lr_scheduler:",
              "  _name: inverse_sqrt", "  warmup_updates: 400", "", "optimization:", "  lr: [0.002]",
              "  max_update: 4200", "  clip_norm: 1.0", "", "dataset:", "  max_tokens: 4096", "", "checkpoint:",
              f"  save_dir: checkpoints/{m.name}", "  no_epoch_checkpoints: true", "  best_checkpoint_metric: nll_loss"]  # fmt: skip
    return "\n".join(lines) + "\n"


def write(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    for name in CONFIG_METHODS:
        with open(os.path.join(out_dir, f"{name}.yaml"), "w") as f:
            f.write(config(METHODS[name]))


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Writes one fairseq-hydra-train config per method of the guide")
    parser.add_argument("out_dir", nargs="?", default="configs")
    write(parser.parse_args(argv).out_dir)


if __name__ == "__main__":
    main()
