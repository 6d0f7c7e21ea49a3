package etcdtest

// Pid is the process ID of member i, 0 when it is not running: benchmarks
// read etcd's CPU time from /proc with it.
func (c *ProcessCluster) Pid(i int) int {
	if !c.Running(i) {
		return 0
	}
	m := c.member(i)
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cmd.Process.Pid
}
