package gate

import (
	"crypto/md5"
	"strings"
)

// apr1Magic starts Apache's variant of MD5-crypt, the scheme `htpasswd -m`
// writes and the one the site's htpasswd files use.
const apr1Magic = "$apr1$"

// cryptAlphabet is the base-64 alphabet of crypt(3) hashes.
const cryptAlphabet = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// md5Crypt computes the MD5-crypt hash of password with the given salt and
// magic ("$apr1$" for Apache, "$1$" for the original), as published by
// Poul-Henning Kamp: an initial digest mixes password, magic and salt, then
// 1000 rounds of MD5 stretch it, and the 16-byte result is written in a
// crypt-specific base-64 with bytes taken in a fixed shuffled order.
func md5Crypt(password, salt []byte, magic string) string {
	if len(salt) > 8 {
		salt = salt[:8]
	}

	alternate := md5.New()
	alternate.Write(password)
	alternate.Write(salt)
	alternate.Write(password)
	altSum := alternate.Sum(nil)

	initial := md5.New()
	initial.Write(password)
	initial.Write([]byte(magic))
	initial.Write(salt)
	for n := len(password); n > 0; n -= 16 {
		initial.Write(altSum[:min(n, 16)])
	}
	// One byte per bit of the password length: a NUL for a set bit, the
	// password's first byte for a clear one (a quirk of the original C code
	// that every implementation reproduces).
	for n := len(password); n > 0; n >>= 1 {
		if n&1 != 0 {
			initial.Write([]byte{0})
		} else {
			initial.Write(password[:1])
		}
	}
	var sum [md5.Size]byte
	initial.Sum(sum[:0])

	input := make([]byte, 0, 2*len(password)+len(salt)+md5.Size)
	for round := 0; round < 1000; round++ {
		input = input[:0]
		if round&1 != 0 {
			input = append(input, password...)
		} else {
			input = append(input, sum[:]...)
		}
		if round%3 != 0 {
			input = append(input, salt...)
		}
		if round%7 != 0 {
			input = append(input, password...)
		}
		if round&1 != 0 {
			input = append(input, sum[:]...)
		} else {
			input = append(input, password...)
		}
		sum = md5.Sum(input)
	}

	var b strings.Builder
	b.Grow(len(magic) + len(salt) + 1 + 22)
	b.WriteString(magic)
	b.Write(salt)
	b.WriteByte('$')
	for _, g := range [5][3]int{{0, 6, 12}, {1, 7, 13}, {2, 8, 14}, {3, 9, 15}, {4, 10, 5}} {
		writeCrypt64(&b, uint(sum[g[0]])<<16|uint(sum[g[1]])<<8|uint(sum[g[2]]), 4)
	}
	writeCrypt64(&b, uint(sum[11]), 2)
	return b.String()
}

// writeCrypt64 writes the low 6*n bits of v, least significant first.
func writeCrypt64(b *strings.Builder, v uint, n int) {
	for ; n > 0; n-- {
		b.WriteByte(cryptAlphabet[v&0x3f])
		v >>= 6
	}
}

// parseAPR1 splits "$apr1$salt$checksum" and checks its shape, so a
// truncated or mangled hash is refused when the file is loaded rather than
// silently never matching.
func parseAPR1(hash string) (salt string, ok bool) {
	rest, found := strings.CutPrefix(hash, apr1Magic)
	if !found {
		return "", false
	}
	salt, sum, found := strings.Cut(rest, "$")
	if !found || salt == "" || len(salt) > 8 || len(sum) != 22 {
		return "", false
	}
	for _, s := range []string{salt, sum} {
		for i := 0; i < len(s); i++ {
			if strings.IndexByte(cryptAlphabet, s[i]) < 0 {
				return "", false
			}
		}
	}
	return salt, true
}
