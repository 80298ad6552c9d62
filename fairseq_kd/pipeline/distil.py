"""The stages of a distillation run (:class:`Pipeline`): pseudo-labels, students, export, CTranslate2,
evaluation and the report."""

import functools
import json
import os
import shutil
import time
from argparse import Namespace
from typing import Any, Dict, List, Optional, Tuple

from .. import methods as M
from ..checkpoints import export_ctranslate2, load_checkpoint, recorded_data_dir
from ..evaluate import SIGNIFICANCE, Record, evaluate, plot, seed_summary
from ..io import colon_free, run_lock, write_json, write_text
from ..models.student_init import StudentInitError, layout_flags, select_layers
from ..models.width_pruning import WidthError, check_widths
from ..runs import RunDir, digest, log, minutes
from .config import (
    RERUN_MAY_CHANGE,
    RERUN_MAY_RAISE,
    SINCE_ADDED,
    Config,
    PipelineError,
    check_config,
    check_inputs,
    config_record,
)
from .data import binarize_pairs, low_data_selector, read_pairs


class Pipeline(RunDir):
    """The stages of a distillation run in OUT, for the teacher and data of CONFIG."""

    error = PipelineError

    def __init__(self, out: str, config: Config):
        super().__init__(out)
        self.config = config

    # ---- bookkeeping -----------------------------------------------------------------------------

    def check_run_dir(self, inputs: bool = True) -> None:
        """A run directory belongs to one set of settings and, with INPUTS, to what its input files hold (the
        teacher, the data-bin, the references, the tokenizer, the transfer set: :func:`input_digests`): a rerun
        with others (but for RERUN_MAY_CHANGE and a larger budget, RERUN_MAY_RAISE) is refused, and nothing in it
        is touched. Without INPUTS (the demo's check before it has made the teacher) the settings are checked,
        not recorded."""
        check_config(self.config)
        self.check_budget()
        record = config_record(self.config)
        if inputs:
            record["inputs"] = input_digests(self.config)
        may_change = RERUN_MAY_CHANGE | {RERUN_MAY_RAISE}
        self.check_recorded("pipeline.json", record, "a run", defaults=SINCE_ADDED, may_change=may_change,
                            unrecorded_ok=("inputs",), keys=None if inputs else set(record), write=inputs,
                            remedy=f"its finished stages would not match; give another output directory or remove "
                            f"{self.out} to start over")  # fmt: skip

    def check_budget(self) -> None:
        """A rerun may raise the students' budget (RERUN_MAY_RAISE), not lower it: its students are trained."""
        path = self.path("pipeline.json")
        if not os.path.exists(path):
            return
        with open(path) as f:
            then = json.load(f)["training"]["max_update"]
        now = self.config.training.max_update
        if now < then:
            raise PipelineError(
                f"{self.out} holds students trained for {then:,} updates, more than --max-update {now:,}: give "
                f"another output directory, or {then:,} or more (a larger budget continues them)"
            )
        if now > then:
            log(f"the students' budget is raised from {then:,} to {now:,} updates: each continues from its last checkpoint")

    def run(self) -> None:
        check_inputs(self.config)
        self.check_students_fit()
        with run_lock(self.out, "pipeline"):
            self.run_stages()

    def run_stages(self) -> None:
        self.check_run_dir()
        start = time.time()
        self.data_stages()
        for name in self.config.methods:
            self.student_stage(name, 1)
        # the CTranslate2 model is the best of the students there are
        self.stage("ctranslate2", self.ctranslate2, key={"methods": self.config.methods, "budget": self.budget},
                   outputs=[self.path("models", "ctranslate2_int8", "model.bin")])  # fmt: skip
        for seed in range(2, self.config.seeds + 1):
            for name in self.seeded_methods():
                self.student_stage(name, seed)
        self.report()
        log(f"done in {minutes(time.time() - start)}")

    def check_students_fit(self) -> None:
        """The student shape checked against the teacher for every method that starts from the teacher's layers
        (1 of every n layers; a narrower width as a sub-network), before any stage: a shape that does not fit
        fails here, not after the pseudo-labels and the first students."""
        initialised = [name for name in self.config.methods if M.get(name).init_from_teacher]
        if not initialised:
            return
        model = self.teacher_cfg["model"]
        teacher = Namespace(**model) if isinstance(model, dict) else model
        s = self.config.student
        student = Namespace(encoder_embed_dim=s.embed_dim, decoder_embed_dim=s.embed_dim, encoder_ffn_embed_dim=s.ffn_dim,
                            decoder_ffn_embed_dim=s.ffn_dim, encoder_attention_heads=s.heads,
                            decoder_attention_heads=s.heads)  # fmt: skip
        try:
            for stack, layers in (("encoder", s.encoder_layers), ("decoder", s.decoder_layers)):
                select_layers(getattr(teacher, f"{stack}_layers"), layers, stack)
            check_widths(student, teacher)
        except (StudentInitError, WidthError) as e:
            reason = str(e).split(". ")[0]
            raise PipelineError(
                f"--student {s.encoder_layers},{s.decoder_layers},{s.embed_dim},{s.ffn_dim},{s.heads} does not fit the "
                f"teacher for {', '.join(initialised)}: {reason}; choose a --student that does"
            ) from None

    # ---- data ------------------------------------------------------------------------------------

    def needs(self, *kinds: str) -> bool:
        return any(M.get(name).data in kinds for name in self.config.methods)

    def data_stages(self) -> None:
        if self.needs(M.TEACHER, M.MIXTURE, M.LOW_DATA):
            self.stage("pseudolabels", self.pseudolabels, "pseudolabels", [], outputs=[self.method_paths().pseudo])
        if self.needs(M.TEACHER_SAMPLED):
            k = {M.get(n).sampling_topk for n in self.config.methods if M.get(n).sampling_topk}
            self.stage("pseudolabels sampled", self.pseudolabels, "pseudolabels-sampled", ["--sampling-topk", min(k)],
                       outputs=[self.method_paths().sampled])  # fmt: skip
        if any(M.get(n).teacher == M.TOPK_CACHE for n in self.config.methods):
            self.stage("topk cache", self.topk_cache, outputs=[os.path.join(self.method_paths().topk_cache, "meta.json")])
        if self.needs(M.LOW_DATA, M.LOW_DATA_REFERENCES):
            paths = self.method_paths()
            self.stage("low-data split", self.low_data, outputs=[paths.low_references, paths.low_pseudo])

    def pseudolabels(self, name: str, extra: List[Any]) -> None:
        c = self.config
        args = ["--teacher", c.teacher, "--data", c.data_bin, "--output", self.path(name), "--beam", c.pseudolabel_beam,
                "--max-tokens", "8000", "--source-lang", c.src, "--target-lang", c.tgt, "--cpu",
                "--engine", c.pseudolabel_engine] + extra  # fmt: skip
        if c.transfer:
            args += ["--input", c.transfer] + (["--spm-model", c.spm_model] if c.spm_model else ["--bpe-codes", c.bpe_codes])
        else:
            args += ["--subset", "train"]
        self.command("fairseq-kd-pseudolabel", args, name.replace("-", "_"))
        with open(self.path(name, "summary.json")) as f:
            summary = json.load(f)
        speed = summary.get("decoding", {}).get("sentences_per_s")
        log("    " + ", ".join(f"{k}: {v}" for k, v in summary.items() if not isinstance(v, (dict, list)) and k != "data_bin")
            + (f", {speed} sentences/s decoding" if speed else ""))  # fmt: skip

    def topk_cache(self) -> None:
        k = {M.get(n).kd_topk for n in self.config.methods if M.get(n).kd_topk}
        c = self.config
        self.command(
            "fairseq-kd-cache-topk",
            ["--teacher", c.teacher, "--data", c.data_bin, "--k", min(k), "--output", self.path("topk-cache"),
             "--source-lang", c.src, "--target-lang", c.tgt, "--cpu"] + self.teacher_data_flags,
            "topk_cache",
        )  # fmt: skip

    def low_data(self) -> None:
        """The low-data regime's data: the references of LOW_DATA_SHARE of the training pairs (those whose
        source's SHA-1 says so: deterministic, independent of order), and the teacher's translations of the
        other sources (of --transfer when given)."""
        c = self.config
        keep = low_data_selector()
        pairs = read_pairs(c.data_bin, "train", c.src, c.tgt)
        labelled = [p for p in pairs if keep(p[0])]
        self.binarize_pairs(labelled, "low-data-references")
        pseudo = read_pairs(self.path("pseudolabels", "data-bin"), "train", c.src, c.tgt)
        unlabelled = pseudo if c.transfer else [p for p in pseudo if not keep(p[0])]
        self.binarize_pairs(unlabelled, "low-data-pseudolabels")
        write_json(self.path("low-data.json"), {"references": len(labelled), "pseudolabels": len(unlabelled),
                                                 "training_pairs": len(pairs)})  # fmt: skip
        log(f"    {len(labelled)} of {len(pairs)} labelled pairs kept; {len(unlabelled)} teacher-labelled pairs")

    def binarize_pairs(self, pairs: List[Tuple[str, str]], name: str) -> None:
        c = self.config
        binarize_pairs(pairs, self.path(name + "-tokens"), self.path(name), c.src, c.tgt, c.data_bin)

    @functools.cached_property
    def teacher_cfg(self) -> Dict[str, Any]:
        """The teacher checkpoint's config (its task and model)."""
        return load_checkpoint(self.config.teacher, "--teacher")["cfg"]

    @functools.cached_property
    def teacher_layout_flags(self) -> List[str]:
        """The teacher's layer layout (layer-norm placement, activation, positions, embedding sharing) as
        fairseq-train flags: every student has it, the initialised ones because they take the teacher's
        tensors, the others so that all students differ only in method."""
        return layout_flags(self.teacher_cfg["model"])

    @functools.cached_property
    def teacher_data_flags(self) -> List[str]:
        """``--teacher-data DATA_BIN`` when the data directory that the teacher's checkpoint records does not
        hold its dictionaries here (a teacher trained on another machine, or from another working directory):
        DATA_BIN is the teacher's by the run's contract, and the pseudo-labeller checks their sizes against the
        teacher's embeddings. No flag when it does: the task then compares the teacher's own dictionaries
        with DATA_BIN's, symbol by symbol."""
        c = self.config
        recorded = recorded_data_dir(self.teacher_cfg["task"])
        if recorded and all(os.path.isfile(os.path.join(recorded, f"dict.{lang}.txt")) for lang in (c.src, c.tgt)):
            return []
        return ["--teacher-data", c.data_bin]

    def method_paths(self) -> M.MethodPaths:
        c = self.config
        # as fairseq-train is given them: fairseq reads ':' in a data directory as a list of them
        return M.MethodPaths(
            data=colon_free(c.data_bin),
            teacher=c.teacher,
            pseudo=colon_free(self.path("pseudolabels", "data-bin")),
            sampled=colon_free(self.path("pseudolabels-sampled", "data-bin")),
            topk_cache=self.path("topk-cache"),
            low_references=colon_free(self.path("low-data-references")),
            low_pseudo=colon_free(self.path("low-data-pseudolabels")),
        )

    # ---- students --------------------------------------------------------------------------------

    @property
    def budget(self) -> int:
        return self.config.training.max_update

    def student_stage(self, name: str, seed: int) -> None:
        """Student NAME with SEED trained and exported, unless it was for this budget (a raised one continues it)."""
        run = name if seed == 1 else f"{name}.seed{seed}"
        self.stage(f"student {run}", self.student, name, seed, key={"budget": self.budget},
                   outputs=[self.path("models", f"{run}.pt")], again="continued from its last checkpoint")  # fmt: skip

    def student(self, name: str, seed: int) -> None:
        method = M.get(name)
        c = self.config
        run = name if seed == 1 else f"{name}.seed{seed}"
        arch = c.student.flags("transformer_student" if method.init_from_teacher else "transformer", self.teacher_layout_flags)
        flags = method.flags(self.method_paths()) + arch + ["--source-lang", c.src, "--target-lang", c.tgt]
        if "--teacher-path" in flags:
            flags += self.teacher_data_flags
        save_dir = self.path("students", run)
        self.train(flags + c.training.flags(seed), save_dir, run, c.training.max_update)
        # the same budget for every student: its last checkpoint
        self.export(os.path.join(save_dir, "checkpoint_last.pt"), self.path("models", f"{run}.pt"))

    def export(self, checkpoint: str, output: str) -> None:
        os.makedirs(os.path.dirname(output), exist_ok=True)
        self.command("fairseq-kd-export", [checkpoint, output, "--overwrite"], "export")

    # ---- evaluation ------------------------------------------------------------------------------

    def systems(self) -> Dict[str, str]:
        """{name: model} of every system made so far: the teacher, the students, CTranslate2."""
        found = {"teacher": self.config.teacher}
        names = list(self.config.methods)
        names += [f"{n}.seed{s}" for s in range(2, self.config.seeds + 1) for n in self.seeded_methods(required=False)]
        for name in names:
            if os.path.exists(self.path("models", f"{name}.pt")):
                found[name] = self.path("models", f"{name}.pt")
        if os.path.isdir(self.path("models", "ctranslate2_int8")):
            found["ctranslate2_int8"] = self.path("models", "ctranslate2_int8")
        return found

    def evaluate(self, split: str, timing_rounds: int = 0, systems: Optional[Dict[str, str]] = None) -> List[Record]:
        c = self.config
        return evaluate(
            systems or self.systems(), c.data_bin, os.path.join(c.references, f"{split}.{c.tgt}"), split=split,
            out_dir=self.path("eval", split), baseline="baseline", timing_rounds=timing_rounds,
            settings=c.evaluation, source_lang=c.src, target_lang=c.tgt, quiet=True,
        )  # fmt: skip

    def best_student(self, required: bool = True) -> Optional[str]:
        """The student (seed 1) with the best valid BLEU: the test split chooses nothing."""
        path = self.path("eval", "valid", "results.json")
        if not os.path.exists(path):
            if required:
                raise RuntimeError("the students have not been evaluated on valid yet")
            return None
        with open(path) as f:
            records = [r for r in json.load(f)["systems"] if r["name"] in self.config.methods]
        students = [r for r in records if r["name"] != "baseline"] or records
        return max(students, key=lambda r: r["bleu"])["name"]

    def seeded_methods(self, required: bool = True) -> List[str]:
        """The methods trained with every seed: --seeded-methods, else the baseline and the best student."""
        if self.config.seeded:
            return list(self.config.seeded)
        best = self.best_student(required)
        return ["baseline"] + ([best] if best and best != "baseline" else [])

    def ctranslate2(self) -> None:
        """The student with the best valid BLEU, in CTranslate2 int8."""
        students = {n: p for n, p in self.systems().items() if n in self.config.methods}
        self.evaluate("valid", systems=students)
        best = self.best_student()
        output = self.path("models", "ctranslate2_int8")
        shutil.rmtree(output, ignore_errors=True)
        export_ctranslate2(self.path("models", f"{best}.pt"), self.config.data_bin, output + ".tmp", "int8",
                           self.config.src, self.config.tgt)  # fmt: skip
        os.replace(output + ".tmp", output)
        write_json(self.path("models", "ctranslate2_int8.json"), {"student": best})
        log(f"    {best} (best valid BLEU) converted to CTranslate2 int8")

    # ---- report ----------------------------------------------------------------------------------

    def budget_line(self) -> str:
        """What every student of the comparison had: one shape and one training budget."""
        s, t = self.config.student, self.config.training
        derived = "; the default student: the teacher's encoder, one decoder layer" if self.config.student_from_teacher else ""
        return (
            f"Every student: {s.encoder_layers}+{s.decoder_layers} layers, {s.embed_dim} wide (FFN {s.ffn_dim}, "
            f"{s.heads} heads{derived}), {t.max_update:,} updates of up to {t.max_tokens:,} tokens, its last "
            "checkpoint: the same budget for every method."
        )

    def report(self) -> None:
        systems = self.systems()
        valid = {r.name: r for r in self.evaluate("valid", systems=systems)}
        test = self.evaluate("test", self.config.timing_rounds, systems=systems)
        ct2_source = None
        if os.path.exists(self.path("models", "ctranslate2_int8.json")):
            with open(self.path("models", "ctranslate2_int8.json")) as f:
                ct2_source = json.load(f)["student"]
        records = []
        for r in test:
            record = r.as_dict()
            record["method"] = describe(r.name, ct2_source)
            record["valid_bleu"] = valid[r.name].bleu
            record["valid_significance"] = valid[r.name].significance
            if r.name == "ctranslate2_int8" and ct2_source:
                record["params"] = next(x.params for x in test if x.name == ct2_source)
            records.append(record)
        seeds = seed_summary(records)
        floor = self.config.chrf_floor
        shown = [r for r in records if floor is None or r["chrf"] >= floor]
        below = [r["name"] for r in records if r not in shown]
        write_json(self.path("results.json"), {"settings": config_record(self.config), "systems": records,
                                               "seeds": seeds, "chrf_floor": floor, "below_chrf_floor": below})  # fmt: skip
        with open(self.path("eval", "test", "results.json")) as f:
            note = json.load(f)["note"]
        baseline = next(r for r in records if r["name"] == "baseline")
        table = students_table(shown, {m: v for m, v in seeds.items() if m in {r["name"] for r in shown}}, baseline)
        table += "\n" + self.budget_line() + "\n"
        if below:
            table += f"\nNot shown, test chrF below {floor} (they do not translate at this budget): {', '.join(below)}.\n"
        write_text(self.path("results.md"), f"{note}.\n\n{table}")
        plot([Record.from_dict(r) for r in shown], self.path("bleu_vs_speed.png"))
        log("\n" + table)
        log(f"written: {self.path('results.json')}, {self.path('results.md')}, {self.path('bleu_vs_speed.png')}")


def input_digests(config: Config) -> Dict[str, Optional[str]]:
    """{input: :func:`fairseq_kd.runs.digest` of it}: the files a run reads, by what they hold."""
    c = config
    files = {"teacher": c.teacher, "spm_model": c.spm_model, "bpe_codes": c.bpe_codes, "transfer": c.transfer}
    files.update({f"references.{split}": os.path.join(c.references, f"{split}.{c.tgt}") for split in ("valid", "test")})
    for lang in (c.src, c.tgt):
        files[f"data_bin.dict.{lang}"] = os.path.join(c.data_bin, f"dict.{lang}.txt")
        for split in ("train", "valid", "test"):
            for ext in ("idx", "bin"):
                files[f"data_bin.{split}.{lang}.{ext}"] = os.path.join(c.data_bin, f"{split}.{c.src}-{c.tgt}.{lang}.{ext}")
    return {name: digest(path) if path else None for name, path in files.items()}


def describe(name: str, ct2_source: Optional[str] = None) -> str:
    if name == "teacher":
        return "the teacher"
    if name == "ctranslate2_int8":
        return f"{ct2_source} in CTranslate2 int8"
    base, _, seed = name.partition(".seed")
    summary = M.get(base).summary
    return f"{summary}, seed {seed}" if seed else summary


def students_table(records: List[Dict[str, Any]], seeds: Optional[Dict[str, Dict[str, float]]] = None,
                   baseline: Optional[Dict[str, Any]] = None) -> str:  # fmt: skip
    """The run's table: test BLEU with its 95% interval and paired-bootstrap p against the baseline (BASELINE,
    or the record named so), chrF, valid BLEU, speed and size; then the seed spread of the methods trained
    with several seeds."""
    head = ["system", "method", "BLEU", "vs baseline", "p", "chrF", "valid BLEU", "valid p", "sentences/s", "params", "MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = baseline or next((r for r in records if r["name"] == "baseline"), None)
    for r in records:
        sig, vsig = r["significance"].get("bleu", {}), r.get("valid_significance", {}).get("bleu", {})
        if r["name"] == "baseline" or not sig or base is None:
            versus, p, vp = "", "", ""
        else:
            versus = f"{r['bleu'] - base['bleu']:+.2f} ({sig['verdict']})"
            p, vp = f"{sig['p_value']:.4f}", f"{vsig.get('p_value', float('nan')):.4f}"
        bleu = f"{r['bleu']:.2f} ± {sig['ci']:.2f}" if sig else f"{r['bleu']:.2f}"
        cells = [r["name"], r["method"], bleu, versus, p, f"{r['chrf']:.2f}", f"{r['valid_bleu']:.2f}", vp,
                 f"{r['sentences_per_s']:.1f}", f"{r['params']:,}" if r.get("params") else "-", str(r["size_mb"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if seeds:
        text += "\n| method | seeds | BLEU mean ± std | chrF mean ± std |\n|---|---|---|---|\n"
        for method, s in seeds.items():
            text += f"| {method} | {s['seeds']} | {s['bleu_mean']:.2f} ± {s['bleu_std']:.2f} | {s['chrf_mean']:.2f} ± {s['chrf_std']:.2f} |\n"
    text += f"\n± is sacreBLEU's 95% bootstrap interval; a difference is a gain or a loss only when p < {SIGNIFICANCE}.\n"
    return text
