# Sourced by the benchmark scripts: load1 prints the 1-minute load average; wait_idle NAME
# MAX_LOAD MINUTES waits (checking each minute) until it drops below MAX_LOAD, or exits with
# status 3 after MINUTES minutes. Timings on a shared machine are only worth reading when idle.
load1() { cut -d' ' -f1 /proc/loadavg; }

wait_idle() {
  local name=$1 max_load=$2 minutes=$3 i l
  for ((i = 0; ; i++)); do
    l=$(load1)
    awk -v l="$l" -v m="$max_load" 'BEGIN { exit !(l < m) }' && return 0
    if [ "$i" -ge "$minutes" ]; then
      echo "$name: the 1-minute load average is still $l (>= $max_load) after $minutes minutes; not measuring" >&2
      exit 3
    fi
    echo "$name: load average $l >= $max_load, waiting a minute ($i/$minutes)" >&2
    sleep 60
  done
}
