package etcdtest

import (
	"bufio"
	"bytes"
	"fmt"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	client "go.etcd.io/etcd/client/v2"
)

// Cluster is an in-process etcd 3.5 cluster with the v2 API, for tests of
// behaviour that involves leaders, failover and lagging members.
//
// Each member is a Server: its client URL is served by a relay that cuts
// every client connection when the member stops, as a dying process does,
// and its peer URL is a FaultProxy, through which all raft traffic to it
// passes. Partition uses those proxies to cut a member off from the
// others while clients can still reach it: it keeps serving its own,
// ageing data to reads that do not ask for a quorum, the lagging follower
// a site sees.
//
// Members are numbered from 0. Never read /v2/stats/store of a member: in
// etcd 3.5 that races with watchers going away inside etcd and fails
// -race tests; count v2 watchers on a ProcessCluster (WatcherCount).
type Cluster struct {
	members []*Server
	ids     []string // member IDs as raft's X-Server-From header shows them

	mu          sync.Mutex
	partitioned []bool
}

// NewCluster starts an n-member cluster, waits until every member serves
// requests, and stops it when the test ends.
func NewCluster(tb testing.TB, n int) *Cluster {
	tb.Helper()
	c, err := startCluster(n)
	if err != nil {
		tb.Fatalf("etcdtest: start %d-member cluster: %v", n, err)
	}
	tb.Cleanup(c.close)
	return c
}

func startCluster(n int) (*Cluster, error) {
	if n < 1 {
		return nil, fmt.Errorf("a cluster needs at least one member, not %d", n)
	}
	c := &Cluster{members: make([]*Server, n), ids: make([]string, n), partitioned: make([]bool, n)}
	token := "etcdtest-" + randomHex(8)
	var initial []string
	for i := range c.members {
		s, err := newServer(Options{Name: fmt.Sprintf("m%d", i)})
		if err != nil {
			c.close()
			return nil, err
		}
		c.members[i] = s
		if s.peerProxy, err = StartFaultProxy(s.innerPeerURL.Host); err != nil {
			c.close()
			return nil, err
		}
		s.peerProxy.setOrigin(raftSender)
		s.peerURL.Host = s.peerProxy.Addr()
		s.token = token
		initial = append(initial, s.opts.Name+"="+s.peerURL.String())
	}
	// A new member first asks its peers whether it already belongs to the
	// cluster, waiting a second for each that does not answer yet; a
	// proxy that refuses connections until its member listens answers at
	// once.
	for _, s := range c.members {
		s.initialCluster = strings.Join(initial, ",")
		s.peerProxy.Drop()
		s.listening = s.peerProxy.PassThrough
	}
	// A member is ready once a quorum has agreed on its joining, so all
	// start together.
	err := c.restart(c.all()...)
	for i, s := range c.members {
		s.listening = nil
		id, _ := s.memberIDs()
		c.ids[i] = fmt.Sprintf("%x", id)
	}
	if err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// raftSender names the member that opened a peer connection, from the
// X-Server-From header etcd puts on its raft requests (streams, appends,
// snapshots). Other peer requests (version probes, lease forwarding) name
// no sender and are never cut by a partition.
func raftSender(head []byte) string {
	r := textproto.NewReader(bufio.NewReader(bytes.NewReader(head)))
	if _, err := r.ReadLine(); err != nil {
		return ""
	}
	h, _ := r.ReadMIMEHeader()
	return h.Get("X-Server-From")
}

func (c *Cluster) all() []int {
	all := make([]int, len(c.members))
	for i := range all {
		all[i] = i
	}
	return all
}

// member returns member i, panicking with a clear message when i is out of
// range (a bug in the test).
func (c *Cluster) member(i int) *Server {
	if i < 0 || i >= len(c.members) {
		panic(fmt.Sprintf("etcdtest: no member %d in a %d-member cluster", i, len(c.members)))
	}
	return c.members[i]
}

// Size is the number of members.
func (c *Cluster) Size() int { return len(c.members) }

// Member is member i, for its client URL, Client, Set and the like. Stop
// and restart members through the Cluster, which knows about partitions.
func (c *Cluster) Member(i int) *Server { return c.member(i) }

// URL is member i's client URL.
func (c *Cluster) URL(i int) string { return c.member(i).URL() }

// Endpoints are every member's client URL, in member order.
func (c *Cluster) Endpoints() []string {
	urls := make([]string, len(c.members))
	for i, s := range c.members {
		urls[i] = s.URL()
	}
	return urls
}

// Client is a v2 client that knows every member.
func (c *Cluster) Client() client.KeysAPI { return v2Client(c.Endpoints(), nil) }

// ClusterID is the cluster ID as etcd reports it in X-Etcd-Cluster-Id,
// from the first running member ("" when none runs).
func (c *Cluster) ClusterID() string {
	for _, s := range c.members {
		if id := s.ClusterID(); id != "" {
			return id
		}
	}
	return ""
}

// PeerProxy is the FaultProxy all raft traffic to member i passes
// through: delay it to make the member slow to hear of changes, drip it
// to choke snapshots. Partition and Heal are the way to cut the member
// off entirely (traffic it sends is cut at the other members' proxies).
func (c *Cluster) PeerProxy(i int) *FaultProxy { return c.member(i).peerProxy }

// Leader waits up to a minute for a member that leads with the support
// of a quorum of the members, and returns its index. It tells what the
// members believe now: right after a fault that will cost the leader its
// place (Partition, a delayed PeerProxy), they still follow it until the
// election timeout, so wait for the change:
//
//	testutil.Eventually(t, "a new leader", func() bool { return c.Leader(t) != old })
func (c *Cluster) Leader(tb testing.TB) int {
	tb.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		statuses := make([]*memberStatus, len(c.members))
		for i, s := range c.members {
			if id, lead := s.memberIDs(); id != 0 {
				statuses[i] = &memberStatus{memberID: id, leaderID: lead}
			}
		}
		if i, ok := quorumLeader(statuses); ok {
			return i
		}
		if time.Now().After(deadline) {
			tb.Fatalf("etcdtest: no leader that a quorum of the %d members acknowledges within a minute", len(c.members))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// StopMember shuts member i down cleanly, as SIGTERM does: its client
// connections are cut and, if it leads, it hands leadership over first.
func (c *Cluster) StopMember(i int) {
	c.member(i).shutdown(false, func() { c.cut(i, true) })
	c.restoreCut(i)
}

// KillMember stops member i abruptly, as SIGKILL does: its peers and
// clients lose it at once, it hands nothing over, and a new leader is
// elected only after the election timeout if it led.
func (c *Cluster) KillMember(i int) {
	s := c.member(i)
	if !s.Running() {
		return
	}
	c.cut(i, true)
	s.shutdown(true, nil)
	c.restoreCut(i)
}

// restoreCut puts member i's peer traffic back as the test left it:
// partitioned or not.
func (c *Cluster) restoreCut(i int) {
	c.mu.Lock()
	partitioned := c.partitioned[i]
	c.mu.Unlock()
	c.cut(i, partitioned)
}

// KillLeader waits for a leader, kills it (KillMember) and returns its
// index.
func (c *Cluster) KillLeader(tb testing.TB) int {
	tb.Helper()
	i := c.Leader(tb)
	c.KillMember(i)
	return i
}

// RestartMember starts stopped or killed member i again on the same data
// and ports and waits until it serves requests, which takes a quorum: to
// restart members after the quorum was lost, restart them together with
// RestartMembers.
func (c *Cluster) RestartMember(tb testing.TB, i int) {
	tb.Helper()
	c.RestartMembers(tb, i)
}

// RestartMembers starts the given members together and waits until all
// serve requests. Running members are left alone.
func (c *Cluster) RestartMembers(tb testing.TB, members ...int) {
	tb.Helper()
	for _, i := range members {
		c.member(i)
	}
	if err := c.restart(members...); err != nil {
		tb.Fatalf("etcdtest: %v", err)
	}
}

func (c *Cluster) restart(members ...int) error {
	errs := make([]error, len(members))
	var wg sync.WaitGroup
	for k, i := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.members[i].Restart(); err != nil {
				errs[k] = fmt.Errorf("member %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// Partition cuts member i off from the other members, in both directions,
// until Heal: open peer connections are reset and new ones refused. Its
// clients still reach it. A partitioned follower serves ever older data
// to reads without quorum; a partitioned leader steps down after the
// election timeout and the others elect a new one.
func (c *Cluster) Partition(i int) {
	c.member(i)
	c.mu.Lock()
	c.partitioned[i] = true
	c.mu.Unlock()
	c.cut(i, true)
}

// Heal ends member i's partition; it catches up with the leader.
func (c *Cluster) Heal(i int) {
	c.member(i)
	c.mu.Lock()
	c.partitioned[i] = false
	c.mu.Unlock()
	c.cut(i, false)
}

// cut sets the peer traffic between member i and the others on or off:
// at i's proxy, everything; at the others', what i sends.
func (c *Cluster) cut(i int, on bool) {
	own := c.members[i].peerProxy
	if on {
		own.Drop()
		own.ResetConnections()
	} else {
		own.PassThrough()
	}
	for j, s := range c.members {
		if j != i {
			s.peerProxy.cutOrigin(c.ids[i], on)
		}
	}
}

// close stops every member at once and removes their data.
func (c *Cluster) close() {
	var wg sync.WaitGroup
	for i, s := range c.members {
		if s == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if s.peerProxy != nil && c.ids[i] != "" {
				c.cut(i, true)
				s.shutdown(true, nil)
			}
			s.Close()
		}()
	}
	wg.Wait()
}
