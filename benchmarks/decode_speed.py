"""How much faster a student translates than its teacher with fairseq's beam search, by model shape.

fairseq-generate's speed ratio between a teacher and a student is bounded by what each decoding step costs
them: the decoder layers (the encoder runs once per sentence) plus the projection onto the vocabulary, which
a student of the teacher's width and vocabulary must keep. This measures it directly: models of the given
shapes (random weights: the cost of a step does not depend on them) translate the same batches with
fairseq's SequenceGenerator, every hypothesis forced to the same length (min_len = max_len), so that every
shape runs the same number of steps and only the cost of a step differs.

    python benchmarks/decode_speed.py        # writes benchmarks/results/decode_speed_cpu.{json,md}
    python benchmarks/decode_speed.py --device cuda --ctranslate2 int8_float16 float16 --name decode_speed_cuda

With ``--ctranslate2 TYPE ...`` every shape is also converted to CTranslate2 (each weight type) and timed
there on the same sentences, the output length forced the same way (min = max decoding length), one
translate_batch call per batch of the same size.

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
from fairseq import models, options, tasks, utils
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.sequence_generator import SequenceGenerator

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SHAPES = [
    # the former full preset's teacher and its student
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
    return models.build_model(cfg.model, task).eval(), args


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


def to_ctranslate2(model, args_namespace, d, tmp, weights):
    """The random model as a CTranslate2 model of WEIGHTS, through the export's own conversion."""
    from fairseq_kd.checkpoints import export_ctranslate2

    path = os.path.join(tmp, "model.pt")
    model_cfg = {k: v for k, v in vars(args_namespace).items() if isinstance(v, (int, float, str, bool, type(None)))}
    torch.save({"cfg": {"model": model_cfg, "task": {"_name": "translation"}}, "model": model.state_dict()}, path)
    out = os.path.join(tmp, f"ct2_{weights}_{id(model)}")
    return export_ctranslate2(path, tmp, out, weights, "src", "tgt")


class CTranslate2Runner:
    def __init__(self, path, device, weights, d, samples, output_length, beam):
        from fairseq_kd.ct2 import translator

        self.translator = translator(path, device, threads=1, compute_type=weights)
        self.batches = [[[d[i] for i in row[:-1].tolist()] for row in s["net_input"]["src_tokens"]] for s in samples]
        self.output_length, self.beam = output_length, beam

    def __call__(self):
        steps = 0
        for batch in self.batches:
            results = self.translator.translate_batch(
                batch, beam_size=self.beam, min_decoding_length=self.output_length,
                max_decoding_length=self.output_length, max_input_length=0,
            )  # fmt: skip
            steps += sum(len(r.hypotheses[0]) + 1 for r in results)  # + EOS
        return steps


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def translate_all(generator, model, samples):
    steps = 0
    for sample in samples:
        hypos = generator.generate([model], sample)
        steps += sum(len(h[0]["tokens"]) for h in hypos)
    return steps


def measure(shapes, args, tmp):
    """Per shape and runtime: params and the times of translating all sentences, run by turns (every repeat
    runs each one once) so that a slower or faster spell of the machine falls on all alike."""
    device = torch.device(args.device)
    runners = []
    for shape in shapes:
        d = dictionary(shape["vocab"])
        torch.manual_seed(0)
        model, namespace = build_model(shape, d, tmp)
        samples = batches(d, args.sentences, args.source_length, args.batch_size)
        params = sum(p.numel() for p in model.parameters())
        for weights in args.ctranslate2:
            runner = CTranslate2Runner(
                to_ctranslate2(model, namespace, d, tmp, weights),
                args.device,
                weights,
                d,
                samples,
                args.output_length,
                args.beam,
            )
            runners.append((shape, f"ctranslate2 {weights}", params, runner, []))
        model = model.to(device)
        generator = SequenceGenerator(
            [model], d, beam_size=args.beam, max_len_a=0, max_len_b=args.output_length, min_len=args.output_length
        )
        on_device = [utils.move_to_cuda(s) if device.type == "cuda" else s for s in samples]
        runners.append(
            (shape, f"fairseq {args.device}", params, lambda g=generator, m=model, s=on_device: translate_all(g, m, s), [])
        )
    for _, _, _, run, _ in runners:  # warm up
        run()
    expected = args.sentences * (args.output_length + 1)  # + EOS
    for _ in range(args.repeats):
        for shape, runtime, _, run, times in runners:
            synchronize(device)
            start = time.perf_counter()
            tokens = run()
            synchronize(device)
            times.append(time.perf_counter() - start)
            if tokens != expected:
                raise RuntimeError(
                    f"{shape} in {runtime}: translations have {tokens} tokens in all, not the forced {expected}"
                )
    results = []
    for shape, runtime, params, _, times in runners:
        seconds = statistics.median(times)
        results.append((shape, {"runtime": runtime, "params": params, "seconds": seconds,
                                "sentences_per_s": args.sentences / seconds, "tokens_per_s": expected / seconds,
                                "times": times}))  # fmt: skip
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
    parser.add_argument("--device", default="cpu", help="cpu or cuda (fairseq's generator and CTranslate2)")
    parser.add_argument(
        "--ctranslate2",
        nargs="*",
        default=[],
        metavar="TYPE",
        help="also time each shape in CTranslate2 with these compute types (e.g. int8 float32)",
    )
    parser.add_argument("--name", default="decode_speed_cpu", help="results file name (NAME.json, NAME.md)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape, result in measure(args.shapes, args, tmp):
            name = f"{shape['encoder_layers']}+{shape['decoder_layers']}/{shape['width']}/{shape['ffn']}/{shape['vocab']}"
            rows.append(dict(shape=name, **shape, **result))

    # each shape against the teacher of its vocabulary and width: the first shape of the list with
    # both, and with more decoder layers
    for row in rows:
        teachers = [
            t
            for t in rows
            if t["vocab"] == row["vocab"]
            and t["runtime"] == row["runtime"]
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
    if args.device == "cuda":
        record["machine"]["gpu"] = torch.cuda.get_device_name()
    with open(os.path.join(args.out, args.name + ".json"), "w") as f:
        json.dump(record, f, indent=1)
    lines = [
        f"Beam {args.beam}, batches of {args.batch_size}, {args.sentences} sentences of {args.source_length} source "
        f"tokens, every translation forced to {args.output_length} tokens; fairseq SequenceGenerator"
        f"{' and CTranslate2 (one thread)' if args.ctranslate2 else ''}, {args.device} "
        f"({os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}), median of "
        f"{args.repeats} runs, taken by turns. Shape: encoder+decoder layers / width / FFN / vocabulary; "
        f"speed-ups are within one runtime. Command: `{' '.join(sys.argv)}`.",
        "",
        "| shape | runtime | params | sentences/s | speed-up over | |",
        "|---|---|---:|---:|---|---:|",
    ]
    for row in rows:
        speedup = f"{row['speedup']:.2f}x" if row["speedup"] else ""
        lines.append(
            f"| {row['shape']} | {row['runtime']} | {row['params']:,} | {row['sentences_per_s']:.1f} | {row['teacher'] or ''} | {speedup} |"
        )
    with open(os.path.join(args.out, args.name + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
