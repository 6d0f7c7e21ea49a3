package mirror

import (
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/internal/sdnotify"
)

// Config describes one replication: a prefix of the source cluster copied
// under a prefix of the destination cluster.
type Config struct {
	// Source and Destination say how to reach the two clusters.
	Source, Destination etcd.Config

	// Notifier tells systemd when the mirror is replicating (or standing
	// by), how it is doing, and that its loop turns (nil, or outside
	// systemd: nothing).
	Notifier *sdnotify.Notifier

	// SourcePrefix is the subtree replicated ("/" by default).
	SourcePrefix string
	// DestinationPrefix is where it lands ("/replica" by default).
	DestinationPrefix string
	// Strip drops the source prefix from keys before the destination
	// prefix is put in front: with Strip, /conftool/x goes to /replica/x;
	// without, to /replica/conftool/x.
	Strip bool
	// IgnoreKeys is a regular expression (RE2 syntax) that must match a
	// whole source key for the key to be left alone. Events on ignored keys
	// are not applied but still move the index forward.
	IgnoreKeys string

	// Reload resynchronises the destination before streaming: every key is
	// compared and only the differences are written. Nothing is erased
	// first.
	Reload bool

	// Concurrency is how many destination writes may be in flight at once
	// (default 16). Writes to the same key, or to a directory and a key
	// inside it, are always applied in source order.
	Concurrency int
	// ReadAhead is how many source polls may be in flight while catching
	// up (default 32; 1 reads one event after another). Each poll costs a
	// round trip to the source, so a distant source wants a wider window.
	ReadAhead int
	// PollTimeout bounds one long poll of the source (default 5s). When a
	// poll ends without an event, the index etcd proved quiet is recorded:
	// the shorter the timeout, the more activity elsewhere in the source
	// cluster the mirror can ride out without leaving etcd's 1000-event
	// history.
	PollTimeout time.Duration
	// StallTimeout is how long the mirror may go without progress (an
	// applied event, a confirmed quiet poll, a resync step) before its
	// health check fails (default 2m).
	StallTimeout time.Duration
	// MaxBackoff caps the wait between retries of a failing request
	// (default 10s).
	MaxBackoff time.Duration

	// SourceAPI and DestinationAPI are "v2" (the default) or "v3". v3 to
	// v3 and v2 to v3 are supported; v3 to v2 is refused by New.
	SourceAPI, DestinationAPI string

	// LockTTL is the TTL of the lock the mirror holds on the destination
	// (default 10s, whole seconds, at least 3s). The lock is renewed every
	// third of it; a mirror that could not renew it stops writing a second
	// before it can expire.
	LockTTL time.Duration
	// Standby makes Run wait while another mirror holds the lock and take
	// over when it expires. Without it, Run returns a *LockedError naming
	// the holder once it has seen the holder renew the lock (a lock left
	// by a dead mirror is waited out: it expires within LockTTL).
	Standby bool
	// Version is recorded in the lock, so that an operator knows what
	// holds a destination.
	Version string

	// MetricsURL labels the etcdmirror_* metrics (url="..."), as
	// etcdmirror labels them with the destination URL. Default: the
	// destination endpoints joined by commas.
	MetricsURL string

	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.SourcePrefix == "" {
		c.SourcePrefix = "/"
	}
	if c.DestinationPrefix == "" {
		c.DestinationPrefix = "/replica"
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 16
	}
	if c.ReadAhead <= 0 {
		c.ReadAhead = 32
	}
	if c.PollTimeout <= 0 {
		c.PollTimeout = 5 * time.Second
	}
	if c.StallTimeout <= 0 {
		c.StallTimeout = 2 * time.Minute
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 10 * time.Second
	}
	if c.SourceAPI == "" {
		c.SourceAPI = apiV2
	}
	if c.DestinationAPI == "" {
		c.DestinationAPI = apiV2
	}
	if c.LockTTL <= 0 {
		c.LockTTL = 10 * time.Second
	}
	if c.MetricsURL == "" {
		c.MetricsURL = strings.Join(c.Destination.Endpoints, ",")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

const (
	apiV2 = "v2"
	apiV3 = "v3"
)

// check refuses settings that cannot work, as a *ConfigError.
func (c *Config) check() error {
	for name, api := range map[string]string{"source": c.SourceAPI, "destination": c.DestinationAPI} {
		if api != apiV2 && api != apiV3 {
			return configErrorf("%s API %q: want v2 or v3", name, api)
		}
	}
	if c.SourceAPI == apiV3 && c.DestinationAPI == apiV2 {
		return configErrorf("replicating a v3 source into a v2 destination is not supported (v3 keys have no v2 directories); use a v3 destination")
	}
	if c.LockTTL < 3*time.Second || c.LockTTL%time.Second != 0 {
		return configErrorf("lock TTL %s: must be whole seconds, at least 3s", c.LockTTL)
	}
	return nil
}

// CheckIgnoreRegex reports whether expr is usable as IgnoreKeys.
func CheckIgnoreRegex(expr string) error {
	_, err := compileIgnore(expr)
	return err
}

// compileIgnore turns the ignore expression into one that must match a
// whole key, as Python's re.fullmatch does for etcdmirror.
func compileIgnore(expr string) (*regexp.Regexp, error) {
	if expr == "" {
		return nil, nil
	}
	re, err := regexp.Compile(`^(?:` + expr + `)$`)
	if err != nil {
		return nil, configErrorf("--src-ignore-keys-regex %q: %v (RE2 syntax: no look-around or back-references)", expr, err)
	}
	return re, nil
}
