"""How much faster a student translates than its teacher with fairseq's beam search, by model shape.

fairseq-generate's speed ratio between a teacher and a student is bounded by what each decoding step costs
them: the decoder layers (the encoder runs once per sentence) plus the projection onto the vocabulary, which
a student of the teacher's width and vocabulary must keep. This measures it directly: models of the given
shapes (random weights: the cost of a step does not depend on them) translate the same batches with
fairseq's SequenceGenerator, every hypothesis forced to the same length (min_len = max_len), so that every
shape runs the same number of steps and only the cost of a step differs.

    python benchmarks/decode_speed.py        # writes benchmarks/results/decode_speed_cpu.{json,md}

The defaults are the demo's: 1,296 sentences (its test split's size) of 16 source tokens, translated into
12 tokens, beam 4, batches of 64, on the CPU with the machine's cores. Each shape is
LAYERS_ENC+LAYERS_DEC/WIDTH/FFN/VOCAB; the first one listed is the teacher the others are compared with.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
from fairseq import models, options, tasks
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.sequence_generator import SequenceGenerator

SHAPES = [
    # the full preset's teacher and student
    "6+6/128/512/4000",
    "2+1/128/512/4000",
    # deeper encoders cost little: the encoder runs once per sentence
    "6+1/128/512/4000",
    # a smaller vocabulary shrinks the projection every step pays
    "6+6/128/512/2000",
    "2+1/128/512/2000",
    # a teacher whose layers weigh more against the projection
    "6+6/128/1024/4000",
    "2+1/128/1024/4000",
    "6+6/256/1024/4000",
    "2+1/256/1024/4000",
]


def parse_shape(text):
    try:
        layers, width, ffn, vocab = text.split("/")
        enc, dec = layers.split("+")
        return dict(encoder_layers=int(enc), decoder_layers=int(dec), width=int(width), ffn=int(ffn), vocab=int(vocab))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not ENC+DEC/WIDTH/FFN/VOCAB, e.g. 6+6/128/512/4000")


def dictionary(vocab):
    d = Dictionary()
    for i in range(vocab - len(d)):
        d.add_symbol(f"w{i}")
    return d


def build_model(shape, d, tmp):
    d.save(os.path.join(tmp, "dict.src.txt"))
    d.save(os.path.join(tmp, "dict.tgt.txt"))
    heads = max(1, shape["width"] // 32)
    args = options.parse_args_and_arch(
        options.get_training_parser(),
        [
            tmp, "--task", "translation", "--source-lang", "src", "--target-lang", "tgt",
            "--arch", "transformer", "--share-all-embeddings",
            "--encoder-layers", str(shape["encoder_layers"]), "--decoder-layers", str(shape["decoder_layers"]),
            "--encoder-embed-dim", str(shape["width"]), "--decoder-embed-dim", str(shape["width"]),
            "--encoder-ffn-embed-dim", str(shape["ffn"]), "--decoder-ffn-embed-dim", str(shape["ffn"]),
            "--encoder-attention-heads", str(heads), "--decoder-attention-heads", str(heads),
        ],
    )  # fmt: skip
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    return models.build_model(cfg.model, task).eval()


def batches(d, sentences, source_length, batch_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, sentences, batch_size):
        n = min(batch_size, sentences - start)
        tokens = torch.randint(d.nspecial, len(d), (n, source_length), generator=g)
        tokens[:, -1] = d.eos()
        out.append(
            {
                "id": torch.arange(start, start + n),
                "net_input": {"src_tokens": tokens, "src_lengths": torch.full((n,), source_length)},
            }
        )
    return out


@torch.no_grad()
def translate_all(generator, model, samples):
    steps = 0
    for sample in samples:
        hypos = generator.generate([model], sample)
        steps += sum(len(h[0]["tokens"]) for h in hypos)
    return steps


def measure(shapes, args, tmp):
    """Per shape: params and the times of translating all sentences, run by turns (every repeat runs each
    shape once) so that a slower or faster spell of the machine falls on all shapes alike."""
    runs = []
    for shape in shapes:
        d = dictionary(shape["vocab"])
        torch.manual_seed(0)
        model = build_model(shape, d, tmp)
        generator = SequenceGenerator(
            [model], d, beam_size=args.beam, max_len_a=0, max_len_b=args.output_length, min_len=args.output_length
        )
        samples = batches(d, args.sentences, args.source_length, args.batch_size)
        translate_all(generator, model, samples[:2])  # warm up
        runs.append((model, generator, samples, []))
    expected = args.sentences * (args.output_length + 1)  # + EOS
    for _ in range(args.repeats):
        for shape, (model, generator, samples, times) in zip(shapes, runs):
            start = time.perf_counter()
            tokens = translate_all(generator, model, samples)
            times.append(time.perf_counter() - start)
            if tokens != expected:
                raise RuntimeError(f"{shape}: translations have {tokens} tokens in all, not the forced {expected}")
    results = []
    for model, _, _, times in runs:
        seconds = statistics.median(times)
        results.append(
            {
                "params": sum(p.numel() for p in model.parameters()),
                "seconds": seconds,
                "sentences_per_s": args.sentences / seconds,
                "tokens_per_s": expected / seconds,
                "times": times,
            }
        )
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=[parse_shape(s) for s in SHAPES])
    parser.add_argument("--sentences", type=int, default=1296)
    parser.add_argument("--source-length", type=int, default=16)
    parser.add_argument("--output-length", type=int, default=12)
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape, result in zip(args.shapes, measure(args.shapes, args, tmp)):
            name = f"{shape['encoder_layers']}+{shape['decoder_layers']}/{shape['width']}/{shape['ffn']}/{shape['vocab']}"
            rows.append(dict(shape=name, **shape, **result))

    # each shape against the teacher of its vocabulary and width: the first shape of the list with
    # both, and with more decoder layers
    for row in rows:
        teachers = [
            t
            for t in rows
            if t["vocab"] == row["vocab"]
            and t["width"] == row["width"]
            and t["ffn"] == row["ffn"]
            and t["decoder_layers"] > row["decoder_layers"]
        ]
        row["teacher"] = teachers[0]["shape"] if teachers else None
        row["speedup"] = row["sentences_per_s"] / teachers[0]["sentences_per_s"] if teachers else None

    record = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("shapes", "out")},
        "rows": rows,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "decode_speed_cpu.json"), "w") as f:
        json.dump(record, f, indent=1)
    lines = [
        f"Beam {args.beam}, batches of {args.batch_size}, {args.sentences} sentences of {args.source_length} source "
        f"tokens, every translation forced to {args.output_length} tokens; fairseq SequenceGenerator, CPU "
        f"({os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}), median of "
        f"{args.repeats} runs, taken by turns. Shape: encoder+decoder layers / width / FFN / vocabulary.",
        "",
        "| shape | params | sentences/s | speed-up over | |",
        "|---|---:|---:|---|---:|",
    ]
    for row in rows:
        speedup = f"{row['speedup']:.2f}x" if row["speedup"] else ""
        lines.append(
            f"| {row['shape']} | {row['params']:,} | {row['sentences_per_s']:.1f} | {row['teacher'] or ''} | {speedup} |"
        )
    with open(os.path.join(args.out, "decode_speed_cpu.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
