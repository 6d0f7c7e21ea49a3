package tmpl

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"text/template"
)

// maxSeq bounds the length of a seq result. confd has no bound, so a typo
// such as seq 1 1000000000 exhausted memory; here it is an error instead.
const maxSeq = 1 << 20

// builtinFuncs returns confd v0.16's function set plus this package's
// extras, with the outside world taken from env. The key functions are
// added per store by storeFuncs.
func builtinFuncs(env Env) template.FuncMap {
	return template.FuncMap{
		// confd v0.16: same names, argument order and results (div, mod
		// and seq may also return an error; see their comments).
		"base":           path.Base,
		"dir":            path.Dir,
		"split":          strings.Split,
		"join":           strings.Join,
		"json":           jsonObject,
		"jsonArray":      jsonArray,
		"map":            makeMap,
		"getenv":         env.getenv,
		"datetime":       env.Now,
		"toUpper":        strings.ToUpper,
		"toLower":        strings.ToLower,
		"contains":       strings.Contains,
		"replace":        strings.Replace,
		"trimSuffix":     strings.TrimSuffix,
		"lookupIP":       env.lookupIP,
		"lookupIPV4":     env.lookupIPV4,
		"lookupIPV6":     env.lookupIPV6,
		"lookupSRV":      env.lookupSRV,
		"fileExists":     fileExists,
		"base64Encode":   base64Encode,
		"base64Decode":   base64Decode,
		"parseBool":      strconv.ParseBool,
		"reverse":        reverse,
		"sortByLength":   sortByLength,
		"sortKVByLength": sortKVByLength,
		"add":            func(a, b int) int { return a + b },
		"sub":            func(a, b int) int { return a - b },
		"mul":            func(a, b int) int { return a * b },
		"div":            div,
		"mod":            mod,
		"seq":            seq,
		"atoi":           strconv.Atoi,

		// Extras, not in confd; FUNCTIONS.md documents them for users.
		//
		// trimPrefix(s, prefix) mirrors confd's trimSuffix(s, suffix), with
		// the argument order abtreece/confd also uses.
		"trimPrefix":   strings.TrimPrefix,
		"default":      defaultValue,
		"toJson":       toJSON,
		"toPrettyJson": toPrettyJSON,
		// hostname() is os.Hostname (or Env.Hostname): lets one template
		// serve every host by reading the host's own key.
		"hostname": env.Hostname,
	}
}

// storeFuncs binds the key functions to s.
func storeFuncs(s *Store) template.FuncMap {
	return template.FuncMap{
		"get":    s.Get,
		"getv":   s.GetValue,
		"gets":   s.GetAll,
		"getvs":  s.GetAllValues,
		"ls":     s.List,
		"lsdir":  s.ListDir,
		"exists": s.Exists,
	}
}

// jsonObject decodes a JSON object (template function json). Numbers
// become float64, as in confd, so {"weight": 10} prints 10 and 12345678
// prints 1.2345678e+07.
func jsonObject(data string) (map[string]any, error) {
	var m map[string]any
	err := json.Unmarshal([]byte(data), &m)
	return m, err
}

// jsonArray decodes a JSON array (template function jsonArray).
func jsonArray(data string) ([]any, error) {
	var a []any
	err := json.Unmarshal([]byte(data), &a)
	return a, err
}

// makeMap builds a map from key, value, key, value... (template function
// map), typically to pass several values to a sub-template.
func makeMap(kv ...any) (map[string]any, error) {
	if len(kv)%2 != 0 {
		return nil, fmt.Errorf("map needs key, value pairs, got %d arguments", len(kv))
	}
	m := make(map[string]any, len(kv)/2)
	for i := 0; i < len(kv); i += 2 {
		k, ok := kv[i].(string)
		if !ok {
			return nil, fmt.Errorf("map key %d is a %T, want a string", i/2+1, kv[i])
		}
		m[k] = kv[i+1]
	}
	return m, nil
}

// fileExists reports whether a local path exists (template function
// fileExists). As in confd, only "does not exist" counts as absent: a path
// that cannot be examined (permission denied) counts as existing.
func fileExists(p string) bool {
	_, err := os.Stat(p)
	return !errors.Is(err, fs.ErrNotExist)
}

func base64Encode(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func base64Decode(s string) (string, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	return string(b), err
}

// reverse reverses a []string (ls, getvs, split) or a list of pairs (gets)
// in place and returns it (template function reverse). Other values are
// returned unchanged, as in confd.
//
// confd's reverse silently ignored the result of gets (its type is a named
// slice the type switch missed); here it is reversed.
func reverse(values any) any {
	switch v := values.(type) {
	case []string:
		slices.Reverse(v)
	case KVPairs:
		slices.Reverse(v)
	case []KVPair:
		slices.Reverse(v)
	}
	return values
}

// sortByLength sorts values in place, shortest first, and returns them
// (template function sortByLength). Equal lengths keep their order (confd's
// sort was unstable; the two agree on up to 12 elements).
func sortByLength(values []string) []string {
	slices.SortStableFunc(values, func(a, b string) int { return cmp.Compare(len(a), len(b)) })
	return values
}

// sortKVByLength sorts pairs in place by key length, shortest first, and
// returns them (template function sortKVByLength). Ties keep their order.
func sortKVByLength(pairs KVPairs) KVPairs {
	slices.SortStableFunc(pairs, func(a, b KVPair) int { return cmp.Compare(len(a.Key), len(b.Key)) })
	return pairs
}

// div is integer division (template function div); dividing by zero is an
// error naming the operands rather than a runtime panic.
func div(a, b int) (int, error) {
	if b == 0 {
		return 0, fmt.Errorf("div %d 0: division by zero", a)
	}
	return a / b, nil
}

// mod is the integer remainder, with the sign of a (template function mod).
func mod(a, b int) (int, error) {
	if b == 0 {
		return 0, fmt.Errorf("mod %d 0: division by zero", a)
	}
	return a % b, nil
}

// seq returns first, first+1, ..., last (template function seq); it is
// empty when first > last, as in confd (it never counts down).
func seq(first, last int) ([]int, error) {
	if first > last {
		return []int{}, nil
	}
	if n := uint64(last) - uint64(first); n >= maxSeq {
		return nil, fmt.Errorf("seq %d %d: more than %d numbers", first, last, maxSeq)
	}
	out := make([]int, 0, last-first+1)
	for i := first; ; i++ {
		out = append(out, i)
		if i == last {
			return out, nil
		}
	}
}

// defaultValue returns value unless it is empty, else def (extra template
// function default, argument order of sprig and abtreece/confd: default
// "x" .val, or .val | default "x"). Empty means nil, false, 0, "", or an
// empty slice or map; value may be omitted, which counts as empty.
func defaultValue(def any, value ...any) any {
	if len(value) == 0 || isEmpty(value[0]) {
		return def
	}
	return value[0]
}

func isEmpty(v any) bool {
	if v == nil {
		return true
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.String, reflect.Slice, reflect.Map, reflect.Array:
		return rv.Len() == 0
	case reflect.Bool:
		return !rv.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return rv.Int() == 0
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return rv.Uint() == 0
	case reflect.Float32, reflect.Float64:
		return rv.Float() == 0
	case reflect.Pointer, reflect.Interface:
		return rv.IsNil()
	}
	return false
}

// toJSON encodes v as compact JSON (extra template function toJson).
// Unlike json.Marshal it leaves <, > and & alone: the output goes into
// configuration files, not HTML.
func toJSON(v any) (string, error) { return encodeJSON(v, "") }

// toPrettyJSON encodes v as JSON indented by two spaces (extra template
// function toPrettyJson).
func toPrettyJSON(v any) (string, error) { return encodeJSON(v, "  ") }

func encodeJSON(v any, indent string) (string, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", indent)
	if err := enc.Encode(v); err != nil {
		return "", err
	}
	return strings.TrimSuffix(buf.String(), "\n"), nil
}

// getenv returns the environment variable key (template function getenv).
// As in confd, a variable set to "" counts as unset: the result is then
// the first default, or "".
func (e Env) getenv(key string, defaults ...string) string {
	if v := e.Getenv(key); v != "" {
		return v
	}
	if len(defaults) > 0 {
		return defaults[0]
	}
	return ""
}

// lookupIP resolves host to its addresses, IPv4 and IPv6, as sorted
// strings (template function lookupIP). Sorting keeps a DNS server's
// shuffling from changing the rendered file. As in confd a failed lookup
// is not an error: the result is nil and the template renders without the
// addresses.
func (e Env) lookupIP(host string) []string {
	ctx, cancel := context.WithTimeout(context.Background(), e.LookupTimeout)
	defer cancel()
	addrs, err := e.Resolver.LookupIPAddr(ctx, host)
	if err != nil {
		return nil
	}
	ips := make([]string, len(addrs))
	for i, a := range addrs {
		ips[i] = a.IP.String()
	}
	slices.Sort(ips)
	return ips
}

// lookupIPV4 is lookupIP keeping IPv4 addresses only.
func (e Env) lookupIPV4(host string) []string {
	return filterIPs(e.lookupIP(host), ".")
}

// lookupIPV6 is lookupIP keeping IPv6 addresses only.
func (e Env) lookupIPV6(host string) []string {
	return filterIPs(e.lookupIP(host), ":")
}

func filterIPs(ips []string, marker string) []string {
	var out []string
	for _, ip := range ips {
		if strings.Contains(ip, marker) {
			out = append(out, ip)
		}
	}
	return out
}

// lookupSRV returns the SRV records of _service._proto.name (template
// function lookupSRV), or an empty list when the lookup fails. Records are
// sorted as confd sorts them: by the string target+port+priority+weight,
// so port 10 sorts before port 9 on the same target.
func (e Env) lookupSRV(service, proto, name string) []*net.SRV {
	ctx, cancel := context.WithTimeout(context.Background(), e.LookupTimeout)
	defer cancel()
	_, addrs, err := e.Resolver.LookupSRV(ctx, service, proto, name)
	if err != nil {
		return []*net.SRV{}
	}
	sortKey := func(s *net.SRV) string {
		return fmt.Sprintf("%s%d%d%d", s.Target, s.Port, s.Priority, s.Weight)
	}
	slices.SortStableFunc(addrs, func(a, b *net.SRV) int { return cmp.Compare(sortKey(a), sortKey(b)) })
	return addrs
}
