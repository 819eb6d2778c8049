package loadtest

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// cpuSnapshot is the harness process's own CPU time and the machine's CPU
// counters at one moment. Over a measured window they say what the client
// costs and whether the machine had cycles left: the context for every
// throughput figure when client and server share the cores.
type cpuSnapshot struct {
	procNanos int64  // user+system of this process (the client)
	idle      uint64 // machine idle+iowait ticks, all CPUs
	steal     uint64 // ticks the hypervisor ran something else on our vCPUs
	total     uint64 // all machine ticks, all CPUs; 0 when /proc/stat is unreadable
}

func takeCPU() cpuSnapshot {
	var s cpuSnapshot
	s.procNanos = procCPUNanos()
	s.idle, s.steal, s.total = readProcStat()
	return s
}

// readProcStat sums the aggregate "cpu" line of /proc/stat: user nice
// system idle iowait irq softirq steal (guest time is inside user). Steal
// is time our vCPUs were ready but the host did not run them: on a VM
// whose host caps its CPU it is where the whole machine stalls.
func readProcStat() (idle, steal, total uint64) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, 0, 0
	}
	return parseCPULine(sc.Text())
}

func parseCPULine(line string) (idle, steal, total uint64) {
	fields := strings.Fields(line)
	if len(fields) < 9 || fields[0] != "cpu" {
		return 0, 0, 0
	}
	for i, f := range fields[1:9] {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return 0, 0, 0
		}
		total += v
		switch i {
		case 3, 4: // idle, iowait
			idle += v
		case 7:
			steal = v
		}
	}
	return idle, steal, total
}
