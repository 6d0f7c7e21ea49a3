package keyspace

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// AppendJSON appends to buf the JSON of the node at key exactly as
// json.Marshal of ToWire(key, recursive, now) would write it, without
// building the intermediate tree: a relay answering GETs of large
// directories, and the cache saving the whole prefix every second, spend
// their time here. It appends "null" when there is no node at key.
func (s *Space) AppendJSON(buf []byte, key string, recursive bool, now time.Time) []byte {
	n := s.Get(key)
	if n == nil {
		return append(buf, "null"...)
	}
	return n.appendJSON(buf, true, recursive, now)
}

func (n *Node) appendJSON(buf []byte, list, recursive bool, now time.Time) []byte {
	buf = append(buf, '{')
	sep := false
	field := func(name string) {
		if sep {
			buf = append(buf, ',')
		}
		sep = true
		buf = append(buf, '"')
		buf = append(buf, name...)
		buf = append(buf, '"', ':')
	}
	if n.key != "/" {
		field("key")
		buf = appendString(buf, n.key)
	}
	if !n.shownAsDir(list) {
		field("value")
		buf = appendString(buf, n.value)
	} else {
		field("dir")
		buf = append(buf, "true"...)
	}
	if !n.expiration.IsZero() {
		field("expiration")
		buf = append(buf, '"')
		buf = n.expiration.UTC().AppendFormat(buf, time.RFC3339Nano)
		buf = append(buf, '"')
		if ttl := TTL(n.expiration, now); ttl != 0 {
			field("ttl")
			buf = strconv.AppendInt(buf, ttl, 10)
		}
	}
	if list && len(n.children) > 0 {
		field("nodes")
		buf = append(buf, '[')
		for i, c := range n.children {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = c.appendJSON(buf, recursive, recursive, now)
		}
		buf = append(buf, ']')
	}
	if n.modified != 0 {
		field("modifiedIndex")
		buf = strconv.AppendUint(buf, n.modified, 10)
	}
	if n.created != 0 {
		field("createdIndex")
		buf = strconv.AppendUint(buf, n.created, 10)
	}
	return append(buf, '}')
}

const hexDigits = "0123456789abcdef"

// appendString writes s as encoding/json does: HTML-safe escapes for <, >
// and &, \u2028 and \u2029 escaped, invalid UTF-8 replaced by U+FFFD.
func appendString(buf []byte, s string) []byte {
	buf = append(buf, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' && b != '<' && b != '>' && b != '&' {
				i++
				continue
			}
			buf = append(buf, s[start:i]...)
			switch b {
			case '\\', '"':
				buf = append(buf, '\\', b)
			case '\b':
				buf = append(buf, '\\', 'b')
			case '\f':
				buf = append(buf, '\\', 'f')
			case '\n':
				buf = append(buf, '\\', 'n')
			case '\r':
				buf = append(buf, '\\', 'r')
			case '\t':
				buf = append(buf, '\\', 't')
			default:
				buf = append(buf, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			buf = append(buf, s[start:i]...)
			buf = append(buf, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			buf = append(buf, s[start:i]...)
			buf = append(buf, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	buf = append(buf, s[start:]...)
	return append(buf, '"')
}
