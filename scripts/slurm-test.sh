#!/usr/bin/env bash
# The study's Slurm scripts on a real Slurm: Debian's slurm-wlm + munge started as a private
# single-node cluster (own munge key and socket, own slurm.conf, state and ports under a temporary
# directory; stopped and removed afterwards). Submits the tiny fixture study's emitted scripts and
# checks that
#   (a) every job finishes;
#   (b) with one task's training data missing, exactly the jobs that need that task are missing
#       (its failed stage-1 tasks strand nothing else), and resubmit.sh re-runs only those once
#       the data is back;
#   (c) a hostile study.name is refused and a hostile study.output runs no command;
#   (d) a training task signalled mid-run (`scancel --signal=TERM --batch`, as its time limit's
#       SIGTERM would be) stops at a checkpoint, resubmit.sh resumes it from there, and its run
#       equals an uninterrupted run's.
#
#   bash scripts/slurm-test.sh [TPV]     # TPV: the tpv binary (default target/debug/tpv)
#
# Needs root (or sudo) to install the packages and run the daemons; where the machine cannot run
# Slurm it says so in one line and exits 0 (scripts/test.sh runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TPV=$(realpath "${1:-target/debug/tpv}")
log() { printf '[slurm-test] %s\n' "$*" >&2; }
skip() { printf '[slurm-test] SKIPPED: %s\n' "$*" >&2; exit 0; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  sudo -n true 2>/dev/null || skip "needs root or passwordless sudo to run slurmctld, slurmd and munged"
  SUDO="sudo -n"
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || skip "no slurm-wlm/munge and no apt-get to install them"
  log "installing slurm-wlm and munge from Debian"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq slurm-wlm munge >/dev/null
fi
[ -x "$TPV" ] || { log "no tpv binary at $TPV (cargo build -p tpv-trainer)"; exit 1; }

T=$(mktemp -d /tmp/tpv-slurm.XXXXXX)
chmod 755 "$T"
cleanup() {
  for pid in "$T"/slurmd.pid "$T"/slurmctld.pid "$T"/munge/munged.pid; do
    [ -f "$pid" ] && $SUDO kill "$(cat "$pid")" 2>/dev/null || true
  done
  sleep 1
  $SUDO rm -rf "$T"
}
trap cleanup EXIT

# munge: a fresh key and a private socket.
mkdir -p "$T/munge"
chmod 700 "$T/munge"
dd if=/dev/urandom of="$T/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$T/munge/munge.key"
$SUDO munged --force --key-file="$T/munge/munge.key" --socket="$T/munge/munge.socket" \
  --pid-file="$T/munge/munged.pid" --log-file="$T/munge/munged.log" --seed-file="$T/munge/munged.seed"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
NODE=$(slurmd -C | head -n 1)
HOST=$(hostname -s)
mkdir -p "$T/state" "$T/spool"
export SLURM_CONF="$T/slurm.conf"
cat > "$SLURM_CONF" <<EOF
ClusterName=tpvtest
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
AuthInfo=socket=$T/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=3600
$NODE State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
$SUDO env SLURM_CONF="$SLURM_CONF" slurmctld -f "$SLURM_CONF"
$SUDO env SLURM_CONF="$SLURM_CONF" slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do
  sinfo -h -o '%T' 2>/dev/null | grep -q '^idle' && break
  sleep 1
done
sinfo -h -o '%T' | grep -q '^idle' || {
  tail -n 20 "$T/slurmctld.log" "$T/slurmd.log" >&2 || true
  skip "the single-node Slurm did not come up (logs above)"
}
log "single-node Slurm up ($(sinfo -h -o '%N %c CPUs'))"

# Waits until none of this test's jobs is pending or running (at most $1 seconds).
wait_idle() {
  for _ in $(seq "$1"); do
    [ -z "$(squeue -h -o '%i' 2>/dev/null)" ] && return 0
    if squeue -h -o '%r' | grep -q DependencyNeverSatisfied; then
      log "a job waits on a dependency that can never be satisfied:"; squeue >&2; return 1
    fi
    sleep 1
  done
  log "jobs still queued after $1 s:"; squeue >&2; return 1
}

# A copy of the tiny fixture study with its output in $1.
study() {
  local dir=$1
  mkdir -p "$dir"
  cp "$ROOT"/tests/fixtures/study/*.jsonl "$dir"/
  sed -e "s|^output = .*|output = \"$dir/out\"|" -e "s|^path = \"../models/|path = \"$ROOT/tests/fixtures/models/|" \
    "$ROOT/tests/fixtures/study/study.toml" > "$dir/study.toml"
}
# The ids of jobs whose run file is missing, sorted.
missing() { "$TPV" sweep "$1" --list --json | python3 -c '
import json, sys
print("\n".join(sorted(j["id"] for j in json.load(sys.stdin)["jobs"] if not j["finished"])))'; }

fail=0
check() { if [ "$2" = "$3" ]; then log "ok   $1"; else log "FAIL $1"; diff <(echo "$2") <(echo "$3") >&2 || true; fail=1; fi; }

# (a) Everything finishes.
study "$T/a"
"$TPV" sweep "$T/a/study.toml" --emit slurm -o "$T/a/slurm" >/dev/null
bash "$T/a/slurm/submit.sh" >/dev/null
wait_idle 300
check "(a) every job of the tiny study finishes under Slurm" "$(missing "$T/a/study.toml")" ""

# (b) Task b's training file goes missing after the scripts were written (the preflight refuses
# to write them while it is missing): exactly the jobs that need b are missing.
study "$T/b"
mv "$T/b/b-train.jsonl" "$T/b/b-train.jsonl.away"
if "$TPV" sweep "$T/b/study.toml" --emit slurm -o "$T/b/slurm" >/dev/null 2>"$T/b/emit.err"; then
  log "FAIL (b) the scripts were written with task b's data missing"; fail=1
else
  grep -q "MISSING data" "$T/b/emit.err" && log "ok   (b) the preflight refuses to emit with task b's data missing" \
    || { log "FAIL (b) the emission failed without naming the missing data"; fail=1; }
fi
mv "$T/b/b-train.jsonl.away" "$T/b/b-train.jsonl"
"$TPV" sweep "$T/b/study.toml" --emit slurm -o "$T/b/slurm" >/dev/null
mv "$T/b/b-train.jsonl" "$T/b/b-train.jsonl.away"
bash "$T/b/slurm/submit.sh" >/dev/null
wait_idle 300
need_b=$("$TPV" sweep "$T/b/study.toml" --list --json | python3 -c '
import json, sys
jobs = {j["id"]: j for j in json.load(sys.stdin)["jobs"]}
def needs_b(i):
    return i.startswith("prompt_tuning/b/") or any(needs_b(d) for d in jobs[i].get("deps", []))
print("\n".join(sorted(i for i in jobs if needs_b(i))))')
[ -n "$need_b" ] || { log "FAIL (b): no job needs task b?"; fail=1; }
check "(b) with task b's data missing, exactly the $(echo "$need_b" | wc -l) jobs that need b are missing" \
  "$(missing "$T/b/study.toml")" "$need_b"
grep -l "needs prompt_tuning/b/" "$T"/b/slurm/logs/*.out >/dev/null \
  && log "ok   (b) a stranded stage-2 task names its missing input" \
  || { log "FAIL (b) no stage-2 log names the missing input"; fail=1; }
mv "$T/b/b-train.jsonl.away" "$T/b/b-train.jsonl"
bash "$T/b/slurm/resubmit.sh" > "$T/b/resubmit.out"
wait_idle 300
check "(b) resubmit.sh re-runs exactly what was missing, and then nothing is" "$(missing "$T/b/study.toml")" ""
grep -q "indexes" "$T/b/resubmit.out" || { log "FAIL (b) resubmit.sh submitted nothing"; fail=1; }

# (c) A hostile study.name is refused; a hostile study.output runs no command.
study "$T/c"
sed -i 's|^name = .*|name = "tiny\\n#SBATCH --wrap=touch '"$T"'/pwned-name"|' "$T/c/study.toml"
if "$TPV" sweep "$T/c/study.toml" --emit slurm -o "$T/c/slurm" >/dev/null 2>&1; then
  log "FAIL (c) a study.name with a newline was accepted"; fail=1
else
  log "ok   (c) a study.name with a newline is refused"
fi
study "$T/c"
sed -i 's|^output = .*|output = "'"$T"'/c/out $(touch '"$T"'/pwned-output) `touch '"$T"'/pwned-output`"|' "$T/c/study.toml"
sed -i 's|^shots = .*|shots = [0]|' "$T/c/study.toml"
"$TPV" sweep "$T/c/study.toml" --emit slurm -o "$T/c/slurm" >/dev/null
bash "$T/c/slurm/submit.sh" >/dev/null
wait_idle 300
check "(c) the study with a hostile output directory finishes" "$(missing "$T/c/study.toml")" ""
if ls "$T"/pwned-* >/dev/null 2>&1; then log "FAIL (c) a command in study.name/output ran"; fail=1
else log "ok   (c) no command from study.name or study.output ran"; fi

# (d) One long prompt-tuning job (1,500 steps, a checkpoint every 25), signalled once its first
# checkpoint exists, then resubmitted; the same job run uninterrupted, outside Slurm, meanwhile.
study "$T/d"
sed -i -e 's|^origins = .*|origins = [0]|' -e 's|^tasks = .*|tasks = ["a"]|' \
  -e '/^\[study.addition\]/,/^\[study.data.a\]/{/^\[study.data.a\]/!d}' \
  -e 's|^optim.max_steps = 4|optim.max_steps = 1500|' -e 's|^eval_every = .*|eval_every = 25|' "$T/d/study.toml"
job=prompt_tuning/a/origin0
"$TPV" sweep "$T/d/study.toml" --set "study.output=\"$T/d/whole\"" --job "$job" >/dev/null 2>"$T/d/whole.err" &
whole_pid=$!
"$TPV" sweep "$T/d/study.toml" --emit slurm -o "$T/d/slurm" >/dev/null
grep -q '^#SBATCH --signal=B:TERM@' "$T/d/slurm/stage1.sbatch" \
  || { log "FAIL (d) stage1.sbatch asks for no SIGTERM before the time limit"; fail=1; }
s1=$(bash "$T/d/slurm/submit.sh" | sed -n 's/^stage 1: //p')
ckpt="$T/d/out/$job/checkpoint.safetensors"
for _ in $(seq 600); do [ -f "$ckpt" ] && break; sleep 0.2; done
if [ -f "$ckpt" ]; then
  scancel --signal=TERM --batch "$s1"
  wait_idle 120
  cp "$T"/d/slurm/logs/*-0.out "$T/d/first.out"
  stopped=$(sed -n 's/.*stopped by SIGTERM after step \([0-9]*\).*/\1/p' "$T/d/first.out")
  if [ -n "$stopped" ] && [ -f "$ckpt" ] && [ ! -f "$T/d/out/$job/prompt.safetensors" ]; then
    log "ok   (d) the signalled task stopped at a checkpoint (step $stopped of 1500)"
  else
    log "FAIL (d) the signalled task did not stop at a checkpoint:"; cat "$T/d/first.out" >&2; fail=1
  fi
  bash "$T/d/slurm/resubmit.sh" >/dev/null
  wait_idle 120
  grep -q "resuming job $job from its checkpoint at step ${stopped:-none}\$" "$T"/d/slurm/logs/*-0.out \
    && log "ok   (d) resubmit.sh resumed it from that checkpoint" \
    || { log "FAIL (d) the resubmitted task did not resume at step ${stopped:-?}:"; cat "$T"/d/slurm/logs/*-0.out >&2; fail=1; }
else
  log "FAIL (d) no checkpoint appeared"; cat "$T"/d/slurm/logs/*.out >&2 || true; fail=1
fi
wait "$whole_pid" || { log "FAIL (d) the uninterrupted run failed:"; cat "$T/d/whole.err" >&2; fail=1; }
check "(d) the study finishes" "$(missing "$T/d/study.toml")" ""
# The run files' tensors and metrics (all but the creation time and the energy measured).
same=$(python3 - "$T/d/out/$job/prompt.safetensors" "$T/d/whole/$job/prompt.safetensors" <<'PY'
import json, struct, sys
def result(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = json.loads(header.pop("__metadata__")["tpv"])
    body = data[8 + n:]
    return {k: body[v["data_offsets"][0]:v["data_offsets"][1]] for k, v in header.items()}, meta["metrics"]
try:
    print("same" if result(sys.argv[1]) == result(sys.argv[2]) else "different")
except OSError as e:
    print(e)
PY
)
check "(d) the interrupted and resumed run equals the uninterrupted one" "$same" "same"

[ "$fail" = 0 ] || { log "logs: $T (kept)"; trap - EXIT; exit 1; }
log "all Slurm checks passed"
