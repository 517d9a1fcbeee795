#!/bin/bash
# Probe: Nsight Compute pipe utilization and warp stall reasons of one attention launch at Wan-14B's 480p
# self-attention shape (benchmarks/probes/attn_once.py). Usage (on the GPU machine, after sourcing
# .gpu/env.sh):
#   bash benchmarks/probes/attn_ncu.sh gluon|triton OUT.txt [num_wg]
set -e
which=$1; out=$2; wg=${3:-3}
stalls=""
for s in barrier math_pipe_throttle wait short_scoreboard long_scoreboard dispatch_stall mio_throttle \
         not_selected selected membar sleeping misc no_instruction branch_resolving lg_throttle; do
  stalls="$stalls,smsp__average_warps_issue_stalled_${s}_per_issue_active.ratio"
done
metrics="sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_shared_cycles_active.avg.pct_of_peak_sustained_active,sm__cycles_elapsed.avg.per_second${stalls}"
if [ "$which" = gluon ]; then kernel=regex:_attn_pingpong; arg=$wg; else kernel=regex:_attn_fwd; arg=64,128,4,2,168; fi
/usr/local/cuda/bin/ncu -k "$kernel" --launch-count 1 --launch-skip 1 --section ComputeWorkloadAnalysis \
  --section SchedulerStats --section WarpStateStats --metrics "$metrics" \
  python "$(dirname "$0")/attn_once.py" "$which" "$arg" > "$out" 2>&1
