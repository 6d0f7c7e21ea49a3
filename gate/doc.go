// Package gate is a TLS and basic-auth reverse proxy in front of etcd's v2
// API: `confsync gate`. It replaces the nginx proxy the site put in front of
// etcd when etcd v2's own auth (a bcrypt check on every request) proved too
// slow, and fixes that proxy's holes.
//
// # Decisions
//
// Reads (exactly GET, HEAD and OPTIONS) are forwarded untouched, to any
// path. Everything else is a write, and so is a read carrying a
// method-override header asking for another method or a protocol upgrade
// (etcd's v3 gateway turns any websocket into a POST). For a write:
//
//  1. In read-only mode: 403, errorCode 107.
//  2. A path that etcd would not act on as written (dot segments, doubled
//     slashes, an encoded slash) gets a 307 to the cleaned path, as etcd
//     itself answers most of them; nothing is forwarded, and a client
//     following the redirect is judged again on the clean path. (Sent
//     straight to etcd 3.5, /v2/keys/a%2F..%2Fb writes /b without any
//     redirect.)
//  3. /v2/keys/K: allowed if the ACL rule with the longest prefix covering
//     K (whole segments) allows the user, and every rule for a prefix below
//     K does too (a recursive delete of K removes those keys). A rule may
//     allow anonymous writes.
//  4. Any other path (/v2/auth/*, /v2/members, /v3/*, ...): only admins.
//  5. Otherwise 401 with WWW-Authenticate: Basic realm="etcd", errorCode 110.
//
// /metrics is etcd's read-only metrics handler and passes with any method,
// as it did through nginx.
//
// # Proxying
//
// Headers and bodies pass through unchanged (X-Etcd-Index, X-Raft-*,
// X-Etcd-Cluster-Id), plus X-Forwarded-For and X-Real-IP; hop-by-hop
// headers (Connection, Upgrade, ...) do not, so websockets are not proxied,
// as through nginx. Streamed responses, watches (wait=true) among them, are
// flushed as they arrive, headers at once; nothing times out a watch.
// Watches are streamed on the hijacked client connection, which goes back
// to the server afterwards if the client keeps it alive (see watch.go);
// HTTP/1.0 clients such as pybal get close-delimited bodies. Upstream
// connections are pooled and kept alive (see forward.go). A request body
// is read whole, within a deadline that grows with the bytes received,
// before anything is sent: etcd never sees part of one (see admit.go).
//
// # Failover
//
// Several upstreams may be given (every member of a cluster). The gate
// keeps to one and gives up on it when it cannot be reached, breaks a
// connection, does not start answering within Config.UpstreamTimeout, or
// fails etcd's /health (checked every 2s: a member without a leader serves
// ever older data). Reads then move to the next upstream at once; a
// request that may have reached etcd is never replayed, and a write
// failing that way is told it may have been applied. Watches streaming
// from an upstream given up on end without an event, as etcd ends them,
// so their clients watch again from the same index, elsewhere.
//
// # Hostile clients
//
// Requests are rate limited per client address and writes per
// authenticated user (token buckets, limit.go; 429 with Retry-After).
// Watches are charged only when answered at once, from etcd's history:
// a long poll that waits costs nothing. A user the htpasswd file lacks is
// checked against a dummy hash like its entries, so names cannot be
// probed by timing. The access log is bounded in size (rotation) and rate
// (dropped lines are counted and summarised); see accesslog.go.
//
// Responses to GET /v2/members, /v2/members/leader and /v2/machines list
// the gate's own URL as every member's client URL: etcdctl and the v2 client
// library otherwise sync the member list and then talk to the addresses
// etcd advertises, bypassing the gate.
//
// # Reloading
//
// The read-only flag file, the ACL, the htpasswd file and the certificates
// are watched (fsnotify on their directories) and reloaded on change, and
// all at once by Server.Reload (SIGHUP in Run, which also reopens the
// access log). A file that fails to load leaves the previous version in
// force.
//
// The command line (flags, manual, logger) lives in cmd/confsync; Run is
// the command's whole life given a Config.
package gate
