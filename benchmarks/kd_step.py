"""Time and peak memory of one training step, on a fixed batch:

  (a) a plain NLL student step (label_smoothed_cross_entropy, forward + backward)
  (b) the teacher's forward alone (no gradients)
  (c) a word-level KD step (translation_kd's train_step: teacher forward + KD criterion + backward)

and the ratios time(c) / (time(a) + time(b)) and peak(c) / peak(a). With ``--divergences``, (c) once per
divergence of ``--kd-divergence`` (each at its default beta) and (d) an on-policy KD step (forward KL; the
student's sampled translations made inside the step, then the teacher and the loss on them), written to
``kd_step_DEVICE_DTYPE_divergences.{json,md}``.

Peak memory on CPU is the rise of the process's resident-set high-water mark over the step (Linux: the
mark is reset through /proc/self/clear_refs before it), with glibc told to give every block of 64 KiB or
more back to the system when it is freed (MALLOC_MMAP_THRESHOLD_, which the script sets by restarting
itself), so that resident memory follows live tensors; on CUDA it is torch.cuda.max_memory_allocated over
the step. Both count only what the step allocates on top of the models and the batch. (The PyTorch
profiler's per-op memory events, used before, miss temporaries allocated and freed inside one op and
under-read the KD step by a third; the resident-set reading agrees with CUDA's to 3% on the same step.)

    python benchmarks/kd_step.py                     # CPU, writes benchmarks/results/kd_step_cpu.{json,md}
    python benchmarks/kd_step.py --device cuda --dtype bf16
    python benchmarks/kd_step.py --divergences       # writes benchmarks/results/kd_step_cpu_fp32_divergences.*
"""

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
from fairseq import models, options, tasks
from fairseq.data import Dictionary, LanguagePairDataset
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import fairseq_kd  # noqa: F401
from fairseq_kd.criterions.kd_losses import DIVERGENCES


def arch_flags(layers, dim, ffn, heads):
    return [
        "--arch", "transformer",
        "--encoder-layers", str(layers), "--decoder-layers", str(layers),
        "--encoder-embed-dim", str(dim), "--decoder-embed-dim", str(dim),
        "--encoder-ffn-embed-dim", str(ffn), "--decoder-ffn-embed-dim", str(ffn),
        "--encoder-attention-heads", str(heads), "--decoder-attention-heads", str(heads),
        "--share-decoder-input-output-embed",
    ]  # fmt: skip


def build(data_dir, arch, criterion_flags, task_flags=()):
    args = options.parse_args_and_arch(
        options.get_training_parser(),
        ["--task", "translation_kd", data_dir, "--source-lang", "src", "--target-lang", "tgt", "--teacher-path", "unused"]
        + list(task_flags)
        + arch
        + criterion_flags,
    )
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    return task, models.build_model(cfg.model, task), task.build_criterion(cfg.criterion)


def make_batch(dictionary, sentences, length, seed=0):
    g = torch.Generator().manual_seed(seed)

    def sent():
        return torch.cat([torch.randint(dictionary.nspecial, len(dictionary), (length - 1,), generator=g), torch.tensor([2])])

    src = [sent() for _ in range(sentences)]
    tgt = [sent() for _ in range(sentences)]
    ds = LanguagePairDataset(src, [length] * sentences, dictionary, tgt, [length] * sentences, dictionary)
    return ds.collater([ds[i] for i in range(sentences)])


class _Backward:
    """The one optimizer method FairseqTask.train_step calls."""

    def backward(self, loss):
        loss.backward()


def measure_peak(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    base = _status_bytes("VmRSS")
    fn()
    return _status_bytes("VmHWM") - base


def _status_bytes(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status: CPU peak memory is measured on Linux only")


# glibc: blocks of 64 KiB or more are mapped on their own and returned to the system when freed
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def restart_with_malloc_env():
    """Re-executes this script with MALLOC_ENV, which glibc reads only at start-up (CPU runs)."""
    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, **MALLOC_ENV})


def measure_time(fn, device, repeats):
    times = []
    for _ in range(repeats + 1):  # the first run warms up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--length", type=int, default=32, help="tokens per sentence, source and target")
    parser.add_argument("--student", default="3,256,1024,4", help="layers,dim,ffn,heads")
    parser.add_argument("--teacher", default="6,512,2048,8", help="layers,dim,ffn,heads")
    parser.add_argument("--kd-temperature", default="2")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--divergences", action="store_true", help="(c) for every --kd-divergence, and (d) on-policy")
    parser.add_argument("--output-dir", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as data_dir:
        d = Dictionary()
        for i in range(args.vocab - d.nspecial):
            d.add_symbol(f"w{i}")
        for lang in ("src", "tgt"):
            d.save(os.path.join(data_dir, f"dict.{lang}.txt"))
        student_arch = arch_flags(*args.student.split(","))
        teacher_arch = arch_flags(*args.teacher.split(","))
        nll_task, student, nll_criterion = build(data_dir, student_arch, ["--criterion", "label_smoothed_cross_entropy"])
        kd_flags = ["--criterion", "label_smoothed_cross_entropy_with_kd", "--kd-weight", "0.5", "--nll-weight", "0.5"]
        kd_task, _, kd_criterion = build(data_dir, student_arch, kd_flags + ["--kd-temperature", args.kd_temperature])
        criteria = {}
        if args.divergences:
            for kind in DIVERGENCES:
                flags = kd_flags + ["--kd-temperature", args.kd_temperature, "--kd-divergence", kind]
                criteria[kind] = build(data_dir, student_arch, flags)[2]
            on_policy_task, _, on_policy_criterion = build(
                data_dir, student_arch, kd_flags + ["--kd-temperature", args.kd_temperature],
                ["--on-policy-fraction", "1", "--on-policy-decoding", "sample"],
            )  # fmt: skip
        _, teacher, _ = build(data_dir, teacher_arch, ["--criterion", "label_smoothed_cross_entropy"])
    for crit in (nll_criterion, kd_criterion, *criteria.values()):
        crit.eps = 0.1
    student.to(device=device, dtype=dtype)
    teacher.to(device=device, dtype=dtype).eval().requires_grad_(False)
    kd_task.teachers = [teacher]
    if args.divergences:
        on_policy_task.teachers = [teacher]
        on_policy_criterion.eps = 0.1
    batch = make_batch(d, args.sentences, args.length)
    batch = {
        k: ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else v.to(device) if torch.is_tensor(v) else v)
        for k, v in batch.items()
    }
    optimizer = _Backward()

    def nll_step():
        student.zero_grad(set_to_none=True)
        nll_task.train_step(dict(batch), student, nll_criterion, optimizer, 0)

    def teacher_forward():
        kd_task.add_teacher_targets(dict(batch), student, kd_criterion)

    def kd_step():
        student.zero_grad(set_to_none=True)
        kd_task.train_step(dict(batch), student, kd_criterion, optimizer, 0)

    steps = {"a_nll_step": nll_step, "b_teacher_forward": teacher_forward, "c_kd_step": kd_step}
    if args.divergences:

        def divergence_step(criterion):
            def step():
                student.zero_grad(set_to_none=True)
                kd_task.train_step(dict(batch), student, criterion, optimizer, 0)

            return step

        def on_policy_step():
            student.zero_grad(set_to_none=True)
            on_policy_task.train_step(dict(batch), student, on_policy_criterion, optimizer, 0)

        steps = {"a_nll_step": nll_step, "b_teacher_forward": teacher_forward}
        steps.update({f"c_kd_step_{kind}": divergence_step(c) for kind, c in criteria.items()})
        steps["d_on_policy_kd_step"] = on_policy_step
    results = {}
    for name, fn in steps.items():
        fn()  # warm-up, and gradients allocated as in training
        results[name] = {
            "seconds": measure_time(fn, device, args.repeats),
            "peak_bytes": measure_peak(fn, device),
        }
    a, b = results["a_nll_step"], results["b_teacher_forward"]
    c = results["c_kd_step_forward_kl" if args.divergences else "c_kd_step"]
    target_tokens = int(batch["ntokens"])
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
        "config": dict(vars(args), target_tokens=target_tokens, dtype=args.dtype),
        "results": results,
        "time_ratio_c_over_a_plus_b": c["seconds"] / (a["seconds"] + b["seconds"]),
        "memory_ratio_c_over_a": c["peak_bytes"] / a["peak_bytes"],
    }
    os.makedirs(args.output_dir, exist_ok=True)
    stem = os.path.join(args.output_dir, f"kd_step_{device.type}_{args.dtype}" + ("_divergences" if args.divergences else ""))
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=2)
    lines = [
        f"# One training step, {device.type} {args.dtype}: {args.sentences} sentences x {args.length} tokens, "
        f"vocabulary {args.vocab}, student {args.student}, teacher {args.teacher} (layers,dim,ffn,heads)",
        "",
        "| step | time (ms) | peak memory (MB) |",
        "|---|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['seconds'] * 1000:.1f} | {r['peak_bytes'] / 2**20:.1f} |")
    if args.divergences:
        lines += ["", "| step | time / forward-KL step | peak / forward-KL step |", "|---|---:|---:|"]
        for name, r in results.items():
            if name.startswith(("c_", "d_")):
                lines.append(f"| {name} | {r['seconds'] / c['seconds']:.3f} | {r['peak_bytes'] / c['peak_bytes']:.3f} |")
    lines += [
        "",
        f"time ratio (c) / ((a) + (b)): {report['time_ratio_c_over_a_plus_b']:.3f}",
        f"peak memory ratio (c) / (a): {report['memory_ratio_c_over_a']:.3f}",
        f"machine: {report['machine']}",
    ]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    restart_with_malloc_env()
    main()
