package gate

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"hash"
	"maps"
	"os"
	"strings"
	"sync"

	"golang.org/x/crypto/bcrypt"
)

// Htpasswd is the set of users of an Apache htpasswd file.
//
// Checking a bcrypt hash costs tens of milliseconds by design, which is what
// made etcd v2's own auth unusable for busy clients. Htpasswd therefore
// remembers, per user, a keyed hash (HMAC-SHA256 under a random key made
// when the file is loaded) of the last password that verified; a request
// presenting the same password is accepted after one HMAC and a
// constant-time compare. The cache lives and dies with the loaded file, so
// a changed file drops it. Plain passwords are never stored.
//
// A user the file does not know is checked against a dummy hash of the
// scheme and cost most of the file's entries use, so that refusing an
// unknown user takes as long as refusing a known one with a wrong
// password, and user names cannot be probed by timing.
type Htpasswd struct {
	file   string
	hashes map[string]passwordHash
	dummy  passwordHash // nil for a file without users
	kinds  map[string]int

	key  []byte
	macs sync.Pool // of hash.Hash keyed with key

	mu       sync.RWMutex
	verified map[string][sha256.Size]byte
}

type passwordHash interface {
	matches(password string) bool
	// kind names the scheme and cost, e.g. "apr1" or "bcrypt cost 10".
	kind() string
}

type bcryptHash []byte

func (h bcryptHash) matches(password string) bool {
	return bcrypt.CompareHashAndPassword(h, []byte(password)) == nil
}

func (h bcryptHash) kind() string {
	cost, _ := bcrypt.Cost(h) // checked by parseHash
	return fmt.Sprintf("bcrypt cost %d", cost)
}

type apr1Hash struct{ full, salt string }

func (h apr1Hash) matches(password string) bool {
	got := md5Crypt([]byte(password), []byte(h.salt), apr1Magic)
	return subtle.ConstantTimeCompare([]byte(got), []byte(h.full)) == 1
}

func (apr1Hash) kind() string { return "apr1" }

// dummyHash makes a hash of the same scheme and cost as like, of a random
// password nobody knows.
func dummyHash(like passwordHash) (passwordHash, error) {
	secret := make([]byte, 18)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	password := []byte(base64.RawStdEncoding.EncodeToString(secret))
	switch h := like.(type) {
	case bcryptHash:
		cost, _ := bcrypt.Cost(h)
		out, err := bcrypt.GenerateFromPassword(password, cost)
		return bcryptHash(out), err
	case apr1Hash:
		salt := make([]byte, 8)
		for i := range salt {
			salt[i] = cryptAlphabet[int(secret[i])%len(cryptAlphabet)]
		}
		return apr1Hash{full: md5Crypt(password, salt, apr1Magic), salt: string(salt)}, nil
	}
	return nil, fmt.Errorf("no dummy for %T", like)
}

// LoadHtpasswd reads an htpasswd file: one "user:hash" per line, blank lines
// and lines starting with # ignored. Hashes must be bcrypt ($2y$, $2b$, $2a$;
// `htpasswd -B`) or apr1 ($apr1$; `htpasswd -m`); anything else is refused
// with the file and line, because a hash the gate cannot check would lock
// that user out without saying why.
func LoadHtpasswd(file string) (*Htpasswd, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("htpasswd: %w", err)
	}
	return ParseHtpasswd(file, data)
}

// ParseHtpasswd parses htpasswd content; name is used in errors.
func ParseHtpasswd(name string, data []byte) (*Htpasswd, error) {
	h := &Htpasswd{
		file:     name,
		hashes:   make(map[string]passwordHash),
		kinds:    make(map[string]int),
		key:      make([]byte, 32),
		verified: make(map[string][sha256.Size]byte),
	}
	if _, err := rand.Read(h.key); err != nil {
		return nil, fmt.Errorf("htpasswd: cache key: %w", err)
	}
	h.macs.New = func() any { return hmac.New(sha256.New, h.key) }

	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == '#' {
			continue
		}
		user, stored, ok := strings.Cut(text, ":")
		if !ok || user == "" || stored == "" {
			return nil, fmt.Errorf("%s:%d: want user:hash", name, line)
		}
		if _, dup := h.hashes[user]; dup {
			return nil, fmt.Errorf("%s:%d: user %q appears twice", name, line, user)
		}
		ph, err := parseHash(stored)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: user %q: %w", name, line, user, err)
		}
		h.hashes[user] = ph
		h.kinds[ph.kind()]++
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if like := h.commonest(); like != nil {
		dummy, err := dummyHash(like)
		if err != nil {
			return nil, fmt.Errorf("%s: dummy hash: %w", name, err)
		}
		h.dummy = dummy
	}
	return h, nil
}

// commonest returns a hash of the scheme and cost most entries use (of
// the costlier on a tie), nil for a file without users.
func (h *Htpasswd) commonest() passwordHash {
	var best passwordHash
	for _, ph := range h.hashes {
		if best == nil {
			best = ph
			continue
		}
		n, m := h.kinds[ph.kind()], h.kinds[best.kind()]
		if n > m || (n == m && ph.kind() > best.kind()) {
			best = ph
		}
	}
	return best
}

// Kinds counts the entries by hash scheme and cost ("apr1", "bcrypt cost
// 10"). A file mixing kinds lets a wrong password's timing tell users of
// one kind from the others (though not from unknown users, who are timed
// like the commonest kind).
func (h *Htpasswd) Kinds() map[string]int { return maps.Clone(h.kinds) }

// maxBcryptCost is the costliest bcrypt hash accepted: cost 14 takes about
// a second per check (cost 10, etcd v2's own, about 70 ms).
const maxBcryptCost = 14

func parseHash(stored string) (passwordHash, error) {
	const advice = "only bcrypt ($2y$, `htpasswd -B`) and apr1 ($apr1$, `htpasswd -m`) are supported"
	switch {
	case strings.HasPrefix(stored, "$2y$"), strings.HasPrefix(stored, "$2b$"), strings.HasPrefix(stored, "$2a$"):
		cost, err := bcrypt.Cost([]byte(stored))
		if err != nil {
			return nil, fmt.Errorf("malformed bcrypt hash: %v", err)
		}
		if cost > maxBcryptCost {
			// Every wrong password costs a check (only right ones are
			// cached), so such a hash hands anyone a way to burn the CPU.
			return nil, fmt.Errorf("bcrypt cost %d refused: a check would take over a second; rehash with htpasswd -B -C %d or less", cost, maxBcryptCost)
		}
		return bcryptHash(stored), nil
	case strings.HasPrefix(stored, apr1Magic):
		salt, ok := parseAPR1(stored)
		if !ok {
			return nil, fmt.Errorf("malformed apr1 hash (want $apr1$<salt of up to 8>$<22 characters>)")
		}
		return apr1Hash{full: stored, salt: salt}, nil
	case strings.HasPrefix(stored, "{SHA}"):
		return nil, fmt.Errorf("unsalted {SHA} hash refused; %s", advice)
	case strings.HasPrefix(stored, "$"):
		scheme, _, _ := strings.Cut(stored[1:], "$")
		return nil, fmt.Errorf("unsupported hash scheme $%s$; %s", scheme, advice)
	default:
		return nil, fmt.Errorf("crypt(3) or plain-text password refused; %s", advice)
	}
}

// File is the path the users were loaded from.
func (h *Htpasswd) File() string { return h.file }

// Has reports whether the file defines user.
func (h *Htpasswd) Has(user string) bool {
	_, ok := h.hashes[user]
	return ok
}

// Verify reports whether password is user's password, and whether the
// answer came from the cache of verified credentials.
func (h *Htpasswd) Verify(user, password string) (ok, cached bool) {
	stored, known := h.hashes[user]
	mac := h.mac(user, password)
	if !known {
		// The same work as for a known user with a wrong password.
		if h.dummy != nil {
			h.mu.RLock()
			_ = h.verified[user]
			h.mu.RUnlock()
			h.dummy.matches(password)
		}
		return false, false
	}
	h.mu.RLock()
	prev, seen := h.verified[user]
	h.mu.RUnlock()
	if seen && subtle.ConstantTimeCompare(prev[:], mac[:]) == 1 {
		return true, true
	}
	if !stored.matches(password) {
		return false, false
	}
	h.mu.Lock()
	h.verified[user] = mac
	h.mu.Unlock()
	return true, false
}

func (h *Htpasswd) mac(user, password string) [sha256.Size]byte {
	m := h.macs.Get().(hash.Hash)
	m.Reset()
	m.Write([]byte(user))
	m.Write([]byte{':'})
	m.Write([]byte(password))
	var sum [sha256.Size]byte
	m.Sum(sum[:0])
	h.macs.Put(m)
	return sum
}
