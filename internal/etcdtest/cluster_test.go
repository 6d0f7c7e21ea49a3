package etcdtest_test

import (
	"context"
	"io"
	"net/http"
	"testing"

	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
)

func set(t *testing.T, c *etcdtest.Cluster, key, value string) {
	t.Helper()
	if _, err := c.Client().Set(context.Background(), key, value, nil); err != nil {
		t.Fatalf("set %s=%s: %v", key, value, err)
	}
}

func TestClusterSurvivesLeaderKill(t *testing.T) {
	c := etcdtest.NewCluster(t, 3)
	if c.ClusterID() == "" || len(c.Endpoints()) != 3 {
		t.Fatalf("cluster ID %q, endpoints %v", c.ClusterID(), c.Endpoints())
	}
	set(t, c, "/k", "1")
	old := c.KillLeader(t)
	if c.Member(old).Running() {
		t.Fatal("killed leader still running")
	}
	if next := c.Leader(t); next == old {
		t.Fatalf("leader is still the killed member %d", old)
	}
	set(t, c, "/k", "2")
	c.RestartMember(t, old)
	testutil.Eventually(t, "the old leader to catch up", func() bool { return getLocal(c.URL(old), "/k") == "2" })
}

func TestClusterPartitionedFollowerLags(t *testing.T) {
	c := etcdtest.NewCluster(t, 3)
	leader := c.Leader(t)
	follower := (leader + 1) % 3
	set(t, c, "/k", "old")
	testutil.Eventually(t, "the follower to have the first write", func() bool { return getLocal(c.URL(follower), "/k") == "old" })

	c.Partition(follower)
	if _, err := c.Member(leader).Client().Set(context.Background(), "/k", "new", nil); err != nil {
		t.Fatalf("write with one member partitioned: %v", err)
	}
	testutil.Eventually(t, "the leader to apply the write", func() bool { return getLocal(c.URL(leader), "/k") == "new" })
	if got := getLocal(c.URL(follower), "/k"); got != "old" {
		t.Fatalf("partitioned follower answers %q to a read without quorum, want the old value", got)
	}

	c.Heal(follower)
	testutil.Eventually(t, "the healed follower to catch up", func() bool { return getLocal(c.URL(follower), "/k") == "new" })
}

func TestClusterPartitionedLeaderLosesLeadership(t *testing.T) {
	c := etcdtest.NewCluster(t, 3)
	old := c.Leader(t)
	c.Partition(old)
	testutil.Eventually(t, "another leader", func() bool { return c.Leader(t) != old })
	set(t, c, "/k", "after")
	c.Heal(old)
	testutil.Eventually(t, "the healed member to catch up", func() bool { return getLocal(c.URL(old), "/k") == "after" })
}

func TestClusterStopMemberCutsItsWatches(t *testing.T) {
	c := etcdtest.NewCluster(t, 3)
	i := (c.Leader(t) + 1) % 3
	resp, err := http.Get(c.URL(i) + "/v2/keys/w?wait=true")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	ended := make(chan struct{})
	go func() {
		io.Copy(io.Discard, resp.Body)
		close(ended)
	}()
	c.StopMember(i)
	<-ended // a watch left hanging would block here until the test times out
	c.RestartMember(t, i)
	set(t, c, "/w", "x")
	testutil.Eventually(t, "the restarted member to serve", func() bool { return getLocal(c.URL(i), "/w") == "x" })
}

func TestClusterRestartsAfterFullOutage(t *testing.T) {
	c := etcdtest.NewCluster(t, 3)
	set(t, c, "/k", "kept")
	for i := range c.Size() {
		c.StopMember(i)
	}
	c.RestartMembers(t, 0, 1, 2)
	c.Leader(t)
	for i := range c.Size() {
		testutil.Eventually(t, "member to serve the data again", func() bool { return getLocal(c.URL(i), "/k") == "kept" })
	}
}
