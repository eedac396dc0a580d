#!/usr/bin/env bash
# The GPU measurements that BENCHMARKS.md still lacks, as one short run (about 6 minutes on an
# H100 or H200, most of it compiling; every line prints JSON, and a failed line does not stop
# the next). Run from the repository root on the lent machine:
#   bash experiments/bench/gpu_checks.sh > "$OUT/gpu_checks.jsonl"
# 1. Seed sweep at the paper's size: one seed with `auto` (cuDNN convolutions), 4 and 8 seeds with
#    `auto` (the matmul forms, since a device runs several seeds), and one seed in matmul form
#    (the like-for-like base). The target: 8 seeds at 5x or more one seed's updates/s.
# 2. Dreamer's update with cuDNN's transposed convolutions against the matmul decoders (its
#    float32 decoder gradients were 95 % of the H100 update).
# Each row names the form that ran: `conv_impl` (sweep rows) or `conv_form` (train_step rows).
# Sweep rows also give memory (`temp_gb` from XLA, `device_peak_gb` from the allocator): the
# matmul forms' patches made the CPU program 56 GB at 8 seeds (7 GB at 1, 4.5 GB with lax.conv),
# so 8 seeds may not fit an H100's 80 GB; a row with `error` then ends the list, and the
# 4-seed row still gives a ratio.
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false
bench() { timeout 300 python -m experiments.benchmark "$@" 2>/dev/null | grep '^{' || echo "{\"failed\": \"$*\"}"; }
bench --what=sweep --size=paper --seeds_list=1,4,8 --repeats=3
bench --what=sweep --size=paper --seeds_list=1 --repeats=3 --set model.conv_impl=matmul
bench --what=train_step --size=paper --method=dreamer --repeats=3
bench --what=train_step --size=paper --method=dreamer --repeats=3 --set model.conv_impl=matmul
