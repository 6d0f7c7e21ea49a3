package gate

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
)

// ACL says who may write which etcd keys, and who may administer etcd
// (its /v2/auth, /v2/members and v3 gateway endpoints).
//
// Rules are keyed by prefix and matched on whole path segments: a rule for
// /conftool covers /conftool and /conftool/x but never /conftoolfoo. The
// longest matching prefix decides. Because a write to a directory (a
// recursive delete, a TTL on the directory) also removes what lies beneath
// it, a write to K is allowed only if every rule for a prefix below K allows
// the writer too.
//
// The file may also set rate limits for some clients or users in place of
// the gate's defaults ([[rate_limit]] entries, see Config.ClientLimit).
type ACL struct {
	file   string
	admins map[string]bool
	rules  []Rule
	root   *aclNode

	clientLimits []clientLimit // longest prefix first
	userLimits   map[string]RateLimit
}

// clientLimit is the rate limit of the clients within a prefix.
type clientLimit struct {
	prefix netip.Prefix
	limit  RateLimit
}

// Rule is one [[acl]] entry of the ACL file.
type Rule struct {
	Prefix    string   `toml:"prefix"`
	Users     []string `toml:"users"`
	Anonymous bool     `toml:"anonymous"`
}

type aclFile struct {
	Admins    []string     `toml:"admins"`
	ACL       []Rule       `toml:"acl"`
	RateLimit []limitEntry `toml:"rate_limit"`
}

// limitEntry is one [[rate_limit]] entry of the ACL file: the limit of
// each of the listed clients (addresses or CIDR prefixes), or of each of
// the listed users.
type limitEntry struct {
	Clients []string `toml:"clients"`
	Users   []string `toml:"users"`
	Rate    *float64 `toml:"rate"`
	Burst   *int     `toml:"burst"`
}

// writers is the set of principals a rule (or an intersection of rules)
// lets write.
type writers struct {
	anyone bool // no credentials needed
	users  map[string]bool
}

func (w *writers) allows(user string) bool {
	return w.anyone || (user != "" && w.users[user])
}

// intersect returns who both w and o let write.
func (w writers) intersect(o writers) writers {
	switch {
	case w.anyone:
		return o
	case o.anyone:
		return w
	}
	both := writers{users: make(map[string]bool)}
	for u := range w.users {
		if o.users[u] {
			both.users[u] = true
		}
	}
	return both
}

// aclNode is one path segment of the rule trie.
type aclNode struct {
	children map[string]*aclNode
	rule     *writers // the rule for exactly this prefix, if any
	below    writers  // who every rule strictly beneath this node allows
}

// LoadACL reads and checks an ACL file.
func LoadACL(file string) (*ACL, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("acl: %w", err)
	}
	return ParseACL(file, data)
}

// ParseACL parses ACL TOML; name is used in errors. Unknown keys, missing or
// malformed prefixes, duplicate prefixes and rules that are both anonymous
// and name users are refused.
func ParseACL(name string, data []byte) (*ACL, error) {
	var f aclFile
	md, err := toml.Decode(string(data), &f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		keys := make([]string, len(undecoded))
		for i, k := range undecoded {
			keys[i] = k.String()
		}
		return nil, fmt.Errorf("%s: unknown key %s (known keys: admins; prefix, users, anonymous in [[acl]]; clients, users, rate, burst in [[rate_limit]])",
			name, strings.Join(keys, ", "))
	}
	a := &ACL{file: name, admins: make(map[string]bool), root: &aclNode{}, userLimits: make(map[string]RateLimit)}
	for _, u := range f.Admins {
		if err := checkUserName(u); err != nil {
			return nil, fmt.Errorf("%s: admins: %w", name, err)
		}
		a.admins[u] = true
	}
	seen := make(map[string]bool)
	for i, r := range f.ACL {
		if err := checkRule(r); err != nil {
			return nil, fmt.Errorf("%s: [[acl]] entry %d (prefix %q): %w", name, i+1, r.Prefix, err)
		}
		if seen[r.Prefix] {
			return nil, fmt.Errorf("%s: [[acl]] entry %d: prefix %q appears twice", name, i+1, r.Prefix)
		}
		seen[r.Prefix] = true
		a.rules = append(a.rules, r)
		a.insert(r)
	}
	a.root.computeBelow()
	if err := a.addLimits(f.RateLimit); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return a, nil
}

// addLimits checks and indexes the [[rate_limit]] entries.
func (a *ACL) addLimits(entries []limitEntry) error {
	seenClients := make(map[netip.Prefix]bool)
	for i, e := range entries {
		where := fmt.Sprintf("[[rate_limit]] entry %d", i+1)
		limit, err := e.limit()
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if (len(e.Clients) == 0) == (len(e.Users) == 0) {
			return fmt.Errorf("%s: give either clients (addresses or CIDR prefixes) or users", where)
		}
		for _, c := range e.Clients {
			p, err := parseClientPrefix(c)
			if err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
			if seenClients[p] {
				return fmt.Errorf("%s: client %s has a limit already", where, p)
			}
			seenClients[p] = true
			a.clientLimits = append(a.clientLimits, clientLimit{p, limit})
		}
		for _, u := range e.Users {
			if err := checkUserName(u); err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
			if _, dup := a.userLimits[u]; dup {
				return fmt.Errorf("%s: user %q has a limit already", where, u)
			}
			a.userLimits[u] = limit
		}
	}
	slices.SortStableFunc(a.clientLimits, func(x, y clientLimit) int { return cmp.Compare(y.prefix.Bits(), x.prefix.Bits()) })
	return nil
}

func (e limitEntry) limit() (RateLimit, error) {
	switch {
	case e.Rate == nil:
		return RateLimit{}, errors.New("rate is required (requests per second; 0 for no limit)")
	case math.IsNaN(*e.Rate) || math.IsInf(*e.Rate, 0) || *e.Rate < 0:
		return RateLimit{}, fmt.Errorf("rate %v: want requests per second, 0 for no limit", *e.Rate)
	case *e.Rate == 0:
		return RateLimit{}, nil
	case e.Burst == nil || *e.Burst < 1:
		return RateLimit{}, errors.New("burst is required with a rate: how many requests may come at once (at least 1)")
	}
	return RateLimit{Rate: *e.Rate, Burst: *e.Burst}, nil
}

// parseClientPrefix reads an address (a prefix of one) or a CIDR prefix.
func parseClientPrefix(s string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("client %q: want an IP address or a CIDR prefix such as 10.64.0.0/16", s)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("client %q: write IPv4 prefixes as such (10.64.0.0/16)", s)
	}
	return p.Masked(), nil
}

func checkRule(r Rule) error {
	p := r.Prefix
	switch {
	case p == "":
		return errors.New("prefix is required")
	case p[0] != '/':
		return errors.New("prefix must start with / (it is an etcd key path such as /conftool)")
	case strings.ContainsAny(p, "*?["):
		return errors.New("prefix must be a plain key path; wildcards are not needed since a prefix covers everything beneath it")
	case p != "/" && strings.HasSuffix(p, "/"):
		return fmt.Errorf("prefix must not end in /; write %q (prefixes match whole path segments)", strings.TrimRight(p, "/"))
	case path.Clean(p) != p:
		return fmt.Errorf("prefix is not a clean path; write %q", path.Clean(p))
	}
	if r.Anonymous && len(r.Users) > 0 {
		return errors.New("anonymous = true lets anyone write; remove users, or remove anonymous to require them")
	}
	for _, u := range r.Users {
		if err := checkUserName(u); err != nil {
			return err
		}
	}
	return nil
}

func checkUserName(u string) error {
	if u == "" || strings.ContainsAny(u, ": \t") {
		return fmt.Errorf("bad user name %q (must be non-empty, without colon or blanks)", u)
	}
	return nil
}

func (a *ACL) insert(r Rule) {
	n := a.root
	for seg := range segments(r.Prefix) {
		child := n.children[seg]
		if child == nil {
			if n.children == nil {
				n.children = make(map[string]*aclNode)
			}
			child = &aclNode{}
			n.children[seg] = child
		}
		n = child
	}
	w := &writers{anyone: r.Anonymous, users: make(map[string]bool)}
	for _, u := range r.Users {
		w.users[u] = true
	}
	n.rule = w
}

// computeBelow fills in n.below for n and its subtree and returns who every
// rule at or beneath n allows.
func (n *aclNode) computeBelow() writers {
	n.below = writers{anyone: true}
	for _, c := range n.children {
		n.below = n.below.intersect(c.computeBelow())
	}
	if n.rule != nil {
		return n.below.intersect(*n.rule)
	}
	return n.below
}

// segments yields the non-empty segments of a slash-separated path.
func segments(p string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for p != "" {
			var seg string
			seg, p, _ = strings.Cut(p, "/")
			if seg != "" && !yield(seg) {
				return
			}
		}
	}
}

// MayWrite reports whether user may write key; user "" is an anonymous
// client. key is an etcd key path such as /conftool/v1/x.
func (a *ACL) MayWrite(key, user string) bool {
	n := a.root
	rule := n.rule
	for seg := range segments(key) {
		n = n.children[seg]
		if n == nil {
			break
		}
		if n.rule != nil {
			rule = n.rule
		}
	}
	if rule == nil || !rule.allows(user) {
		return false
	}
	return n == nil || n.below.allows(user)
}

// ClientLimit returns the rate limit the file sets for a client address,
// from the entry with the longest prefix holding it, and whether there is
// one.
func (a *ACL) ClientLimit(addr netip.Addr) (RateLimit, bool) {
	addr = addr.Unmap()
	for _, c := range a.clientLimits {
		if c.prefix.Contains(addr) {
			return c.limit, true
		}
	}
	return RateLimit{}, false
}

// UserLimit returns the rate limit the file sets for a user, and whether
// there is one.
func (a *ACL) UserLimit(user string) (RateLimit, bool) {
	l, ok := a.userLimits[user]
	return l, ok
}

// IsAdmin reports whether user may write etcd's own endpoints.
func (a *ACL) IsAdmin(user string) bool { return user != "" && a.admins[user] }

// Rules returns the rules in file order.
func (a *ACL) Rules() []Rule { return slices.Clone(a.rules) }

// File is the path the ACL was loaded from.
func (a *ACL) File() string { return a.file }

// Users lists every user the ACL names, admins included, sorted.
func (a *ACL) Users() []string {
	var users []string
	for u := range a.admins {
		users = append(users, u)
	}
	for _, r := range a.rules {
		users = append(users, r.Users...)
	}
	slices.Sort(users)
	return slices.Compact(users)
}

// denyAll is the ACL of a gate started without -acl: no write is allowed.
func denyAll() *ACL {
	return &ACL{admins: map[string]bool{}, root: &aclNode{below: writers{anyone: true}}}
}
