#!/usr/bin/env bash
# torch's own scheduler tests against lrfused: the README's count comes from here.
#   bash scripts/torch_scheduler_suite.sh PATH/TO/pytorch/test/optim/test_lrscheduler.py
#   LRFUSED_SUITE_SGD=adam bash scripts/torch_scheduler_suite.sh ...   # SGD swapped for Adam instead
# The file is not in torch's wheel, so CI does not run this. A copy is made with SGD swapped for
# FusedScheduledSGD (or, with LRFUSED_SUITE_SGD=adam, for FusedScheduledAdam, whose beta1 the
# cycling schedulers then drive), Adam for FusedScheduledAdam, torch.optim.AdamW for
# FusedScheduledAdamW, and every scheduler class (the import and the torch.optim.lr_scheduler.X
# references) for lrfused's; LRScheduler, EPOCH_DEPRECATION_WARNING, Rprop and SWALR stay torch's.
# Then pytest runs the copy.
set -euo pipefail
source_file=${1:?usage: bash scripts/torch_scheduler_suite.sh PATH/TO/test_lrscheduler.py}
# torch's test helpers (torch.testing._internal) import expecttest, which torch's wheel does not need.
python3 -c "import expecttest" 2>/dev/null || python3 -m pip install --quiet expecttest
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sgd_as=${LRFUSED_SUITE_SGD:-sgd}
case "$sgd_as" in
  sgd) sgd_class=FusedScheduledSGD ;;
  adam) sgd_class=FusedScheduledAdam ;;
  *) echo "LRFUSED_SUITE_SGD must be sgd or adam, got $sgd_as" >&2; exit 2 ;;
esac
python3 - "$source_file" "$work/test_lrscheduler_lrfused.py" "$sgd_class" <<'PY'
import re
import sys

source, target, sgd_class = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(source).read()
schedulers = ["ChainedScheduler", "ConstantLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "CyclicLR",
              "ExponentialLR", "LambdaLR", "LinearLR", "MultiplicativeLR", "MultiStepLR", "OneCycleLR",
              "PolynomialLR", "ReduceLROnPlateau", "SequentialLR", "StepLR"]
swaps = [
    ("from torch.optim import Adam, Rprop, SGD\n",
     "from torch.optim import Rprop\n"
     f"from lrfused import FusedScheduledAdam as Adam, {sgd_class} as SGD\n"
     "import lrfused\n"),
    ("from torch.optim.lr_scheduler import (\n",
     "from torch.optim.lr_scheduler import EPOCH_DEPRECATION_WARNING, LRScheduler\n"
     "from lrfused.lr_scheduler import (\n"),
    ("    EPOCH_DEPRECATION_WARNING,\n", ""),
    ("    LRScheduler,\n", ""),
    ("torch.optim.AdamW(", "lrfused.FusedScheduledAdamW("),
]
for old, new in swaps:
    if old not in text:
        sys.exit(f"torch_scheduler_suite: {old!r} is not in {source}; the file changed, update the swaps")
    text = text.replace(old, new)
text = re.sub(r"torch\.optim\.lr_scheduler\.(" + "|".join(schedulers) + r")\b", r"lrfused.lr_scheduler.\1", text)
open(target, "w").write(text)
PY
cd "$work"
python3 -m pytest -q -p no:cacheprovider test_lrscheduler_lrfused.py "${@:2}" | tail -n 25
