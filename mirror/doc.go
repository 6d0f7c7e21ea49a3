// Package mirror replicates a prefix of one etcd cluster into another. It
// replaces Wikimedia's etcdmirror: same replication index key, same metric
// names (the command line, with etcdmirror's flags, is confsync mirror in
// cmd/confsync). What it adds is strictness without fragility, a lock that
// keeps a destination to one writer, and etcd v3: v3 to v3, and v2 to v3
// (Config.SourceAPI, Config.DestinationAPI). The v2 destination is
// described first; see "v3 destinations" for what differs.
//
// # Where progress is kept
//
// On the destination, /__replication/<destination prefix> (or
// /__replication/__ROOT__ for "/") holds the last source index whose events
// are all on the destination, in decimal, as etcdmirror keeps it. Streaming
// resumes at that index + 1. Beside it, <index key>.source holds a JSON
// document with what etcdmirror did not record: the source cluster ID and
// prefix (a mirror started against another cluster, or with another
// mapping, refuses to resume), the API the index counts in, the replay
// window (below), and which process writes the destination. Beside them,
// <index key>.lock is the destination lock (lock.go): one mirror writes a
// destination at a time, and a mirror that cannot renew the lock stops
// writing before anyone else can take it. The keys start with "_" and are
// therefore hidden from listings and from watches of "/".
//
// # Applying events
//
// All v2 actions replicate: set, create, update, compareAndSwap, delete,
// compareAndDelete and expire, for keys and directories, and in-order keys
// keep their generated names. Each event carries the key's state before the
// change (prevNode, or none for a new key); the mirror applies the change
// only if the destination holds that state, in one conditional request when
// etcd can express it (prevExist=false, prevValue) and otherwise by reading
// the key and writing with prevIndex pinned on what it read (etcd rejects an
// empty prevValue with error 201). Directories have no conditional delete
// or TTL update; there the mirror reads, then writes, relying on being the
// destination's only writer.
//
// A destination that holds the event's result already counts as applied,
// so an event replayed after a crash is harmless. A destination that holds
// neither state has diverged: replication stops with a *DivergenceError
// naming the key, the expected and found values and the event's index, and
// the index key stays below that event. The remedy is --reload, which never
// erases anything.
//
// # Crash safety and concurrency
//
// Events on unrelated keys are applied concurrently; events on one key, or
// on a directory and keys inside it, in source order. The index key only
// ever records a watermark below which every event is applied, written a
// few times per second rather than once per event. After an unclean stop a
// key can therefore be several events ahead of the index key. Before the
// mirror lets that happen (a second event on a key whose previous event is
// not yet recorded), it writes the index up to which events may already be
// applied into the state key; on restart, events up to there are replayed
// leniently: a destination already past an event is accepted. Everything
// after the window is checked strictly.
//
// # Quiet prefixes and lost history
//
// etcd keeps only the last 1000 events of the whole cluster. When a long
// poll of the source prefix ends without an event, etcd has proved the
// prefix quiet up to the index at which it registered the watch; the mirror
// records that index, so activity elsewhere in the cluster does not push it
// out of the history window. If the window is lost anyway (error 401: the
// mirror was down too long, or more than 1000 events happened elsewhere
// within one poll timeout), the mirror resynchronises by itself: it reads
// the source prefix at one index, compares it with the destination, writes
// only the keys that differ, deletes only the keys the source no longer
// has, records that index and streams on. --reload does the same on demand.
// A key equal on both sides is never touched, so a consumer of the replica
// never sees an empty or partial prefix.
//
// # Policies
//
// TTLs: a replicated key expires when the source key does. The TTL written
// is recomputed from the event's absolute expiration (the event's own ttl
// field is stale when the event is replayed from history), at least one
// second. etcd does not notify watchers of TTL refreshes (refresh=true), so
// a key kept alive that way on the source expires on the replica at its
// previous deadline; the source's expire event, which does arrive, removes
// it in any case. A key that had a TTL and is missing on the destination
// counts as matching its prior state (the replica's clock ran out first).
// etcd 3.x refuses TTL changes of existing directories; such a change is
// logged and the directory keeps its TTL.
//
// Hidden keys (a path segment below the source prefix that starts with
// "_") are never replicated: etcd leaves them out of listings and live
// watches, though not out of history replays, and the mirror skips them in
// all three so that they can never cause a divergence.
//
// Ignored keys (--src-ignore-keys-regex, matched against the whole source
// key) are not applied, but their events still move the index on.
// Destination keys whose source keys are ignored are never deleted.
//
// Events from outside the prefix that etcd's history replay leaks into the
// watch (the deletion of a sibling directory whose name is a string prefix,
// /conf for /conftool) are ignored; the deletion of a directory above the
// prefix deletes the destination's copy.
//
// # v3 destinations
//
// A v3 destination receives changes (v3stream.go): one per source index (a
// v2 event) or revision (a v3 transaction), as puts and deletes of
// destination keys. Consecutive changes go into one destination txn that
// compares every key with the state the source says it held before (and
// the lock's create revision: a fence), writes the keys and the index key
// together. The index therefore never lags the data and needs no replay
// window; a txn whose comparisons fail is examined key by key: a key
// already holding its result is a replay, one holding neither state has
// diverged. v2 directories have no v3 counterpart (their deletion deletes
// the keys below them); v2 TTLs become leases; v3 leases are not copied
// (the source's lease expiry arrives as delete events). A v3 source is
// watched with prev_kv from the recorded revision; compaction past it
// triggers the resync, and progress notifications prove quiet stretches.
//
// Transient failures of either cluster (refused connections, timeouts, 5xx,
// leader elections) are retried with capped exponential backoff and jitter,
// the client moving to the next endpoint of the cluster each time; they
// never end replication. /healthz fails once no progress was made for the
// stall timeout.
package mirror
