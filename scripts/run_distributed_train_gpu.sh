#!/usr/bin/env bash
# Data-parallel training with MindSpore's own launcher (msrun; mpirun as an alternative).
#
# Usage: bash scripts/run_distributed_train_gpu.sh [OPTIONS] RANK_SIZE DEVICE_START BACKBONE_CKPT DATASET_PATH \
#            [CONFIG] [train.py args...]
#   RANK_SIZE      workers (devices) on this machine
#   DEVICE_START   first device: devices DEVICE_START .. DEVICE_START+RANK_SIZE-1 are made visible
#   BACKBONE_CKPT  backbone checkpoint from convert.py, or "none" to train from scratch
#   CONFIG         default configs/m2det512_vgg.yaml; anything after it goes to train.py
#                  (e.g. --epochs 1 --output_dir O --resume auto)
# OPTIONS (before RANK_SIZE):
#   --nnodes N        machines in the job (default 1): N * RANK_SIZE workers in all
#   --node_rank R     this machine's index 0..N-1 (required when N > 1); run the script on every machine
#   --master_addr A   address of machine 0, which hosts the scheduler (default 127.0.0.1)
#   --master_port P   scheduler port (default $MASTER_PORT or 8118)
#   --launcher L      msrun (default) or mpirun (OpenMPI; GPU); with mpirun, --hostfile F lists the machines
# Environment: DEVICE_TARGET (GPU if nvidia-smi works, else CPU; or Ascend; CPU runs every worker on this
# machine's CPU), OUTPUT_DIR (default work_dirs/<config>; --output_dir in the train.py args wins),
# LOG_DIR (default OUTPUT_DIR/logs), PYTHON (default .venv/bin/python), CLUSTER_TIME_OUT (seconds msrun
# waits for all workers to join, default 600).
#
# Runs in the foreground until the job ends (use nohup ... & for a background run). Writes
# LOG_DIR/worker_<rank>.log per rank, LOG_DIR/scheduler.log, LOG_DIR/msrun.log and OUTPUT_DIR/train_<config>.pid
# (this script's pid: `kill -TERM $(cat ...pid)` stops the job after rank 0 saved a checkpoint). Exits
# non-zero if any worker fails, naming the first failed rank's log.
set -uo pipefail

usage() {
  sed -n '4,16p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

NNODES=1; NODE_RANK=""; MASTER_ADDR=127.0.0.1; MASTER_PORT=${MASTER_PORT:-8118}; LAUNCHER=msrun; HOSTFILE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --nnodes) NNODES=$2; shift 2 ;;
    --node_rank) NODE_RANK=$2; shift 2 ;;
    --master_addr) MASTER_ADDR=$2; shift 2 ;;
    --master_port) MASTER_PORT=$2; shift 2 ;;
    --launcher) LAUNCHER=$2; shift 2 ;;
    --hostfile) HOSTFILE=$2; shift 2 ;;
    -h|--help) usage ;;
    --*) echo "unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[ $# -ge 4 ] || usage
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RANK_SIZE=$1; DEVICE_START=$2; BACKBONE=$3; DATA=$4; CONFIG=${5:-configs/m2det512_vgg.yaml}
shift $(( $# >= 5 ? 5 : 4 ))
TRAIN_EXTRA=("$@")

is_int() { [[ "$1" =~ ^[0-9]+$ ]]; }
is_int "$RANK_SIZE" && [ "$RANK_SIZE" -ge 1 ] || { echo "RANK_SIZE must be a positive integer, got '$RANK_SIZE'" >&2; exit 2; }
is_int "$DEVICE_START" || { echo "DEVICE_START must be a non-negative integer, got '$DEVICE_START'" >&2; exit 2; }
is_int "$NNODES" && [ "$NNODES" -ge 1 ] || { echo "--nnodes must be a positive integer" >&2; exit 2; }
if [ "$NNODES" -gt 1 ] && ! is_int "$NODE_RANK"; then echo "--nnodes $NNODES needs --node_rank" >&2; exit 2; fi
case "$LAUNCHER" in msrun|mpirun) ;; *) echo "--launcher must be msrun or mpirun" >&2; exit 2 ;; esac
[ -d "$DATA" ] || { echo "dataset path not found: $DATA" >&2; exit 2; }
[ "$BACKBONE" = "none" ] || [ -f "$BACKBONE" ] || { echo "backbone checkpoint not found: $BACKBONE" >&2; exit 2; }
[ -f "$CONFIG" ] || [ -f "$ROOT/$CONFIG" ] || { echo "config not found: $CONFIG" >&2; exit 2; }
if [ -z "${DEVICE_TARGET:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then DEVICE_TARGET=GPU; else DEVICE_TARGET=CPU; fi
fi

# visible devices DEVICE_START .. DEVICE_START+RANK_SIZE-1; each worker then uses its local rank
DEVICES=$(seq -s, "$DEVICE_START" $((DEVICE_START + RANK_SIZE - 1)))
case "$DEVICE_TARGET" in
  GPU) export CUDA_VISIBLE_DEVICES=$DEVICES ;;
  Ascend) export ASCEND_RT_VISIBLE_DEVICES=$DEVICES ;;
  CPU) ;;
  *) echo "DEVICE_TARGET must be GPU, Ascend or CPU, got '$DEVICE_TARGET'" >&2; exit 2 ;;
esac

NAME=$(basename "$CONFIG" .yaml)
OUT=${OUTPUT_DIR:-$ROOT/work_dirs/$NAME}
for ((i = 0; i < ${#TRAIN_EXTRA[@]}; i++)); do        # train.py's own --output_dir decides
  case "${TRAIN_EXTRA[$i]}" in
    --output_dir) OUT=${TRAIN_EXTRA[$((i + 1))]:-$OUT} ;;
    --output_dir=*) OUT=${TRAIN_EXTRA[$i]#--output_dir=} ;;
  esac
done
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
LOG_DIR=${LOG_DIR:-$OUT/logs}
mkdir -p "$LOG_DIR" && LOG_DIR=$(cd "$LOG_DIR" && pwd)
PID_FILE=$OUT/train_$NAME.pid
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)

# msrun starts every process as `python ...`: a shim makes that our interpreter and prints the
# pid first in each log, which is how a failed pid is traced back to its rank's log
SHIM=$LOG_DIR/.bin
mkdir -p "$SHIM"
cat > "$SHIM/python" <<EOF
#!/bin/sh
echo "launcher: pid \$\$ role \${MS_ROLE:-mpi} rank \${RANK_ID:-\${OMPI_COMM_WORLD_RANK:-?}}"
exec "$PY" "\$@"
EOF
chmod +x "$SHIM/python"
export PATH="$SHIM:$(dirname "$PY"):$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

ARGS=(train.py --config "$CONFIG" --data_dir "$DATA" --device_target "$DEVICE_TARGET" --output_dir "$OUT" --run_distribute)
[ "$BACKBONE" = "none" ] || ARGS+=(--backbone_ckpt "$BACKBONE")
if [ "$DEVICE_TARGET" = CPU ] && [[ " ${TRAIN_EXTRA[*]} " != *" --cpu_threads "* ]]; then
  # the workers share this machine's cores: without a limit each would start a thread per core
  CORES=$(nproc 2>/dev/null || echo 1)
  ARGS+=(--cpu_threads $(( CORES / RANK_SIZE > 0 ? CORES / RANK_SIZE : 1 )))
fi
ARGS+=("${TRAIN_EXTRA[@]}")
WORKER_NUM=$((RANK_SIZE * NNODES))
cd "$ROOT"
echo $$ > "$PID_FILE"
rm -f "$LOG_DIR"/worker_*.log "$LOG_DIR/scheduler.log" "$LOG_DIR/msrun.log"
echo "$WORKER_NUM workers ($RANK_SIZE here, $DEVICE_TARGET devices ${DEVICES}) via $LAUNCHER; logs in $LOG_DIR"

LAUNCH_PID=""
INTERRUPTED=""
stop_workers() {
  # SIGTERM each worker: training stops after the current step, rank 0 saves a checkpoint
  INTERRUPTED=$1
  echo "received SIG$1: asking the workers to save and stop" >&2
  if [ "$LAUNCHER" = msrun ]; then
    for pid in $(sed -n 's/^launcher: pid \([0-9]*\) role MS_WORKER.*/\1/p' "$LOG_DIR"/worker_*.log 2>/dev/null); do
      kill -TERM "$pid" 2>/dev/null
    done
  elif [ -n "$LAUNCH_PID" ]; then
    kill -TERM "$LAUNCH_PID" 2>/dev/null      # mpirun forwards SIGTERM to its ranks
  fi
}
trap 'stop_workers TERM' TERM
trap 'stop_workers INT' INT
trap 'rm -f "$PID_FILE"' EXIT

if [ "$LAUNCHER" = msrun ]; then
  MSRUN=$(dirname "$PY")/msrun
  [ -x "$MSRUN" ] || MSRUN=$(command -v msrun || true)
  MSRUN_CMD=("$MSRUN")
  [ -n "$MSRUN" ] || MSRUN_CMD=("$PY" -m mindspore.parallel.cluster.run)
  OPTS=(--worker_num="$WORKER_NUM" --local_worker_num="$RANK_SIZE" --master_addr="$MASTER_ADDR"
        --master_port="$MASTER_PORT" --log_dir="$LOG_DIR" --join=True --tail_worker_log=0
        --cluster_time_out="${CLUSTER_TIME_OUT:-600}")
  [ "$NNODES" -gt 1 ] && OPTS+=(--node_rank="$NODE_RANK")
  # own session: a Ctrl+C in the terminal reaches this script (which stops the workers cleanly),
  # not msrun (whose SIGINT handler SIGKILLs them)
  SETSID=$(command -v setsid || true)
  $SETSID "${MSRUN_CMD[@]}" "${OPTS[@]}" "${ARGS[@]}" > >(tee -a "$LOG_DIR/msrun.log") 2>&1 &
  LAUNCH_PID=$!
  SCHED_KILLED=""
  while kill -0 "$LAUNCH_PID" 2>/dev/null; do
    if [ -z "$SCHED_KILLED" ] && grep -q "exit with exception" "$LOG_DIR/msrun.log" 2>/dev/null; then
      # msrun has SIGKILLed the other workers and now waits for the scheduler, which would only
      # give up after its heartbeat or cluster timeout: end it now
      sleep 2
      SCHED=$(sed -n 's/^launcher: pid \([0-9]*\) role MS_SCHED.*/\1/p' "$LOG_DIR/scheduler.log" 2>/dev/null | head -1)
      if [ -n "$SCHED" ] && [ "$(ps -o ppid= -p "$SCHED" 2>/dev/null | tr -d ' ')" = "$LAUNCH_PID" ]; then
        kill -KILL "$SCHED" 2>/dev/null
      fi
      SCHED_KILLED=1
    fi
    sleep 1 & wait $!
  done
  wait "$LAUNCH_PID"; RC=$?
else
  command -v mpirun >/dev/null 2>&1 || { echo "mpirun not found (install OpenMPI or use --launcher msrun)" >&2; exit 2; }
  [ "$DEVICE_TARGET" = CPU ] && echo "warning: MindSpore's CPU collectives need msrun; mpirun is for GPU" >&2
  MPI_OPTS=(-n "$WORKER_NUM" --output-filename "$LOG_DIR/mpirun" --merge-stderr-to-stdout
            -x PATH -x PYTHONPATH -x PYTHONUNBUFFERED)
  [ -n "${CUDA_VISIBLE_DEVICES:-}" ] && MPI_OPTS+=(-x CUDA_VISIBLE_DEVICES)
  [ -n "$HOSTFILE" ] && MPI_OPTS+=(--hostfile "$HOSTFILE")
  mpirun "${MPI_OPTS[@]}" python "${ARGS[@]}" > >(tee -a "$LOG_DIR/mpirun.log") 2>&1 &
  LAUNCH_PID=$!
  while kill -0 "$LAUNCH_PID" 2>/dev/null; do sleep 1 & wait $!; done
  wait "$LAUNCH_PID"; RC=$?
fi

if [ "$RC" -eq 0 ]; then
  echo "distributed training finished; rank logs: $LOG_DIR/worker_*.log"
  exit 0
fi
if [ -n "$INTERRUPTED" ]; then
  echo "training stopped on SIG$INTERRUPTED; rank 0 saved a checkpoint in $OUT (see $LOG_DIR/worker_0.log);" \
       "continue with the same command plus --resume auto" >&2
  [ "$INTERRUPTED" = INT ] && exit 130
  exit 143
fi
echo "distributed training FAILED (launcher exit code $RC)" >&2
if [ "$LAUNCHER" = msrun ]; then
  LINE=$(grep -m1 -o "Worker process [0-9]* exit with exception. Error code: -\{0,1\}[0-9]*" "$LOG_DIR/msrun.log")
  PID=$(echo "$LINE" | sed -n 's/Worker process \([0-9]*\) .*/\1/p')
  CODE=$(echo "$LINE" | sed -n 's/.*Error code: \(-\{0,1\}[0-9]*\)/\1/p')
  LOG=""
  [ -n "$PID" ] && LOG=$(grep -l "^launcher: pid $PID role" "$LOG_DIR"/worker_*.log 2>/dev/null | head -1)
  if [ -n "$LOG" ]; then
    RANK=$(basename "$LOG" .log); RANK=${RANK#worker_}
    echo "rank $RANK failed first (exit code $CODE); its log: $LOG" >&2
    echo "----- last lines of $LOG -----" >&2
    grep -v '^\[\(WARNING\|INFO\)\]' "$LOG" | tail -n 15 >&2
    echo "-----" >&2
  else
    echo "see the rank logs: $(ls "$LOG_DIR"/worker_*.log 2>/dev/null | tr '\n' ' ') and $LOG_DIR/scheduler.log" >&2
  fi
else
  RANK=$(grep -m1 -o "Process name: \[\[[0-9]*,[0-9]*\],[0-9]*\]" "$LOG_DIR/mpirun.log" | sed 's/.*,\([0-9]*\)\]$/\1/')
  if [ -n "$RANK" ]; then
    echo "rank $RANK failed first; its log: $LOG_DIR/mpirun/1/rank.$RANK/stdout" >&2
  else
    echo "see the rank logs under $LOG_DIR/mpirun/" >&2
  fi
fi
[ "$RC" -gt 1 ] && exit "$RC"
exit 1
