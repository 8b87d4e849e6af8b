#!/usr/bin/env bash
# One command from a fresh checkout to a trained and evaluated detector on CPU:
#   install (.venv) -> build nms -> synthetic COCO-format data -> train m2det_lite ->
#   evaluate (COCO table, metrics.json) -> pictures with detections.
# Everything goes under work_dirs/quickstart/. Extra arguments go to train.py
# (e.g. `bash scripts/quickstart.sh --epochs 2` for a smoke run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH" PYTHONUNBUFFERED=1 GLOG_v=3
OUT=work_dirs/quickstart
DATA=$OUT/data
CONFIG=${CONFIG:-configs/m2det_lite.yaml}
# objects of 20 px and more on 240-320 px images (at the 192 input the smallest prior is 11.5 px)
GEN_ARGS="--train ${QUICKSTART_TRAIN:-4200} --val 200 --seed 0 --min-size 20 --max-side 320"
if [ "$(cat "$DATA/.generated_with" 2>/dev/null)" != "$GEN_ARGS" ]; then
  rm -rf "$DATA"
  # two processes: the same files as one (each image has its own generator), in about half the time
  python -m src.data.synthetic --out "$DATA" $GEN_ARGS --workers 2
  echo "$GEN_ARGS" > "$DATA/.generated_with"
fi
# --overwrite: running the quickstart again starts it again (train.py refuses to replace a run otherwise)
python train.py --config "$CONFIG" --data_dir "$DATA" --device_target CPU --output_dir "$OUT" --overwrite "$@"
CKPT=$(ls -1 "$OUT"/*_epoch*.ckpt | sort | tail -n 1)
# batches of 8: the same detections as one image at a time (to float rounding; AP identical), ~5 s sooner
python eval.py --config "$CONFIG" --checkpoint "$CKPT" --data_dir "$DATA" --device_target CPU \
  --output_dir "$OUT/eval" --draw 8 --batch_size 8
echo "quickstart: checkpoints, logs and train_curves.png in $OUT; metrics and pictures in $OUT/eval"
