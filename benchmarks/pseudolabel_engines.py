"""Pseudo-labelling speed and label quality of the two engines of ``fairseq-kd-pseudolabel``.

Each engine translates the same transfer set (a binarized split of the teacher's data-bin) with the same
beam, batches (``--max-tokens``) and length bound; this reads back from each run its decoding speed (the
sentences/s of the decoding steps, as fairseq-generate measures them), the command's wall-clock time
(start-up, conversion, merging and binarizing included), and the BLEU and chrF of its labels against the
references (sacreBLEU, detokenized; on the sentences every engine kept), plus the BLEU of each engine's
labels against fairseq's.

    python benchmarks/pseudolabel_engines.py --teacher runs/demo-full/teacher/checkpoint_best.pt \\
        --data runs/demo-full/data-bin --subset train --out runs/pseudolabel-engines \\
        --results benchmarks/results/pseudolabel_engines_full.json

An engine whose run is already complete in OUT/ENGINE is not run again (its wall time is the one recorded
then); ``--reuse fairseq=DIR`` takes an earlier fairseq-engine run of the same settings (its wall time is
then unknown).
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

BIN = os.path.dirname(sys.executable)
ENGINES = {
    "fairseq": [],
    "ctranslate2-float32": ["--engine", "ctranslate2", "--quantization", "float32"],
    "ctranslate2-int8": ["--engine", "ctranslate2", "--quantization", "int8"],
}


def run_engine(args, name, out):
    summary = os.path.join(out, "summary.json")
    timing = os.path.join(out, "wall_seconds.json")
    if not os.path.isfile(summary):
        cmd = [os.path.join(BIN, "fairseq-kd-pseudolabel"), "--teacher", args.teacher, "--data", args.data,
               "--subset", args.subset, "--output", out, "--beam", str(args.beam), "--max-tokens", str(args.max_tokens),
               "--cpu"] + ENGINES[name] + (["--threads", str(args.threads)] if ENGINES[name] else [])  # fmt: skip
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with open(timing, "w") as f:
            json.dump({"wall_seconds": round(time.perf_counter() - start, 1), "command": " ".join(cmd)}, f)
    with open(summary) as f:
        result = json.load(f)
    if "decoding" not in result:
        # a run of a version that did not record it: fairseq-generate's own line, in the shards' output or,
        # for a stage of the pipeline, in its log (RUN/logs/pseudolabels.log beside RUN/pseudolabels)
        log = os.path.join(os.path.dirname(os.path.abspath(out)), "logs", os.path.basename(os.path.abspath(out)) + ".log")
        result["decoding"] = generate_speed([os.path.join(out, "shards"), log])
    if os.path.isfile(timing):
        with open(timing) as f:
            result.update(json.load(f))
    return result


def generate_speed(places):
    """{"sentences", "seconds", "sentences_per_s"} summed over fairseq-generate's "Translated ..." lines in
    the first of PLACES (a directory of shards' generate-*.txt, or a log file) that has any."""
    for place in places:
        files = [os.path.join(r, n) for r, _, names in os.walk(place) for n in names if n.startswith("generate-")]
        sentences = seconds = 0
        for path in files if os.path.isdir(place) else [place] if os.path.isfile(place) else []:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    m = re.search(r"Translated ([\d,]+) sentences .* in ([\d.]+)s", line)
                    if m:
                        sentences += int(m[1].replace(",", ""))
                        seconds += float(m[2])
        if seconds:
            return {"sentences": sentences, "seconds": round(seconds, 2), "sentences_per_s": round(sentences / seconds, 2)}
    return {}


def labels(out, tgt):
    with open(os.path.join(out, "train.ids")) as f:
        ids = [int(i) for i in f]
    with open(os.path.join(out, f"train.{tgt}"), encoding="utf-8") as f:
        return dict(zip(ids, f.read().splitlines()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--subset", default="train")
    parser.add_argument("--engines", default="fairseq,ctranslate2-float32,ctranslate2-int8")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=0, help="fairseq-kd-pseudolabel --threads (0: every core)")
    parser.add_argument("--reuse", action="append", default=[], help="ENGINE=DIR: an earlier complete run")
    parser.add_argument("--out", required=True)
    parser.add_argument("--results", required=True, help="the JSON file to write (and a .md beside it)")
    args = parser.parse_args()

    import sacrebleu
    from fairseq.data import Dictionary, data_utils

    src, tgt = data_utils.infer_language_pair(args.data)
    reuse = dict(r.split("=", 1) for r in args.reuse)
    runs = {}
    for name in args.engines.split(","):
        out = reuse.get(name) or os.path.join(args.out, name)
        runs[name] = (out, run_engine(args, name, out))

    tgt_dict = Dictionary.load(os.path.join(args.data, f"dict.{tgt}.txt"))
    references = data_utils.load_indexed_dataset(os.path.join(args.data, f"{args.subset}.{src}-{tgt}.{tgt}"), tgt_dict)
    post = "sentencepiece" if any(s.startswith("\u2581") for s in tgt_dict.symbols) else None
    detok = (lambda t: data_utils.post_process(t, post)) if post else (lambda t: t)  # noqa: E731
    hypotheses = {name: labels(out, tgt) for name, (out, _) in runs.items()}
    common = sorted(set.intersection(*(set(h) for h in hypotheses.values())))
    refs = [detok(tgt_dict.string(references[i])) for i in common]
    first = next(iter(hypotheses))
    table = []
    for name, (out, summary) in runs.items():
        hyps = [detok(hypotheses[name][i]) for i in common]
        row = {
            "engine": name,
            "sentences_per_s": summary.get("decoding", {}).get("sentences_per_s"),
            "decoding_seconds": summary.get("decoding", {}).get("seconds"),
            "wall_seconds": summary.get("wall_seconds"),
            "kept": summary["kept"],
            "bleu_vs_references": round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2),
            "chrf_vs_references": round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2),
            f"bleu_vs_{first}": round(sacrebleu.corpus_bleu(hyps, [[detok(hypotheses[first][i]) for i in common]]).score, 2),
            "identical_to_" + first: round(sum(hypotheses[name][i] == hypotheses[first][i] for i in common) / len(common), 4),
            "output": os.path.abspath(out),
        }
        if name != first and row["sentences_per_s"] and table[0]["sentences_per_s"]:
            row["speedup"] = round(row["sentences_per_s"] / table[0]["sentences_per_s"], 2)
        table.append(row)
    result = {
        "teacher": os.path.abspath(args.teacher),
        "data": os.path.abspath(args.data),
        "subset": args.subset,
        "transfer_sentences": runs[first][1]["transfer_sentences"],
        "sentences_compared": len(common),
        "beam": args.beam,
        "max_tokens": args.max_tokens,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "ctranslate2_threads": args.threads,
        "command": " ".join(sys.argv),
        "engines": table,
    }
    with open(args.results, "w") as f:
        json.dump(result, f, indent=2)
    keys = list(table[0])[:-1] + ["speedup"]
    md = [f"# Pseudo-labelling engines: {args.subset} of {args.data} ({len(common)} sentences compared)", "",
          "Made by: `" + result["command"] + "`", "",
          "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]  # fmt: skip
    md += ["| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in table]
    with open(os.path.splitext(args.results)[0] + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
