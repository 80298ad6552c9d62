"""The main job on real data: a teacher, its pseudo-labels, seven students of one shape trained with the
NeMo guide's methods on the same update budget, and every model measured the same way.

    python -m fairseq_kd.demo [--preset default|full] [--data DIR] [--out runs/demo] [--timing-rounds N]

Stages (each is skipped when a rerun finds it finished; an interrupted fairseq-train resumes from its
checkpoint_last.pt, or from its newest interval checkpoint when it stopped while writing checkpoint_last.pt):

1. corpus: the gettext catalogs of this machine (:mod:`fairseq_kd.demo.corpus`), or ``--data DIR`` with
   ``{train,valid,test}.{de,en}``; copied to OUT/raw.
2. sentencepiece: one joint model trained on the training split; every split encoded with it.
3. binarize: ``fairseq-preprocess --joined-dictionary`` into OUT/data-bin.
4. teacher: ``fairseq-train`` (NLL with label smoothing); the checkpoint with the best valid loss.
5. pseudolabels: ``fairseq-kd-pseudolabel``, the teacher's beam-search translations of the training
   sources, binarized with the teacher's dictionaries (OUT/pseudolabels/data-bin).
6. students: baseline (NLL on the references), word_kd, seq_kd (NLL on the teacher's translations),
   interpolation (mixture of both data-bins), hybrid (mixture + word-level KD), distilbert (initialised
   from 1 of every n teacher layers, word-level KD + cosine loss on hidden states) and init_seq_kd (the
   same initialisation, then NLL on the teacher's translations); each exported with ``fairseq-kd-export``
   to an ordinary fairseq checkpoint. A student whose checkpoint_last.pt has reached the budget is not
   trained again (fairseq-train would take one more update).
7. evaluation: stock ``fairseq-generate`` of valid and test with the same beam and batch size for every
   model; sacreBLEU and chrF on detokenized text; sentences/s and tokens/s as fairseq-generate measures
   them; parameters and checkpoint size.
8. ctranslate2: the student with the best *valid* BLEU converted to CTranslate2 int8, evaluated and timed
   the same way. It and the timing are done again when a rerun finds that the demo has other students than
   when they were done (a run of an earlier version); what they measured is kept in OUT/earlier first.
9. timing (``full`` preset, or ``--timing-rounds N``): every system translates the test split again, a few
   rounds by turns, each fairseq model in a fresh fairseq-generate; speeds become the medians
   (OUT/timing/runs.json).
10. report, rewritten at every run: OUT/results.json, OUT/results.md, OUT/bleu_vs_speed.png; the table is
    printed.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import zipfile

from .corpus import CorpusError, build_corpus
from .presets import COSINE, MIXTURE_PROBS, PRESETS, WORD_KD

PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
SRC, TGT = "de", "en"
SPLITS = ("train", "valid", "test")
# settings that change how models are measured, not how they are made: a rerun may change them
MEASUREMENT_ONLY = {"timing_rounds"}
# a budget a rerun may raise: fairseq-train continues each student from its last checkpoint (inverse_sqrt
# does not depend on the budget: every update gets the learning rate and batch of a run given it from the start)
RAISABLE = "student_max_update"
STUDENTS = ("baseline", "word_kd", "seq_kd", "interpolation", "hybrid", "distilbert", "init_seq_kd")
# stages that measure or choose among all students: done again when the demo's students have changed since
ON_ALL_STUDENTS = ("ctranslate2", "timing")
METHODS = {
    "teacher": "{encoder_layers}+{decoder_layers} layers, NLL on the references",
    "baseline": "NLL on the references",
    "word_kd": "word-level KD",
    "seq_kd": "sequence-level KD",
    "interpolation": "sequence-level interpolation",
    "hybrid": "interpolation + word-level KD",
    "distilbert": "DistilBERT-style init + word-level KD + cosine",
    "init_seq_kd": "DistilBERT-style init + sequence-level KD",
}


class DemoError(RuntimeError):
    pass


def log(message=""):
    print(message, flush=True)


def minutes(seconds):
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


class Pipeline:
    def __init__(self, out, preset="default", data=None, timing_rounds=None):
        if preset not in PRESETS:
            raise DemoError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
        if timing_rounds is not None and timing_rounds < 0:
            raise DemoError(f"--timing-rounds must be 0 or more, not {timing_rounds}")
        self.out, self.preset_name, self.preset, self.data = out, preset, PRESETS[preset], data
        self.timing_rounds = self.preset["timing_rounds"] if timing_rounds is None else timing_rounds
        self.stages = [
            ("corpus", self.corpus),
            ("sentencepiece", self.sentencepiece),
            ("binarize", self.binarize),
            ("teacher", self.teacher),
            ("pseudolabels", self.pseudolabels),
            *((f"student {name}", lambda name=name: self.student(name)) for name in STUDENTS),
            *((f"evaluate {name}", lambda name=name: self.evaluate(name)) for name in ("teacher",) + STUDENTS),
            ("ctranslate2", self.ctranslate2),
            *([("timing", self.timing)] if self.timing_rounds else []),
        ]

    # ---- bookkeeping -------------------------------------------------------------------------------

    def path(self, *parts):
        return os.path.join(self.out, *parts)

    def check_run_dir(self):
        """An output directory belongs to one preset, with the settings it had, and one corpus: a rerun with
        others would mix models trained differently, so it is refused (and nothing in it is touched). Only
        the students' budget may be raised: they then continue (:meth:`raise_student_budget`)."""
        os.makedirs(self.out, exist_ok=True)
        config = {
            "preset": self.preset_name,
            "data": os.path.abspath(self.data) if self.data else "gettext catalogs",
            "settings": self.preset,
        }
        path = self.path("demo.json")
        if os.path.exists(path):
            with open(path) as f:
                earlier = json.load(f)
            config = json.loads(json.dumps(config))  # as it reads back
            if earlier.get("preset") != config["preset"] or earlier.get("data") != config["data"]:
                raise DemoError(
                    f"{self.out} holds a demo run of preset {earlier.get('preset')!r} on {earlier.get('data')}, "
                    f"not of preset {config['preset']!r} on {config['data']}: give another output directory "
                    f"(OUT=...) or remove {self.out} to start over"
                )
            earlier_settings = earlier.get("settings", {})
            changed = sorted(k for k in set(earlier_settings) | set(config["settings"])
                             if k not in MEASUREMENT_ONLY and earlier_settings.get(k) != config["settings"].get(k))  # fmt: skip
            before, now = earlier_settings.get(RAISABLE), config["settings"].get(RAISABLE)
            raised = changed == [RAISABLE] and isinstance(before, int) and isinstance(now, int) and now > before
            if changed and not raised:
                hint = f" ({RAISABLE} may only be raised)" if RAISABLE in changed else ""
                raise DemoError(
                    f"{self.out} holds a demo run of preset {self.preset_name!r} made when the preset had other "
                    + ", ".join(f"{k} ({earlier_settings.get(k)}, now {config['settings'].get(k)})" for k in changed)
                    + f": its finished stages would not match the preset{hint}; give another output directory "
                    f"(OUT=...) or remove {self.out} to start over"
                )
            if raised:
                self.raise_student_budget(before, now)
            else:
                return
        with open(path, "w") as f:
            json.dump(config, f, indent=2)

    def raise_student_budget(self, before, now):
        """The students of a run made with a smaller budget continue to the new one: what was measured of
        them is kept in OUT/earlier/student_max_update_BEFORE, and their stages (training, evaluation, the
        CTranslate2 model, the timing, the init ablation's students) are marked unfinished."""
        kept = self.path("earlier", f"{RAISABLE}_{before}")
        self.keep_measurements(kept)
        stale = [f"student {n}" for n in STUDENTS] + [f"evaluate {n}" for n in STUDENTS] + ["ctranslate2", "timing"]
        markers = [self.done_marker(stage) for stage in stale]
        if os.path.isdir(self.path("stages")):
            markers += [self.path("stages", f) for f in os.listdir(self.path("stages")) if f.startswith("ablation_")]
        for marker in markers:
            if os.path.exists(marker):
                os.remove(marker)
        log(
            f"{RAISABLE} raised from {before} to {now}: the students continue from their last checkpoints and "
            f"are measured again; what was measured before is kept in {kept}"
        )

    def reopen_for_other_students(self):
        """The CTranslate2 choice and the timing of a run made when the demo had other students (a run of
        an earlier version) are done again, with every student of today; what was measured before is kept in
        OUT/earlier/students_before_TIME."""
        stale = []
        for stage in ON_ALL_STUDENTS:
            marker = self.done_marker(stage)
            if os.path.exists(marker):
                with open(marker) as f:
                    if json.load(f).get("students") != list(STUDENTS):
                        stale.append(marker)
        if stale:
            kept = self.path("earlier", "students_before_" + time.strftime("%Y%m%d-%H%M%S"))
            self.keep_measurements(kept)
            for marker in stale:
                os.remove(marker)
            log(
                f"the CTranslate2 choice and the timing were made with other students than "
                f"{', '.join(STUDENTS)}: they are done again; what was measured before is kept in {kept}"
            )

    def keep_measurements(self, kept):
        """A copy of what was measured (results, evaluations, timings, the exported models) in KEPT."""
        os.makedirs(kept, exist_ok=True)
        for name in ("results.json", "results.md", "bleu_vs_speed.png", "eval", "timing", "models"):
            source = self.path(name)
            if os.path.isdir(source):
                shutil.copytree(source, os.path.join(kept, name), dirs_exist_ok=True)
            elif os.path.exists(source):
                shutil.copy2(source, kept)

    def done_marker(self, stage):
        return self.path("stages", stage.replace(" ", "_") + ".done")

    def run(self):
        self.check_run_dir()
        if self.data:
            check_data_dir(self.data)
        os.makedirs(self.path("stages"), exist_ok=True)
        os.makedirs(self.path("logs"), exist_ok=True)
        self.reopen_for_other_students()
        start = time.time()
        for i, (stage, fn) in enumerate(self.stages, 1):
            marker = self.done_marker(stage)
            if os.path.exists(marker):
                log(f"[{i}/{len(self.stages)}] {stage}: done earlier")
                continue
            log(f"[{i}/{len(self.stages)}] {stage} ...")
            t = time.time()
            fn()
            done = {"seconds": round(time.time() - t, 1)}
            if stage in ON_ALL_STUDENTS:
                done["students"] = list(STUDENTS)
            with open(marker, "w") as f:
                json.dump(done, f)
            elapsed, total = minutes(time.time() - t), minutes(time.time() - start)
            log(f"[{i}/{len(self.stages)}] {stage}: finished in {elapsed} ({total} so far)")
        # the report is rewritten every time from what the stages left: a timing stage added to a finished
        # run (--timing-rounds) shows in it
        self.report()

    def command(self, name, args, log_name, progress_total=None):
        """Runs a console script of this environment, its output appended to OUT/logs/LOG_NAME.log; shows
        the number of updates every 30 s when PROGRESS_TOTAL is given; fails with the log's tail."""
        log_path = self.path("logs", log_name + ".log")
        cmd = [os.path.join(BIN, name)] + [str(a) for a in args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(log_path, "a") as f:
            f.write("\n$ " + " ".join(cmd) + "\n")
            f.flush()
            process = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
            start, shown, next_report = time.time(), None, time.time() + 30
            while process.poll() is None:
                time.sleep(1)
                if progress_total and time.time() >= next_report:
                    next_report += 30
                    updates = last_update(log_path)
                    if updates is not None and updates != shown:
                        log(f"    {log_name}: {updates}/{progress_total} updates, {minutes(time.time() - start)}")
                        shown = updates
        if process.returncode != 0:
            with open(log_path, errors="replace") as f:
                text = f.read()
            if name == "fairseq-train" and process.returncode < 0 and "done training in" in text[text.rfind("\n$ ") :]:
                # fairseq-train can abort while the interpreter shuts down ("terminate called without an
                # active exception"), after it has saved its last checkpoint: the training is complete
                log(f"    note: fairseq-train finished training, then died of signal {-process.returncode} at exit")
                return log_path
            tail = text[-3000:]
            raise DemoError(f"{name} failed (exit status {process.returncode}); the end of {log_path}:\n{tail}")
        return log_path

    # ---- data --------------------------------------------------------------------------------------

    def corpus(self):
        raw = self.path("raw")
        if self.data:
            os.makedirs(raw, exist_ok=True)
            for split in SPLITS:
                for lang in (SRC, TGT):
                    shutil.copyfile(os.path.join(self.data, f"{split}.{lang}"), os.path.join(raw, f"{split}.{lang}"))
            counts = {split: count_lines(os.path.join(raw, f"{split}.{SRC}")) for split in SPLITS}
            log("    " + ", ".join(f"{split}: {n}" for split, n in counts.items()) + " segments")
        else:
            stats = build_corpus(raw)
            log(
                f"    {stats['catalogs']} catalogs -> "
                + ", ".join(f"{s}: {stats[s + ' segments']}" for s in SPLITS)
                + " segments"
            )

    def sentencepiece(self):
        import sentencepiece as spm

        model = self.path("spm")
        inputs = ",".join(self.path("raw", f"train.{lang}") for lang in (SRC, TGT))
        spm.SentencePieceTrainer.train(
            input=inputs,
            model_prefix=model,
            vocab_size=self.preset["vocab_size"],
            character_coverage=1.0,
            model_type="unigram",
            input_sentence_size=1_000_000,
            shuffle_input_sentence=True,
            bos_id=-1,
            eos_id=-1,
            unk_id=0,
            pad_id=-1,
            seed_sentencepiece_size=200_000,
            hard_vocab_limit=False,  # a small corpus may have fewer pieces than vocab_size
            minloglevel=2,
        )
        processor = spm.SentencePieceProcessor(model_file=model + ".model")
        os.makedirs(self.path("tok"), exist_ok=True)
        for split in SPLITS:
            for lang in (SRC, TGT):
                with open(self.path("raw", f"{split}.{lang}"), encoding="utf-8") as f:
                    lines = [line.rstrip("\n") for line in f]
                with open(self.path("tok", f"{split}.{lang}"), "w", encoding="utf-8") as f:
                    f.writelines(" ".join(pieces) + "\n" for pieces in processor.encode(lines, out_type=str))

    def binarize(self):
        tok = self.path("tok")
        bin_dir = self.path("data-bin")
        if os.path.exists(bin_dir):
            shutil.rmtree(bin_dir)  # an interrupted earlier attempt of this stage
        self.command(
            "fairseq-preprocess",
            ["--source-lang", SRC, "--target-lang", TGT, "--joined-dictionary", "--workers", "2", "--destdir", bin_dir]
            + ["--trainpref", f"{tok}/train", "--validpref", f"{tok}/valid", "--testpref", f"{tok}/test"],
            "binarize",
        )

    # ---- training ----------------------------------------------------------------------------------

    def arch(self, shape, arch="transformer"):
        return [
            "--arch", arch, "--share-all-embeddings",
            "--encoder-layers", shape["encoder_layers"], "--decoder-layers", shape["decoder_layers"],
            "--encoder-embed-dim", shape["embed_dim"], "--decoder-embed-dim", shape["embed_dim"],
            "--encoder-ffn-embed-dim", shape["ffn_dim"], "--decoder-ffn-embed-dim", shape["ffn_dim"],
            "--encoder-attention-heads", shape["heads"], "--decoder-attention-heads", shape["heads"],
        ]  # fmt: skip

    def training(self, max_update, warmup_updates, label_smoothing=0.1):
        p = self.preset
        return [
            "--user-dir", PLUGIN_DIR, "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--clip-norm", "1.0",
            "--lr", p["lr"], "--lr-scheduler", "inverse_sqrt", "--warmup-updates", warmup_updates,
            "--max-tokens", p["max_tokens"], "--dropout", p["dropout"], "--max-update", max_update,
            "--label-smoothing", label_smoothing, "--seed", "1", "--num-workers", "0", "--cpu",
            "--log-format", "simple", "--log-interval", "25", "--no-epoch-checkpoints",
            "--best-checkpoint-metric", "nll_loss", "--save-interval-updates", "200", "--keep-interval-updates", "1",
        ]  # fmt: skip

    def train(self, flags, save_dir, log_name, max_update, warmup_updates, label_smoothing=0.1):
        """fairseq-train with FLAGS and the demo's training settings into SAVE_DIR, resuming what is there
        (a checkpoint_last.pt left truncated is repaired first). Nothing is run when checkpoint_last.pt has
        MAX_UPDATE updates already: fairseq-train, resumed there, would make one more before it stops."""
        repair_last_checkpoint(save_dir)
        done = checkpoint_updates(os.path.join(save_dir, "checkpoint_last.pt"))
        if done is not None and done >= max_update:
            log(f"    {log_name}: {save_dir}/checkpoint_last.pt has {done} updates already: not trained again")
            return
        self.command(
            "fairseq-train",
            flags + ["--save-dir", save_dir] + self.training(max_update, warmup_updates, label_smoothing),
            log_name,
            progress_total=max_update,
        )

    def teacher(self):
        p = self.preset
        flags = [self.path("data-bin")] + self.arch(p["teacher"]) + ["--criterion", "label_smoothed_cross_entropy"]
        self.train(flags, self.path("teacher"), "teacher", p["teacher_max_update"], p["warmup_updates"],
                   p["teacher_label_smoothing"])  # fmt: skip
        self.export(self.path("teacher", "checkpoint_best.pt"), self.path("models", "teacher.pt"))

    def teacher_checkpoint(self):
        return self.path("teacher", "checkpoint_best.pt")

    def pseudolabels(self):
        self.command(
            "fairseq-kd-pseudolabel",
            ["--teacher", self.teacher_checkpoint(), "--data", self.path("data-bin"), "--subset", "train",
             "--output", self.path("pseudolabels"), "--beam", self.preset["beam"], "--max-tokens", "8000", "--cpu"],
            "pseudolabels",
        )  # fmt: skip
        with open(self.path("pseudolabels", "summary.json")) as f:
            summary = json.load(f)
        log("    " + ", ".join(f"{k}: {v}" for k, v in summary.items() if not isinstance(v, (dict, list))))

    def student(self, name):
        p = self.preset
        data, pseudo = self.path("data-bin"), self.path("pseudolabels", "data-bin")
        teacher = ["--task", "translation_kd", "--teacher-path", self.teacher_checkpoint()]
        kd = ["--criterion", "label_smoothed_cross_entropy_with_kd"] + WORD_KD
        mixture = ["--task", "translation_kd", "--train-mixture", f"{data},{pseudo}", "--train-mixture-probs", MIXTURE_PROBS]
        nll = ["--criterion", "label_smoothed_cross_entropy"]
        arch = self.arch(p["student"])
        init = self.arch(p["student"], "transformer_student") + ["--init-from-teacher"]
        flags = {
            "baseline": [data] + arch + nll,
            "word_kd": [data] + arch + teacher + kd,
            # the teacher's translations as training targets; valid stays the references
            "seq_kd": [data] + arch + ["--task", "translation_kd", "--train-mixture", pseudo] + nll,
            "interpolation": [data] + arch + mixture + nll,
            "hybrid": [data] + arch + mixture + ["--teacher-path", self.teacher_checkpoint()] + kd,
            "distilbert": [data] + init + teacher + kd + COSINE,
            # the teacher's layers, then its translations as training targets (no teacher in training)
            "init_seq_kd": [data] + init + teacher + ["--train-mixture", pseudo] + nll,
        }[name]
        save_dir = self.path("students", name)
        self.train(flags, save_dir, name, p["student_max_update"], p["student_warmup_updates"])
        # the same budget for every student: its last checkpoint
        self.export(os.path.join(save_dir, "checkpoint_last.pt"), self.path("models", f"{name}.pt"))

    def export(self, checkpoint, output):
        os.makedirs(os.path.dirname(output), exist_ok=True)
        self.command("fairseq-kd-export", [checkpoint, output, "--overwrite"], "export")

    # ---- evaluation --------------------------------------------------------------------------------

    def generate(self, name, split, log_name):
        """Stock fairseq-generate of one split with OUT/models/NAME.pt, the same settings for every model;
        returns its detokenized hypotheses in corpus order and the speed it measured."""
        p = self.preset
        log_path = self.command(
            "fairseq-generate",
            [self.path("data-bin"), "--path", self.path("models", f"{name}.pt"), "--gen-subset", split,
             "--beam", p["beam"], "--batch-size", p["eval_batch_size"],
             "--max-len-a", p["max_len_a"], "--max-len-b", p["max_len_b"],
             # else fairseq-generate leaves out the sentences beyond the last multiple of 8
             "--required-batch-size-multiple", "1",
             "--post-process", "sentencepiece", "--cpu"],
            log_name,
        )  # fmt: skip
        return read_generate_log(log_path)

    def evaluate(self, name, method=None):
        model = self.path("models", f"{name}.pt")
        method = method or METHODS[name].format(**self.preset["teacher"])
        record = {"name": name, "method": method, "params": count_parameters(model), "size_mb": size_mb(model)}
        for split in ("valid", "test"):
            hypotheses, speed = self.generate(name, split, f"generate_{name}_{split}")
            record.update(self.score(name, split, hypotheses, speed))
        self.save_record(name, record)

    def score(self, name, split, hypotheses, speed):
        import sacrebleu

        references = read_lines(self.path("raw", f"{split}.{TGT}"))
        missing = [i for i in range(len(references)) if i >= len(hypotheses) or hypotheses[i] is None]
        if missing or len(hypotheses) != len(references):
            raise DemoError(
                f"{name}: {len(references) - len(missing)} translations of the {len(references)} {split} sentences "
                f"(missing: sentence {missing[0] if missing else len(references)} and others)"
            )
        os.makedirs(self.path("translations"), exist_ok=True)
        with open(self.path("translations", f"{name}.{split}.{TGT}"), "w", encoding="utf-8") as f:
            f.writelines(h + "\n" for h in hypotheses)
        scores = {
            "bleu": round(sacrebleu.corpus_bleu(hypotheses, [references]).score, 2),
            "chrf": round(sacrebleu.corpus_chrf(hypotheses, [references]).score, 2),
        }
        if split == "valid":
            return {"valid_bleu": scores["bleu"]}
        return dict(scores, **speed)

    def save_record(self, name, record):
        os.makedirs(self.path("eval"), exist_ok=True)
        with open(self.path("eval", f"{name}.json"), "w") as f:
            json.dump(record, f, indent=2)
        log(f"    {name}: test BLEU {record['bleu']}, chrF {record['chrf']}, {record['sentences_per_s']} sentences/s")

    def records(self):
        """The evaluated systems' records, in table order; once the timing stage has run for all of them,
        each one's speed is the median of its timing runs (``speed_runs`` lists them)."""
        names = ["teacher", *STUDENTS, "ctranslate2_int8"]
        found = []
        for name in names:
            path = self.path("eval", f"{name}.json")
            if os.path.exists(path):
                with open(path) as f:
                    found.append(json.load(f))
        runs = {}
        if os.path.exists(self.path("timing", "runs.json")):
            with open(self.path("timing", "runs.json")) as f:
                runs = json.load(f)
        if runs and all(record["name"] in runs for record in found):  # else timed before a system was added
            for record in found:
                record["speed_runs"] = runs[record["name"]]
                for key in ("sentences_per_s", "tokens_per_s"):
                    record[key] = round(statistics.median(run[key] for run in runs[record["name"]]), 2)
        return found

    @staticmethod
    def speed_note(records):
        rounds = {len(r["speed_runs"]) for r in records if "speed_runs" in r}
        if rounds:
            return f"speeds: median of {max(rounds)} translations of the test split, all systems by turns"
        return "speeds: one translation of the test split, at each system's evaluation"

    def ctranslate2(self):
        """The student with the best valid BLEU (the test split chooses nothing), in CTranslate2 int8."""
        from ..checkpoints import export_ctranslate2

        students = [r for r in self.records() if r["name"] in STUDENTS]
        best = max(students, key=lambda r: r["valid_bleu"])
        output = self.path("models", "ctranslate2_int8")
        export_ctranslate2(self.path("models", f"{best['name']}.pt"), self.path("data-bin"), output, "int8", SRC, TGT)
        record = {
            "name": "ctranslate2_int8",
            "method": f"{best['name']} in CTranslate2 int8",
            "params": best["params"],
            "size_mb": round(sum(os.path.getsize(os.path.join(output, f)) for f in os.listdir(output)) / 2**20, 2),
        }
        for split in ("valid", "test"):
            hypotheses, speed = self.translate_ctranslate2(split)
            record.update(self.score("ctranslate2_int8", split, hypotheses, speed))
        self.save_record("ctranslate2_int8", record)

    def translate_ctranslate2(self, split):
        """OUT/models/ctranslate2_int8 translating one split under fairseq-generate's conditions, with the
        machine's cores; returns the detokenized hypotheses and the speed (translation only, as fairseq-generate
        measures it). The translator is freed afterwards: its threads must not compete with what runs next."""
        import ctranslate2
        import sentencepiece as spm

        translator = ctranslate2.Translator(
            self.path("models", "ctranslate2_int8"), device="cpu", compute_type="int8", intra_threads=os.cpu_count() or 1
        )
        sources = [line.split() for line in read_lines(self.path("tok", f"{split}.{SRC}"))]
        start = time.perf_counter()
        outputs = translate_like_fairseq(translator, sources, self.preset)
        seconds = time.perf_counter() - start
        del translator
        tokens = sum(len(o) + 1 for o in outputs)  # + </s>, as fairseq-generate counts
        speed = {"sentences_per_s": round(len(sources) / seconds, 2), "tokens_per_s": round(tokens / seconds, 2)}
        processor = spm.SentencePieceProcessor(model_file=self.path("spm.model"))
        return [processor.decode(o) for o in outputs], speed

    # ---- timing ------------------------------------------------------------------------------------

    def timing(self):
        """Every system translates the test split TIMING_ROUNDS more times, by turns (round r starts with
        the r-th system, so that none is always first or last), each fairseq model in a fresh
        fairseq-generate; a system's speed becomes the median of these runs (OUT/timing/runs.json). The
        evaluation times each system once, minutes apart from the others, and on a shared machine two such
        runs can differ by 30%."""
        names = [r["name"] for r in self.records()]
        test_size = count_lines(self.path("raw", f"test.{SRC}"))
        runs = {name: [] for name in names}
        rounds = self.timing_rounds
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                if name == "ctranslate2_int8":
                    hypotheses, speed = self.translate_ctranslate2("test")
                else:
                    hypotheses, speed = self.generate(name, "test", f"timing_{name}")
                if len(hypotheses) != test_size or None in hypotheses:
                    raise DemoError(f"timing: {name} did not translate all {test_size} test sentences")
                runs[name].append(speed)
            log(
                f"    round {r + 1}/{rounds}, sentences/s: "
                + ", ".join(f"{n} {runs[n][-1]['sentences_per_s']}" for n in names)
            )
        os.makedirs(self.path("timing"), exist_ok=True)
        with open(self.path("timing", "runs.json"), "w") as f:
            json.dump(runs, f, indent=2)

    # ---- report ------------------------------------------------------------------------------------

    def report(self):
        records = self.records()
        with open(self.path("results.json"), "w") as f:
            json.dump({"preset": self.preset_name, "speeds": self.speed_note(records), "systems": records}, f, indent=2)
        table = results_table(records)
        with open(self.path("results.md"), "w") as f:
            f.write(f"Preset `{self.preset_name}`; test split; beam {self.preset['beam']}, batch "
                    f"{self.preset['eval_batch_size']} sentences, CPU; {self.speed_note(records)}.\n\n{table}")  # fmt: skip
        plot(records, self.path("bleu_vs_speed.png"))
        log("\n" + table + f"({self.speed_note(records)})")
        log(f"written: {self.path('results.json')}, {self.path('results.md')}, {self.path('bleu_vs_speed.png')}")


COLUMNS = (
    ("system", "name"),
    ("method", "method"),
    ("BLEU", "bleu"),
    ("chrF", "chrf"),
    ("valid BLEU", "valid_bleu"),
    ("sentences/s", "sentences_per_s"),
    ("tokens/s", "tokens_per_s"),
    ("params", "params"),
    ("MB", "size_mb"),
)


def results_table(records):
    lines = ["| " + " | ".join(title for title, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in records:
        cells = [f"{r[key]:,}" if key == "params" else str(r[key]) for _, key in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def translate_like_fairseq(translator, sources, preset):
    """CTranslate2 beam search under fairseq-generate's conditions: batches of sentences of similar length
    (fairseq's order: by source length) and fairseq's length bound per batch, max_len_a * the batch's longest
    source (with its </s>) + max_len_b tokens, plus </s>. Returns the best hypothesis of each source, in
    order."""
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    outputs = [None] * len(sources)
    size = preset["eval_batch_size"]
    for b in range(0, len(order), size):
        batch = order[b : b + size]
        longest = max(len(sources[i]) for i in batch) + 1
        results = translator.translate_batch(
            [sources[i] for i in batch],
            beam_size=preset["beam"],
            max_batch_size=size,
            max_decoding_length=int(preset["max_len_a"] * longest + preset["max_len_b"]) + 1,
        )
        for i, result in zip(batch, results):
            outputs[i] = result.hypotheses[0]
    return outputs


def plot(records, path):
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # before its import, which logs
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in records:
        ax.scatter(r["sentences_per_s"], r["bleu"], color="tab:red" if r["name"] == "teacher" else "tab:blue")
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.1)  # room for the labels of the outermost points
    ax.set_xlabel("test sentences per second (log scale)")
    ax.set_ylabel("test BLEU")
    ax.set_title("BLEU against translation speed")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    ax.autoscale_view()
    to_points = 72 / fig.dpi
    points = [tuple(v * to_points for v in ax.transData.transform((r["sentences_per_s"], r["bleu"]))) for r in records]
    bounds = tuple(v * to_points for v in ax.bbox.extents)
    for r, (dx, dy, align) in zip(records, label_offsets([r["name"] for r in records], points, bounds)):
        arrow = dict(arrowstyle="-", color="0.6", lw=0.5) if dy < -20 else None  # a label placed further down
        ax.annotate(r["name"], (r["sentences_per_s"], r["bleu"]), textcoords="offset points", xytext=(dx, dy),
                    ha=align, fontsize=8, arrowprops=arrow)  # fmt: skip
    fig.savefig(path, dpi=120)
    plt.close(fig)


def label_offsets(names, points, bounds, fontsize=8):
    """Where to write the labels NAMES of the points POINTS (positions in points; BOUNDS: the axes as
    (x0, y0, x1, y1) in points) so that no label covers another label or a point or leaves the axes: each
    label goes up and to the right of its point, else to its first free place among below right, up left,
    below left and further down on the right (the labels of higher points are placed first). Returns
    (dx, dy, horizontal alignment) per label, the offsets in points."""
    width, height, gap, radius = 0.62 * fontsize, 1.3 * fontsize, 4, 4  # generous for a sans-serif font
    taken = [(x - radius, y - radius, x + radius, y + radius) for x, y in points]
    candidates = [(gap, gap), (gap, -gap - height), (-gap, gap), (-gap, -gap - height)]
    candidates += [(gap, -gap - k * height) for k in range(2, 8)]

    def box(x, y, w, dx, dy):
        return (x + dx, y + dy, x + dx + w, y + dy + height) if dx > 0 else (x + dx - w, y + dy, x + dx, y + dy + height)

    def free(b):
        inside = bounds[0] <= b[0] and b[2] <= bounds[2] and bounds[1] <= b[1] and b[3] <= bounds[3]
        return inside and not any(b[0] < t[2] and t[0] < b[2] and b[1] < t[3] and t[1] < b[3] for t in taken)

    offsets = [None] * len(names)
    for i in sorted(range(len(names)), key=lambda i: -points[i][1]):
        (x, y), w = points[i], width * len(names[i])
        dx, dy = next((c for c in candidates if free(box(x, y, w, *c))), candidates[0])
        taken.append(box(x, y, w, dx, dy))
        offsets[i] = (dx, dy, "left" if dx > 0 else "right")
    return offsets


TRANSLATED = re.compile(
    r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s \(([\d.]+) sentences/s, ([\d.]+) tokens/s\)"
)


def read_generate_log(path):
    """The detokenized hypotheses (D- lines) of the last fairseq-generate run in a log, in corpus order (None
    for a sentence without one), and the speed fairseq-generate measured."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    text = text[text.rfind("\n$ ") :]
    hypotheses = {}
    for line in text.splitlines():
        if line.startswith("D-"):
            head, _, hypothesis = line.split("\t", 2) if line.count("\t") >= 2 else (line, "", "")
            hypotheses[int(head[2:])] = hypothesis
    match = TRANSLATED.search(text)
    if not match:
        raise DemoError(f"no 'Translated ... sentences' line in {path}")
    speed = {"sentences_per_s": float(match[4]), "tokens_per_s": float(match[5])}
    return [hypotheses.get(i) for i in range(max(hypotheses, default=-1) + 1)], speed


def repair_last_checkpoint(save_dir):
    """fairseq writes its first checkpoint of a save atomically but *copies* it to checkpoint_last.pt (and
    checkpoint_best.pt): a run stopped during that copy leaves a truncated checkpoint_last.pt, from which
    fairseq-train cannot resume ("failed finding central directory"). Such a file is moved aside to
    checkpoint_last.pt.incomplete and replaced by the newest complete interval checkpoint of SAVE_DIR, so
    that the rerun resumes from there (it loses the updates since that save, at most --save-interval-updates);
    without one, training starts again. Returns the checkpoint resumed from, or None."""
    last = os.path.join(save_dir, "checkpoint_last.pt")
    if not os.path.exists(last) or zipfile.is_zipfile(last):
        return None
    os.replace(last, last + ".incomplete")
    interval = []
    for name in os.listdir(save_dir):
        match = re.fullmatch(r"checkpoint_\d+_(\d+)\.pt", name)
        if match and zipfile.is_zipfile(os.path.join(save_dir, name)):
            interval.append((int(match.group(1)), name))
    if not interval:
        log(f"    note: {last} was incomplete (the run stopped while fairseq was writing it) and there is no")
        log(f"    complete interval checkpoint to resume from: training starts again (the file is kept as {last}.incomplete)")
        return None
    source = os.path.join(save_dir, max(interval)[1])
    shutil.copyfile(source, last + ".tmp")
    os.replace(last + ".tmp", last)
    log(f"    note: {last} was incomplete (the run stopped while fairseq was writing it; kept as")
    log(f"    {last}.incomplete): resuming from {os.path.basename(source)} instead")
    return source


def checkpoint_updates(path):
    """The number of updates a fairseq checkpoint was saved at, or None without one."""
    import torch

    if not os.path.exists(path):
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state["optimizer_history"][-1]["num_updates"]


def last_update(log_path):
    with open(log_path, errors="replace") as f:
        found = re.findall(r"num_updates[=\s](\d+)", f.read()[-20000:])
    return int(found[-1]) if found else None


def count_parameters(checkpoint):
    """Parameters of a fairseq checkpoint's model, each shared tensor counted once."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    seen, total = set(), 0
    for tensor in state.values():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key not in seen and tensor.is_floating_point():
            seen.add(key)
            total += tensor.numel()
    return total


def size_mb(path):
    return round(os.path.getsize(path) / 2**20, 2)


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def count_lines(path):
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def check_data_dir(data):
    """``--data DIR`` must hold {train,valid,test}.{de,en}, UTF-8, with the same number of lines per split."""
    if not os.path.isdir(data):
        raise DemoError(f"--data {data}: no such directory (it must hold {{train,valid,test}}.{{{SRC},{TGT}}})")
    for split in SPLITS:
        counts = {}
        for lang in (SRC, TGT):
            path = os.path.join(data, f"{split}.{lang}")
            if not os.path.isfile(path):
                raise DemoError(f"--data {data}: {split}.{lang} is missing (needed: {{train,valid,test}}.{{{SRC},{TGT}}})")
            with open(path, "rb") as f:
                raw = f.read()
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                line = raw[: e.start].count(b"\n") + 1
                raise DemoError(f"--data {data}: {split}.{lang} line {line} is not UTF-8") from None
            counts[lang] = raw.count(b"\n") + (0 if raw.endswith(b"\n") or not raw else 1)
        if counts[SRC] != counts[TGT]:
            raise DemoError(f"--data {data}: {split}.{SRC} has {counts[SRC]} lines but {split}.{TGT} {counts[TGT]}")
        if counts[SRC] == 0:
            raise DemoError(f"--data {data}: {split}.{SRC} is empty")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="default", help=f"one of {', '.join(PRESETS)} (default: default)")
    parser.add_argument("--data", help="a directory with {train,valid,test}.{de,en} instead of the gettext catalogs")
    parser.add_argument(
        "--timing-rounds",
        type=int,
        help="time every system this many more times by turns, speeds the medians (default: the preset's: "
        + ", ".join(f"{name} {p['timing_rounds']}" for name, p in PRESETS.items())
        + "); works on a finished run too",
    )
    parser.add_argument(
        "--out", help="output directory; a rerun resumes in it (default: runs/demo, or runs/demo-PRESET for other presets)"
    )
    args = parser.parse_args(argv)
    if not args.out:
        args.out = "runs/demo" if args.preset == "default" else f"runs/demo-{args.preset}"
    try:
        Pipeline(args.out, args.preset, args.data, args.timing_rounds).run()
    except (DemoError, CorpusError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
