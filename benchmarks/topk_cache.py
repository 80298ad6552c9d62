"""Word-level KD from a cached top-k teacher, against a plain NLL step and the live teacher.

On the fixed batch of kd_step.py, time and peak memory of:

  (a) a plain NLL student step
  (b) the teacher's forward alone
  (c) a KD step with the live teacher, full vocabulary
  (d) a KD step with the live teacher restricted to its top-k (--kd-topk)
  (e) a KD step from a top-k cache on disk (--teacher-topk-cache; the lookup included, which in training
      runs in the data loader: TopKCacheDataset's collater), no teacher
  (f) the cache lookup of the batch alone

and the ratios time(e) / time(a) (target <= 1.15), time(e) / time(c), peak(e) / peak(a), peak(d) / peak(c),
plus the cache's bytes per target token.

    python benchmarks/topk_cache.py                  # writes benchmarks/results/topk_cache_cpu_fp32.{json,md}
    python benchmarks/topk_cache.py --device cuda    # topk_cache_cuda_fp32.{json,md}
"""

import argparse
import json
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kd_step import _Backward, arch_flags, build, make_batch, measure_peak, measure_time, restart_with_malloc_env  # noqa: E402

import fairseq_kd  # noqa: E402,F401
from fairseq_kd.topk_cache import TopKCache  # noqa: E402


def write_cache(cache_dir, teacher, batch, k, pad):
    """A cache with the teacher's top-k for the batch's sentences, in the format fairseq-kd-cache-topk writes."""
    with torch.no_grad():
        values, ids = torch.log_softmax(teacher(**batch["net_input"])[0].float(), -1).topk(k, -1)
    values, ids, batch = values.cpu(), ids.cpu(), {"id": batch["id"].cpu(), "target": batch["target"].cpu()}
    lengths = batch["target"].ne(pad).sum(1)
    order = batch["id"].argsort()
    offsets = np.concatenate([[0], np.cumsum(lengths[order].numpy())])
    rows_ids = np.zeros((offsets[-1], k), np.uint16)
    rows_lprobs = np.zeros((offsets[-1], k), np.float16)
    for row, s in enumerate(batch["id"].tolist()):
        n = int(lengths[row])
        rows_ids[offsets[s] : offsets[s] + n] = ids[row, :n].numpy()
        rows_lprobs[offsets[s] : offsets[s] + n] = values[row, :n].numpy()
    np.save(os.path.join(cache_dir, "ids.npy"), rows_ids)
    np.save(os.path.join(cache_dir, "lprobs.npy"), rows_lprobs)
    np.save(os.path.join(cache_dir, "offsets.npy"), offsets)
    with open(os.path.join(cache_dir, "meta.json"), "w") as f:
        json.dump({"k": k, "complete": True, "identity": {}}, f)
    return os.path.getsize(os.path.join(cache_dir, "ids.npy")) + os.path.getsize(os.path.join(cache_dir, "lprobs.npy"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--student", default="3,256,1024,4")
    parser.add_argument("--teacher", default="6,512,2048,8")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output-dir", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    device = torch.device(args.device)
    from fairseq import utils
    from fairseq.data import Dictionary

    with tempfile.TemporaryDirectory() as tmp:
        d = Dictionary()
        for i in range(args.vocab - d.nspecial):
            d.add_symbol(f"w{i}")
        for lang in ("src", "tgt"):
            d.save(os.path.join(tmp, f"dict.{lang}.txt"))
        student_arch, teacher_arch = arch_flags(*args.student.split(",")), arch_flags(*args.teacher.split(","))
        kd = [
            "--criterion",
            "label_smoothed_cross_entropy_with_kd",
            "--kd-weight",
            "0.5",
            "--nll-weight",
            "0.5",
            "--kd-temperature",
            "2",
        ]
        nll_task, student, nll_criterion = build(tmp, student_arch, ["--criterion", "label_smoothed_cross_entropy"])
        live_task, _, live_criterion = build(tmp, student_arch, kd)
        topk_task, _, topk_criterion = build(tmp, student_arch, kd + ["--kd-topk", str(args.k)])
        cache_task, _, cache_criterion = build(tmp, student_arch, kd)
        _, teacher, _ = build(tmp, teacher_arch, ["--criterion", "label_smoothed_cross_entropy"])
        teacher.eval().requires_grad_(False)
        student.to(device), teacher.to(device)
        live_task.teachers = topk_task.teachers = [teacher]
        batch = make_batch(d, args.sentences, args.length)
        if device.type == "cuda":
            batch = utils.move_to_cuda(batch)
        cache_bytes = write_cache(tmp, teacher, batch, args.k, d.pad())
        cache = TopKCache(tmp)
        for criterion in (nll_criterion, live_criterion, topk_criterion, cache_criterion):
            criterion.eps = 0.1
        optimizer = _Backward()

        def step(task, criterion):
            def run():
                student.zero_grad(set_to_none=True)
                task.train_step(dict(batch), student, criterion, optimizer, 0)

            return run

        def cached_step():
            # what the data loader does (TopKCacheDataset.collater), then the training step
            student.zero_grad(set_to_none=True)
            with_rows = dict(batch, teacher_topk=cache.lookup(batch["id"].cpu(), batch["target"].cpu(), d.pad()))
            if device.type == "cuda":  # fairseq moves the whole batch, its cache rows included
                with_rows = utils.move_to_cuda(with_rows)
            cache_task.train_step(with_rows, student, cache_criterion, optimizer, 0)

        steps = {
            "a_nll_step": step(nll_task, nll_criterion),
            "b_teacher_forward": lambda: live_task.add_teacher_targets(dict(batch), student, live_criterion),
            "c_live_kd_step": step(live_task, live_criterion),
            "d_live_topk_kd_step": step(topk_task, topk_criterion),
            "e_cached_topk_kd_step": cached_step,
            "f_cache_lookup": lambda: cache.lookup(batch["id"].cpu(), batch["target"].cpu(), d.pad()),
        }
        student.train()
        results = {}
        for name, fn in steps.items():
            fn()
            results[name] = {"seconds": measure_time(fn, device, args.repeats), "peak_bytes": measure_peak(fn, device)}
    target_tokens = int(batch["ntokens"])
    a, b, c, dd, e, _ = (results[k] for k in steps)
    report = {
        "config": dict(
            vars(args), target_tokens=target_tokens, torch_threads=torch.get_num_threads(), cpu_count=os.cpu_count()
        ),
        "results": results,
        "time_ratio_cached_over_nll": e["seconds"] / a["seconds"],
        "time_ratio_cached_over_live": e["seconds"] / c["seconds"],
        "memory_ratio_cached_over_nll": e["peak_bytes"] / a["peak_bytes"],
        "memory_ratio_live_topk_over_live": dd["peak_bytes"] / c["peak_bytes"],
        "cache_bytes_per_target_token": cache_bytes / target_tokens,
    }
    os.makedirs(args.output_dir, exist_ok=True)
    stem = os.path.join(args.output_dir, f"topk_cache_{device.type}_fp32")
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=2)
    lines = [
        f"# KD from a top-{args.k} cache, {device.type} fp32: {args.sentences} x {args.length} tokens, vocabulary {args.vocab}, "
        f"student {args.student}, teacher {args.teacher} (layers,dim,ffn,heads), {torch.get_num_threads()} threads",
        "",
        "| step | time (ms) | peak memory (MB) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {r['seconds'] * 1000:.0f} | {r['peak_bytes'] / 2**20:.0f} |" for name, r in results.items()]
    lines += [
        "",
        f"- time (e) / (a): {report['time_ratio_cached_over_nll']:.2f} (target <= 1.15); (e) / (c): {report['time_ratio_cached_over_live']:.2f}",
        f"- peak memory (e) / (a): {report['memory_ratio_cached_over_nll']:.2f}; (d) / (c): {report['memory_ratio_live_topk_over_live']:.2f}",
        f"- cache: {report['cache_bytes_per_target_token']:.1f} bytes per target token (uint16 ids + float16 log-probs, k = {args.k})",
    ]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    restart_with_malloc_env()
    main()
