// Package relay serves the read side of etcd's v2 keys API from memory:
// one watch of a prefix upstream (a watch.Watcher) feeds a copy of the
// prefix, and any number of v2 clients read and watch that copy as if it
// were etcd. etcd sees one watcher however many clients wait, and the
// clients keep their answers while etcd is away.
//
// What is served from memory: GET of any key at or below the prefix that
// has no hidden segment (one starting with "_") below it, with every
// parameter etcd takes, and waits (wait=true) on those keys, long polls
// and streams. Everything else goes to the upstream etcd unchanged: keys
// outside the prefix, hidden keys, quorum=true reads, other paths, and
// (with Config.ForwardWrites) writes; without it writes get 403 with
// errorCode 107, as the gate's read-only mode answers.
//
// Answers are etcd's, byte for byte where it matters to a client: the
// same JSON (field order and omissions), status codes, error codes,
// messages, causes and indexes, and the X-Etcd-Index and
// X-Etcd-Cluster-Id headers. docs/relay.md lists every deliberate
// difference. Every answer carries X-Confsync-Data-Age: 0 while the watch
// is current, else the seconds since it last was.
//
// History. The relay keeps the last Config.History events under the
// prefix (1000, etcd's own window, by default). A wait whose waitIndex is
// inside that window is answered at once from it; one below it gets
// etcd's error 401 with etcd's message, so the client re-reads; a future
// one waits. After a full re-read of the prefix (start-up, etcd's history
// cleared, another cluster, a periodic re-read) the relay compares the new
// copy with the one it had, values and indexes: identical means no event
// under the prefix was missed and the history carries on; any difference
// means events were missed, so the history restarts at the new index, and
// every watch that might have needed a missed event ends (a long poll with
// an empty answer, as etcd's shutdown gives, a stream by closing), so that
// its client asks again and meets a 401. A client never skips an event
// without being told.
package relay
