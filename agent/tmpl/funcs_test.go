package tmpl

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/testutil"
	"golang.org/x/net/dns/dnsmessage"
)

// funcCase renders text against the sample store and expects want, or an
// error containing wantErr.
type funcCase struct {
	name, text, want, wantErr string
}

func runFuncCases(t *testing.T, env Env, store *Store, cases []funcCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := render(t, env, store, tc.text)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("%s\nerror = %v, want one containing %q (output %q)", tc.text, err, tc.wantErr, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("%s\n%v", tc.text, err)
			}
			if got != tc.want {
				t.Errorf("%s\ngot  %q\nwant %q", tc.text, got, tc.want)
			}
		})
	}
}

func TestKeyFunctions(t *testing.T) {
	runFuncCases(t, testEnv(t), sample(), []funcCase{
		{"get", `{{with get "/app/name"}}{{.Key}}={{.Value}}{{end}}`, "/app/name=myapp", ""},
		{"get missing", `{{get "/nope"}}`, "", "error calling get: key does not exist: /nope"},
		{"getv", `{{getv "/nginx/port"}}`, "80", ""},
		{"getv default", `{{getv "/nope" "8080"}}`, "8080", ""},
		{"getv empty default", `[{{getv "/nope" ""}}]`, "[]", ""},
		{"getv empty value beats default", `[{{getv "/app/empty" "x"}}]`, "[]", ""},
		{"getv missing", `{{getv "/nope"}}`, "", "error calling getv: key does not exist: /nope"},
		{"exists leaf", `{{exists "/app/name"}}`, "true", ""},
		{"exists dir", `{{exists "/app"}}`, "false", ""},
		{"exists missing", `{{exists "/nope"}}`, "false", ""},
		{"exists guards getv", `{{if exists "/nope"}}{{getv "/nope"}}{{else}}none{{end}}`, "none", ""},
		{"gets", `{{range gets "/app/upstream/*"}}{{base .Key}}={{.Value}} {{end}}`,
			"app1=10.0.1.100:80 app10=10.0.1.1:80 app2=10.0.1.101:80 ", ""},
		{"gets star stays in one segment", `{{range gets "/app/*"}}{{.Key}} {{end}}`, "/app/empty /app/name ", ""},
		{"gets no match is empty", `{{len (gets "/nope/*")}}`, "0", ""},
		{"gets bad pattern", `{{gets "/app/["}}`, "", "error calling gets: bad pattern"},
		{"getvs sorted by value", `{{getvs "/app/upstream/*"}}`, "[10.0.1.100:80 10.0.1.101:80 10.0.1.1:80]", ""},
		{"getvs no match", `{{getvs "/nope/*"}}`, "[]", ""},
		{"ls", `{{ls "/app"}}`, "[empty name upstream]", ""},
		{"ls trailing slash", `{{ls "/app/"}}`, "[empty name upstream]", ""},
		{"ls key equal to path", `{{ls "/app/name"}}`, "[name]", ""},
		{"ls key equal to path with slash", `{{ls "/app/name/"}}`, "[]", ""},
		{"ls root", `{{ls "/"}}`, "[app apple nginx pools services top]", ""},
		{"ls missing", `{{ls "/nope"}}`, "[]", ""},
		{"lsdir", `{{lsdir "/app"}}`, "[upstream]", ""},
		{"lsdir root", `{{lsdir "/"}}`, "[app apple nginx pools services]", ""},
		{"nested iteration", `{{range $dir := lsdir "/services/web"}}{{$dir}}:{{range gets (printf "/services/web/%s/*" $dir)}}{{(json .Value).IP}} {{end}}{{end}}`,
			"c1:10.0.0.1 c2:10.0.0.3 10.0.0.4 ", ""},
	})
}

func TestConfdFunctions(t *testing.T) {
	runFuncCases(t, testEnv(t), sample(), []funcCase{
		{"base dir", `{{base "/pools/eqiad/mw1"}} {{dir "/pools/eqiad/mw1"}} {{dir "mw1"}}`, "mw1 /pools/eqiad .", ""},
		{"split index", `{{index (split "/geodns/text-addrs/esams" "/") 2}}`, "text-addrs", ""},
		{"join", `{{join (split "a b c" " ") ","}}`, "a,b,c", ""},
		{"join getvs", `{{join (getvs "/app/upstream/*") ","}}`, "10.0.1.100:80,10.0.1.101:80,10.0.1.1:80", ""},
		// Numbers are float64 and print as fmt %v prints them, as in confd.
		{"json", `{{$j := json "{\"weight\": 10, \"pooled\": \"yes\", \"big\": 12345678, \"f\": 1.5, \"b\": true, \"l\": [1, 2]}"}}` +
			`{{$j.weight}} {{$j.pooled}} {{$j.big}} {{$j.f}} {{$j.b}} {{$j.l}} {{$j.missing}}`,
			"10 yes 1.2345678e+07 1.5 true [1 2] <no value>", ""},
		{"json bool is a bool", `{{if (json "{\"pooled\": false}").pooled}}UP{{else}}DOWN{{end}}`, "DOWN", ""},
		{"json numbers compare as floats", `{{$d := json "{\"weight\": 10}"}}{{eq $d.weight 10.0}} {{add (atoi (printf "%.0f" $d.weight)) 1}}`, "true 11", ""},
		{"json numbers are not ints", `{{add (json "{\"w\": 10}").w 1}}`, "", "expected int; got float64"},
		{"json bad", `{{json "{not json"}}`, "", "error calling json: invalid character"},
		{"json array is not an object", `{{json "[1]"}}`, "", "error calling json: json: cannot unmarshal array"},
		{"jsonArray", `{{range jsonArray "[\"a\", 1, true, {\"k\": 2}]"}}{{.}} {{end}}`, "a 1 true map[k:2] ", ""},
		{"jsonArray bad", `{{jsonArray "{}"}}`, "", "error calling jsonArray"},
		{"map", `{{$m := map "name" "es" "port" 9200}}{{index $m "name"}}:{{index $m "port"}}`, "es:9200", ""},
		{"map empty", `{{len (map)}}`, "0", ""},
		{"map odd args", `{{map "a" 1 "b"}}`, "", "error calling map: map needs key, value pairs, got 3 arguments"},
		{"map non-string key", `{{map 1 2}}`, "", "error calling map: map key 1 is a int, want a string"},
		{"getenv", `{{getenv "DC"}}`, "eqiad", ""},
		{"getenv unset", `[{{getenv "NOPE"}}]`, "[]", ""},
		{"getenv unset default", `{{getenv "NOPE" "codfw"}}`, "codfw", ""},
		{"getenv empty is unset", `{{getenv "EMPTY" "codfw"}}`, "codfw", ""},
		{"getenv set ignores default", `{{getenv "DC" "codfw"}}`, "eqiad", ""},
		{"datetime", `{{datetime.Format "2006-01-02T15:04:05Z07:00"}} {{(datetime).Year}}`, "2024-10-24T12:30:05Z 2024", ""},
		{"toUpper toLower", `{{toUpper "eqiad"}} {{toLower "EqIAD"}}`, "EQIAD eqiad", ""},
		{"contains", `{{contains "mw1261.eqiad.wmnet" "eqiad"}} {{contains "mw1261" "codfw"}}`, "true false", ""},
		{"replace", `{{replace "cp1100.eqiad.wmnet" "." "_" -1}} {{replace "a.b.c" "." "_" 1}}`, "cp1100_eqiad_wmnet a_b.c", ""},
		{"trimSuffix", `{{trimSuffix "mw1261.eqiad.wmnet" ".eqiad.wmnet"}}`, "mw1261", ""},
		{"base64Encode", `{{base64Encode "Value"}}`, "VmFsdWU=", ""},
		{"base64Decode", `{{base64Decode "VmFsdWU="}}`, "Value", ""},
		{"base64Decode bad", `{{base64Decode "%%%"}}`, "", "error calling base64Decode: illegal base64 data"},
		{"parseBool", `{{parseBool "true"}} {{parseBool "0"}} {{if parseBool "T"}}yes{{end}}`, "true false yes", ""},
		{"parseBool bad", `{{parseBool "yes"}}`, "", `error calling parseBool: strconv.ParseBool: parsing "yes": invalid syntax`},
		{"add sub mul", `{{add 2 3}} {{sub 2 3}} {{mul 4 5}}`, "5 -1 20", ""},
		{"div mod", `{{div 7 2}} {{mod 7 2}} {{div -7 2}} {{mod -7 2}}`, "3 1 -3 -1", ""},
		{"div by zero", `{{div 1 0}}`, "", "error calling div: div 1 0: division by zero"},
		{"mod by zero", `{{mod 1 0}}`, "", "error calling mod: mod 1 0: division by zero"},
		{"arithmetic on atoi", `{{add (atoi (getv "/nginx/port")) 1}}`, "81", ""},
		{"atoi bad", `{{atoi "eighty"}}`, "", "error calling atoi"},
		{"seq", `{{seq 1 3}} {{seq 2 2}}`, "[1 2 3] [2]", ""},
		{"seq never counts down", `{{seq 3 1}} {{len (seq 3 1)}}`, "[] 0", ""},
		{"seq range", `{{range seq 1 3}}{{.}},{{end}}`, "1,2,3,", ""},
		{"seq too long", `{{seq 1 100000000}}`, "", "error calling seq: seq 1 100000000: more than"},
		{"seq extreme bounds", `{{seq -9223372036854775808 9223372036854775807}}`, "", "more than"},
		// reverse and the sorts work in place on the slice they are given, as
		// in confd; the store hands out fresh slices, so it never changes.
		{"reverse in place", `{{$l := ls "/app"}}{{reverse $l}} {{$l}} {{ls "/app"}}`,
			"[upstream name empty] [upstream name empty] [empty name upstream]", ""},
		{"reverse gets", `{{range reverse (gets "/app/upstream/*")}}{{base .Key}} {{end}}{{range gets "/app/upstream/*"}}{{base .Key}} {{end}}`,
			"app2 app10 app1 app1 app10 app2 ", ""},
		{"reverse getvs", `{{reverse (getvs "/app/upstream/*")}}`, "[10.0.1.1:80 10.0.1.101:80 10.0.1.100:80]", ""},
		{"reverse other types unchanged", `{{reverse (seq 1 3)}} {{reverse "abc"}}`, "[1 2 3] abc", ""},
		{"sortByLength", `{{sortByLength (split "ccc,a,dd,bb" ",")}}`, "[a dd bb ccc]", ""},
		{"sortByLength in place", `{{$l := split "ccc,a" ","}}{{$_ := sortByLength $l}}{{$l}}`, "[a ccc]", ""},
		{"sortByLength ls", `{{sortByLength (ls "/app")}} {{ls "/app"}}`, "[name empty upstream] [empty name upstream]", ""},
		{"sortKVByLength", `{{range sortKVByLength (gets "/app/upstream/*")}}{{base .Key}} {{end}}{{range gets "/app/upstream/*"}}{{base .Key}} {{end}}`,
			"app1 app2 app10 app1 app10 app2 ", ""},
		{"printf and builtins", `{{printf "%s/%s" "/pools" "eqiad"}} {{len (ls "/app")}} {{eq (getv "/nginx/port") "80"}}`, "/pools/eqiad 3 true", ""},
		{"dot is nil", `{{.}}`, "<no value>", ""},
	})
}

func TestExtraFunctions(t *testing.T) {
	runFuncCases(t, testEnv(t), sample(), []funcCase{
		{"trimPrefix", `{{trimPrefix "/pools/eqiad/mw1" "/pools/"}}`, "eqiad/mw1", ""},
		{"default on empty", `{{default "x" ""}}`, "x", ""},
		{"default on value", `{{default "x" "y"}}`, "y", ""},
		{"default in a pipeline", `{{getv "/nope" "" | default "fallback"}} {{getv "/app/name" | default "fallback"}}`, "fallback myapp", ""},
		{"default missing json field", `{{$j := json "{}"}}{{default 10 $j.weight}}`, "10", ""},
		{"default treats zero as empty", `{{$j := json "{\"weight\": 0}"}}{{default 10 $j.weight}}`, "10", ""},
		{"default treats false as empty", `{{default "on" false}}`, "on", ""},
		{"default empty list", `{{default "none" (ls "/nope")}} {{default "none" (ls "/nginx")}}`, "none [deep port]", ""},
		{"default no value", `{{default "x"}}`, "x", ""},
		{"toJson", `{{toJson (json "{\"b\": [1, 2], \"a\": \"x&<y>\", \"n\": null}")}}`, `{"a":"x&<y>","b":[1,2],"n":null}`, ""},
		{"toJson ls", `{{toJson (ls "/nginx")}} {{toJson (ls "/nope")}}`, `["deep","port"] []`, ""},
		{"toJson gets", `{{toJson (gets "/nginx/*")}}`, `[{"Key":"/nginx/port","Value":"80"}]`, ""},
		{"toPrettyJson", `{{toPrettyJson (map "a" 1 "b" (split "x,y" ","))}}`, "{\n  \"a\": 1,\n  \"b\": [\n    \"x\",\n    \"y\"\n  ]\n}", ""},
		{"hostname", `{{hostname}}`, "lvs1017.eqiad.wmnet", ""},
		{"hostname picks own key", `{{getv (printf "/hosts/%s" hostname) "absent"}}`, "absent", ""},
	})
}

func TestHostnameError(t *testing.T) {
	env := testEnv(t)
	env.Hostname = func() (string, error) { return "", os.ErrPermission }
	if _, err := render(t, env, nil, `{{hostname}}`); err == nil || !strings.Contains(err.Error(), "error calling hostname") {
		t.Errorf("hostname failing: error = %v", err)
	}
}

func TestToJSONError(t *testing.T) {
	if _, err := toJSON(make(chan int)); err == nil {
		t.Error("toJSON(chan): no error")
	}
}

func TestFileExists(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "present")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{"FILE": file, "DIR": dir, "MISSING": filepath.Join(dir, "absent")}
	env := testEnv(t)
	env.Getenv = func(k string) string { return vars[k] }
	got, err := render(t, env, nil, `{{fileExists (getenv "FILE")}} {{fileExists (getenv "DIR")}} {{fileExists (getenv "MISSING")}}`)
	if err != nil || got != "true true false" {
		t.Errorf("fileExists = %q, %v; want %q", got, err, "true true false")
	}
}

func TestGetenvZeroEnvReadsProcess(t *testing.T) {
	t.Setenv("CONFSYNC_TMPL_TEST", "from-process")
	got, err := render(t, Env{}, nil, `{{getenv "CONFSYNC_TMPL_TEST"}}`)
	if err != nil || got != "from-process" {
		t.Errorf("getenv with a zero Env = %q, %v", got, err)
	}
}

func TestLookupFunctions(t *testing.T) {
	srv := "_etcd-client-ssl._tcp.eqiad.example.test."
	resolver := testutil.StartDNS(t, testutil.DNSRecords{
		question("conf.example.test.", dnsmessage.TypeA): {
			aRecord("conf.example.test.", "10.64.0.9"), aRecord("conf.example.test.", "10.64.0.10"),
		},
		question("conf.example.test.", dnsmessage.TypeAAAA): {
			aaaaRecord("conf.example.test.", "2620:0:861:101::9"),
		},
		question("v4only.example.test.", dnsmessage.TypeA): {aRecord("v4only.example.test.", "192.0.2.1")},
		// Deliberately unsorted; port 10 and port 9 on one target show
		// confd's string ordering.
		question(srv, dnsmessage.TypeSRV): {
			testutil.SRVRecord(srv, "conf1009.example.test.", 0, 1, 2379),
			testutil.SRVRecord(srv, "conf1007.example.test.", 0, 1, 9),
			testutil.SRVRecord(srv, "conf1007.example.test.", 0, 1, 10),
			testutil.SRVRecord(srv, "conf1008.example.test.", 0, 1, 2379),
		},
	})
	env := testEnv(t)
	env.Resolver = resolver
	runFuncCases(t, env, nil, []funcCase{
		{"lookupIP sorted as strings", `{{lookupIP "conf.example.test"}}`, "[10.64.0.10 10.64.0.9 2620:0:861:101::9]", ""},
		{"lookupIPV4", `{{lookupIPV4 "conf.example.test"}}`, "[10.64.0.10 10.64.0.9]", ""},
		{"lookupIPV6", `{{lookupIPV6 "conf.example.test"}}`, "[2620:0:861:101::9]", ""},
		{"lookupIPV6 none", `{{lookupIPV6 "v4only.example.test"}} {{len (lookupIPV6 "v4only.example.test")}}`, "[] 0", ""},
		{"lookupIP literal", `{{lookupIP "192.0.2.7"}}`, "[192.0.2.7]", ""},
		{"lookupIP failure is empty", `{{lookupIP "nxdomain.example.test"}} {{len (lookupIPV4 "nxdomain.example.test")}}`, "[] 0", ""},
		{"lookupSRV", `{{range lookupSRV "etcd-client-ssl" "tcp" "eqiad.example.test"}}{{.Target}}:{{.Port}} {{end}}`,
			"conf1007.example.test.:10 conf1007.example.test.:9 conf1008.example.test.:2379 conf1009.example.test.:2379 ", ""},
		{"lookupSRV by name", `{{range lookupSRV "" "" "_etcd-client-ssl._tcp.eqiad.example.test"}}{{.Priority}}/{{.Weight}} {{end}}`,
			"0/1 0/1 0/1 0/1 ", ""},
		{"lookupSRV failure is empty", `{{lookupSRV "etcd" "tcp" "nxdomain.example.test"}}`, "[]", ""},
	})
}

// A resolver that never answers costs one LookupTimeout and yields
// nothing, not an error.
func TestLookupTimeoutIsEmpty(t *testing.T) {
	env := testEnv(t) // its resolver never answers
	env.LookupTimeout = 100 * time.Millisecond
	got, err := render(t, env, nil, `{{lookupIP "conf.example.test"}} {{lookupSRV "etcd" "tcp" "example.test"}}`)
	if err != nil || got != "[] []" {
		t.Errorf("lookups against a dead resolver = %q, %v; want %q", got, err, "[] []")
	}
}

// FUNCTIONS.md is the users' reference: it must document exactly the
// functions templates can call.
func TestFunctionsDocumented(t *testing.T) {
	f, err := os.Open("FUNCTIONS.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	heading := regexp.MustCompile("^### `([A-Za-z0-9]+)`")
	var documented []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := heading.FindStringSubmatch(sc.Text()); m != nil {
			documented = append(documented, m[1])
		}
	}
	var defined []string
	for name := range builtinFuncs(Env{}) {
		defined = append(defined, name)
	}
	for name := range storeFuncs(nil) {
		defined = append(defined, name)
	}
	sort.Strings(documented)
	sort.Strings(defined)
	if !slices.Equal(documented, defined) {
		t.Errorf("FUNCTIONS.md documents %q\nthe package defines %q", documented, defined)
	}
}
