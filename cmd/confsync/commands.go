package main

import (
	"flag"
)

func renderCommand() command {
	return command{
		name:    "render",
		summary: "render confd resources once, or one template to stdout",
		synopsis: `confsync render [-confdir DIR] [-backend etcd|etcdv3|file|env] [-node URL ...] [flags]
confsync render -template FILE [-prefix P] -key K [-key K ...] [backend flags]`,
		description: `Reads every resource in DIR/conf.d (confd's [template] TOML), fetches the
keys they list with one recursive read per distinct subtree, renders each
template in memory and writes the files that changed: stage file in the
destination's directory, fsync, mode and owner, check_cmd on the stage file,
rename, fsync of the directory, then each distinct reload_cmd once. A file
whose content, mode and owner already match is not touched.

A key listed in a resource that does not exist in etcd is empty, not an
error; the template decides (getv without a default fails, exists guards).

Settings come from defaults < config file (confd.toml keys) < environment
(CONFSYNC_<FLAG> or CONFD_<FLAG>, e.g. CONFSYNC_NODE, CONFD_CLIENT_CAKEYS)
< flags.

With -template, renders one template file for the given -prefix and -key
list to stdout, without conf.d.

Exit status: 0 every resource is fine; 1 a resource failed (fetch, template,
write, check or reload; the others were still processed); 2 usage or
configuration error (bad flag or config file, missing conf.d, or a resource
file that does not load - the resources that did load were processed).`,
		run: runRender,
		flags: func() *flag.FlagSet {
			var r renderFlags
			return renderFlagSet(&r)
		},
	}
}

func agentCommand() command {
	return command{
		name:    "agent",
		summary: "keep confd resources rendered as etcd changes (the per-host daemon)",
		synopsis: `confsync agent [-confdir DIR] [-node URL ...] [-wait MIN:MAX] [-state-dir DIR] [flags]
confsync agent -interval SECONDS [flags]
confsync agent -onetime [flags]`,
		description: `Loads the resources in DIR/conf.d like confsync render, then keeps their
files current with ONE watch of etcd, however many resources and subtrees
they read: one recursive read, then one recursive watch of the longest
common ancestor of every key read (or of -watch-prefix), on one connection.
Events are routed in memory to the subtrees (roots) the resources read; an
event re-renders only the resources whose keys it touches, and an event no
resource reads costs no render and no write.

The watch starts as a long poll and streams (stream=true: events arrive on
one open answer, no request per event) once etcd has proved, by sending an
event it already holds at once, that nothing on the way (a buffering proxy)
holds a stream back; otherwise it keeps to long polls (-watch-stream=false
always does). Updates are never missed: the watch resumes from the last
index, re-reads when etcd's history no longer covers it (error 401), when
the cluster changes or a member is behind what was already seen (read
again through raft, so data never goes back in time), and every
-resync-interval. With several -node, a member that fails or hangs (no
answer to a watch within 5s) is left for the next.

Each root's last-known-good data is saved in -state-dir. Started while etcd
is down, the agent renders from that cache, reports the data as stale and
keeps retrying; when etcd returns it converges without a restart.

Failed renders, checks and reloads are retried with backoff until they
succeed. Resources sharing a reload_cmd settle together (-wait, or a
resource's own wait = "MIN:MAX") and reload once. Resources sharing a dest
never run at the same time.

SIGHUP, or any change under conf.d/ or templates/, reloads resources; a
file that no longer loads keeps its previous version running and is
reported. SIGTERM lets running commands finish (-grace), then exits 0.

-metrics-addr serves /metrics (confd_resource_healthy{name} and
confd_resource_error_timestamp_seconds{name} as the site's alerts expect,
plus confsync_* metrics), /healthz, /readyz (every resource rendered once,
from etcd or cache) and /status (JSON, read by confsync check).

-serve ADDR serves etcd's v2 read API of the watched prefix from the agent's
own copy, as confsync relay does (HTTPS with -serve-tls-cert and
-serve-tls-key): local readers such as pybal read the host's agent and keep
their configuration across their own restarts while etcd is down.

With -interval, every root is re-read on that period instead of watched.
-onetime runs confsync render and exits with its status.`,
		run: runAgent,
		flags: func() *flag.FlagSet {
			var f agentFlags
			return agentFlagSet(&f)
		},
	}
}

// extraCommands are the commands other than render.
func extraCommands() []command {
	return []command{agentCommand(), checkCommand(), demoCommand(), mirrorCommand(), gateCommand(), relayCommand(), statusCommand()}
}

// demoDoc describes the demo in both builds.
func demoDoc() command {
	return command{
		name:     "demo",
		summary:  "play the whole system on real data (binaries built with -tags demo)",
		synopsis: `go run -tags demo ./cmd/confsync demo [-out demo-out] [-keep] [-keys 2000] [-confdir DIR]`,
		description: `Starts two embedded etcd v2 clusters (a master and a replica) on loopback
ports, seeds the master with a generated conftool tree, runs the mirror from
master to replica, the gate in read-only mode in front of the replica, and
an agent rendering the example confdir from the replica (through the gate)
into -out. Then it plays a short story, printing the time each step took and
the diff of every file it changed: a host is taken out of service, a
discovery record fails over, a write through the read-only gate is refused,
the master goes away and returns, the replica goes away (files stay,
staleness shows in /status), the agent restarts while it is away (every
file comes back from its cache), and the replica returns (everything
converges).

Ctrl-C stops everything cleanly at any point. With -keep, everything keeps
running after the story, with the URL of every endpoint printed.

The production binary (go build ./cmd/confsync) does not contain the demo:
the demo embeds etcd's server, which a production host never needs.`,
	}
}
