package gate

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"hash"
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
type Htpasswd struct {
	file   string
	hashes map[string]passwordHash

	key  []byte
	macs sync.Pool // of hash.Hash keyed with key

	mu       sync.RWMutex
	verified map[string][sha256.Size]byte
}

type passwordHash interface {
	matches(password string) bool
}

type bcryptHash []byte

func (h bcryptHash) matches(password string) bool {
	return bcrypt.CompareHashAndPassword(h, []byte(password)) == nil
}

type apr1Hash struct{ full, salt string }

func (h apr1Hash) matches(password string) bool {
	got := md5Crypt([]byte(password), []byte(h.salt), apr1Magic)
	return subtle.ConstantTimeCompare([]byte(got), []byte(h.full)) == 1
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
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return h, nil
}

func parseHash(stored string) (passwordHash, error) {
	const advice = "only bcrypt ($2y$, `htpasswd -B`) and apr1 ($apr1$, `htpasswd -m`) are supported"
	switch {
	case strings.HasPrefix(stored, "$2y$"), strings.HasPrefix(stored, "$2b$"), strings.HasPrefix(stored, "$2a$"):
		if _, err := bcrypt.Cost([]byte(stored)); err != nil {
			return nil, fmt.Errorf("malformed bcrypt hash: %v", err)
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
	if !known {
		return false, false
	}
	mac := h.mac(user, password)
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
