#!/usr/bin/env bash
# GAL's Tables 4 and 5 on digits: the product pipeline's baseline plus one `dvc exp run` per ablation row,
# each from the baseline params. Run from the repo root; `bash experiments/gal_tables.sh 0.6` for the 60%
# column. Prints `dvc exp show --only-changed` (methods.gal.test_acc_last etc. per row) at the end.
set -euo pipefail
rate="${1:-0.4}"
git diff --quiet params.yaml || { echo "params.yaml has local changes; commit or stash them first" >&2; exit 2; }
run() { git checkout -q params.yaml && dvc exp run -S "noise.rate=$rate" -n "$@"; }
run "t4-baseline-$rate"                                                        # CE and full GAL
run "t4-ce2-$rate"    -S method.ce.nets=2                                      # θA + θB + CE
run "t4-random-$rate" -S method.gal.update=random -S method.gal.third_net=false   # random updating
run "t4-agree-$rate"  -S method.gal.third_net=false                            # agreement, no θC
for s in cdas_no_reverse random identical; do run "t5-$s-$rate" -S "method.gal.sampling=$s"; done   # Table 5
git checkout -q params.yaml
dvc exp show --only-changed
