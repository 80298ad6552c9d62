"""Decoding speed of one exported model by runtime, weight type and thread count, taken by turns.

    python benchmarks/ct2_threads.py --model runs/demo/models/init_seq_kd.pt --data-bin runs/demo/data-bin \
        -s de -t en --rounds 4 --out benchmarks/results/ct2_threads

Translates the split in fairseq-generate (torch threads 1 .. cores, via OMP_NUM_THREADS) and in CTranslate2
(float32 and int8, ``intra_threads`` 1 .. cores) with fairseq_kd's shared settings (beam 4, batches of 64
sentences, length bound 1.5 x source + 10). Every configuration runs ROUNDS times, by turns; the medians are
reported. What each timer includes: fairseq-generate's own "Translated ... in Xs" (its inference steps, not
loading), CTranslate2's ``translate_batch`` calls (not loading, not detokenising).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fairseq_kd import ct2  # noqa: E402
from fairseq_kd.checkpoints import export_ctranslate2  # noqa: E402
from fairseq_kd.io import write_json, write_text  # noqa: E402

BEAM, BATCH, MAX_LEN_A, MAX_LEN_B = 4, 64, 1.5, 10


def fairseq_speed(args, threads):
    cmd = [os.path.join(os.path.dirname(sys.executable), "fairseq-generate"), args.data_bin, "--path", args.model,
           "--gen-subset", args.split, "--beam", str(BEAM), "--batch-size", str(BATCH), "--max-len-a", str(MAX_LEN_A),
           "--max-len-b", str(MAX_LEN_B), "--cpu", "-s", args.source_lang, "-t", args.target_lang]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    match = re.search(r"Translated ([\d,]+) sentences .* \(([\d.]+) sentences/s", out.stdout + out.stderr)
    if out.returncode or not match:
        raise RuntimeError(f"fairseq-generate failed:\n{out.stderr[-2000:]}")
    return float(match[2])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an exported model (fairseq-kd-export)")
    parser.add_argument("--data-bin", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("-s", "--source-lang", required=True)
    parser.add_argument("-t", "--target-lang", required=True)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args()

    import ctranslate2
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(os.path.join(args.data_bin, f"dict.{args.source_lang}.txt"))
    prefix = os.path.join(args.data_bin, f"{args.split}.{args.source_lang}-{args.target_lang}.{args.source_lang}")
    dataset = data_utils.load_indexed_dataset(prefix, dictionary)
    sources = [[dictionary[i] for i in dataset[k][:-1].tolist()] for k in range(len(dataset))]
    cores = os.cpu_count() or 1
    work = tempfile.mkdtemp(prefix="ct2_threads_")
    translators, configs = {}, []
    for weights in ("float32", "int8"):
        path = export_ctranslate2(args.model, args.data_bin, os.path.join(work, weights), weights,
                                  args.source_lang, args.target_lang)  # fmt: skip
        for threads in range(1, cores + 1):
            translators[("ctranslate2", weights, threads)] = ctranslate2.Translator(
                path, device="cpu", compute_type="default", intra_threads=threads
            )
    configs = [("fairseq", "float32", t) for t in range(1, cores + 1)] + list(translators)
    runs = {c: [] for c in configs}
    for r in range(args.rounds):
        for config in configs[r % len(configs) :] + configs[: r % len(configs)]:
            if config[0] == "fairseq":
                runs[config].append(fairseq_speed(args, config[2]))
            else:
                _, seconds = ct2.translate(translators[config], sources, beam=BEAM, batch_size=BATCH,
                                           max_len_a=MAX_LEN_A, max_len_b=MAX_LEN_B)  # fmt: skip
                runs[config].append(round(len(sources) / seconds, 1))
        print(f"round {r + 1}/{args.rounds}", flush=True)
    rows = [
        {"runtime": c[0], "weights": c[1], "threads": c[2], "median_sentences_per_s": statistics.median(v), "runs": v}
        for c, v in runs.items()
    ]
    write_json(args.out + ".json", {
        "command": " ".join(sys.argv), "model": args.model, "split": args.split, "sentences": len(sources),
        "cores": cores, "beam": BEAM, "batch_size": BATCH, "rounds": args.rounds, "results": rows,
    })  # fmt: skip
    lines = [
        f"Decoding speed of {args.model} on {args.split} ({len(sources)} sentences), beam {BEAM}, batches of {BATCH}, "
        f"{cores} cores; median of {args.rounds} runs taken by turns. Command: `{' '.join(sys.argv)}`.",
        "",
        "| runtime | weights | threads | sentences/s (median) | runs |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['runtime']} | {r['weights']} | {r['threads']} | {r['median_sentences_per_s']:.0f} | "
              f"{', '.join(f'{x:.0f}' for x in r['runs'])} |" for r in rows]  # fmt: skip
    write_text(args.out + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
