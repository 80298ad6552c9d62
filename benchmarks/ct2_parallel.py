"""CTranslate2 on the CPU: batch size, intra-op threads and parallel batches, for one model.

    python benchmarks/ct2_parallel.py --model runs/pseudolabel-engines/ctranslate2-float32/ctranslate2-teacher \\
        --data-bin runs/guide-full/data-bin -s de --subset train --sentences 4000 \\
        --out benchmarks/results/ct2_parallel

Translates the same random sample of a binarized split (beam 4, fairseq-generate's length bound 1.5 x source
+ 10) under each setting: batches cut as fairseq-generate cuts them (by --max-tokens or sentences), one
batch at a time on 1 or 2 intra-op threads, or several batches at once (inter_threads), one thread each.
Speed is sentences over the wall time of the whole translation, model loading excluded; each setting runs
once, in the order listed (a quick survey, not a timing with rounds).
"""

import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fairseq_kd import ct2  # noqa: E402
from fairseq_kd.io import write_json, write_text  # noqa: E402

# (parallel batches, intra-op threads, --max-tokens, --batch-size)
SETTINGS = [
    (1, 1, 8000, None),
    (1, 1, None, 64),
    (1, 1, None, 16),
    (1, 1, 2000, None),
    (1, 2, None, 64),
    (2, 1, None, 64),
    (2, 1, 8000, None),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a CTranslate2 model directory")
    parser.add_argument("--data-bin", required=True)
    parser.add_argument("-s", "--source-lang", required=True)
    parser.add_argument("--subset", default="train")
    parser.add_argument("--sentences", type=int, default=4000)
    parser.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args()

    from fairseq.data import Dictionary, data_utils

    src = args.source_lang
    pair = next(
        n[len(args.subset) + 1 :].split(".")[0]
        for n in os.listdir(args.data_bin)
        if n.startswith(args.subset + ".") and n.endswith(f".{src}.idx")
    )
    dictionary = Dictionary.load(os.path.join(args.data_bin, f"dict.{src}.txt"))
    dataset = data_utils.load_indexed_dataset(os.path.join(args.data_bin, f"{args.subset}.{pair}.{src}"), dictionary)
    sample = random.Random(0).sample(range(len(dataset)), min(args.sentences, len(dataset)))
    sources = [[dictionary[t] for t in dataset[i][:-1].tolist()] for i in sample]
    rows, reference = [], None
    for parallel, threads, max_tokens, batch_size in SETTINGS:
        translator = ct2.translator(args.model, "cpu", threads, parallel=parallel)
        start = time.perf_counter()
        outputs, _ = ct2.translate(
            translator, sources, beam=4, max_len_a=1.5, max_len_b=10, max_tokens=max_tokens, batch_size=batch_size
        )
        seconds = time.perf_counter() - start
        del translator
        hyps = [o.tokens[0] for o in outputs]
        reference = reference or (max_tokens, batch_size, hyps)
        row = {"parallel_batches": parallel, "intra_threads": threads, "max_tokens": max_tokens, "batch_size": batch_size,
               "seconds": round(seconds, 2), "sentences_per_s": round(len(sources) / seconds, 1)}  # fmt: skip
        if (max_tokens, batch_size) == reference[:2]:
            row["same_outputs_as_first_row"] = hyps == reference[2]
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_json(args.out + ".json", {"command": " ".join(sys.argv), "model": os.path.abspath(args.model), "sentences": len(sources),
                                    "cpus": os.cpu_count(), "settings": rows})  # fmt: skip
    lines = [f"CTranslate2 on {os.cpu_count()} CPU cores, {len(sources)} sentences of {args.subset}, beam 4. Command: `{' '.join(sys.argv)}`.", "",
             "| parallel batches | intra-op threads | batches of | sentences/s | same outputs as the first row |", "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        cut = f"{r['max_tokens']} tokens" if r["max_tokens"] else f"{r['batch_size']} sentences"
        lines.append(
            f"| {r['parallel_batches']} | {r['intra_threads']} | {cut} | {r['sentences_per_s']} | {r.get('same_outputs_as_first_row', '')} |"
        )
    write_text(args.out + ".md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
