package main

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/confsync/confsync/internal/etcdtest"
)

// everyFunction calls each template function once, on data read from a
// real etcd, so that a user's template meets the functions as they are
// wired into render. (agent/tmpl's tests cover each function's corner
// cases.)
const everyFunction = `get={{(get "/svc/name").Value}}
getv={{getv "/svc/name"}} default={{getv "/svc/missing" "dflt"}}
gets={{range gets "/svc/hosts/*"}}{{.Key}}={{.Value}} {{end}}
getvs={{join (getvs "/svc/hosts/*") ","}}
ls={{join (ls "/svc/hosts") ","}} lsdir={{join (lsdir "/svc") ","}} root={{join (ls "/") ","}}/{{join (lsdir "/") ","}}
exists={{exists "/svc/name"}},{{exists "/svc"}}
base={{base "/a/b/c"}} dir={{dir "/a/b/c"}} split={{index (split "a:b:c" ":") 1}} join={{join (split "a:b" ":") "-"}}
json={{(json (getv "/svc/conf")).weight}} jsonArray={{index (jsonArray (getv "/svc/list")) 1}}
map={{index (map "k" "v") "k"}}
getenv={{getenv "CONFSYNC_FUNCTIONS_TEST"}},{{getenv "CONFSYNC_FUNCTIONS_UNSET" "fallback"}}
datetime={{gt (datetime).Year 2000}}
toUpper={{toUpper "ab"}} toLower={{toLower "AB"}} contains={{contains "abc" "b"}} replace={{replace "aaa" "a" "b" 2}} trimSuffix={{trimSuffix "file.conf" ".conf"}}
lookupIP={{join (lookupIP "127.0.0.1") ","}} lookupIPV4={{join (lookupIPV4 "127.0.0.1") ","}} lookupIPV6={{len (lookupIPV6 "127.0.0.1")}}
lookupSRV={{len (lookupSRV "etcd" "tcp" "nonexistent.invalid")}}
fileExists={{fileExists "/"}},{{fileExists "/nonexistent/x"}}
base64={{base64Encode "hi"}},{{base64Decode "aGk="}}
parseBool={{parseBool "true"}}
reverse={{join (reverse (ls "/svc/hosts")) ","}}
sortByLength={{join (sortByLength (split "ccc,a,bb" ",")) ","}}
sortKVByLength={{range sortKVByLength (gets "/svc/hosts/*")}}{{base .Key}}{{end}}
arith={{add 1 2}},{{sub 5 3}},{{mul 2 3}},{{div 7 2}},{{mod 7 2}},{{atoi "42"}}
seq={{range seq 1 3}}{{.}}{{end}}
trimPrefix={{trimPrefix "/svc/x" "/svc"}} default={{default "d" ""}} toJson={{toJson (map "a" 1)}}
toPrettyJson={{len (toPrettyJson (map "a" 1))}} hostname={{gt (len hostname) 0}}
`

const everyFunctionWant = `get=web
getv=web default=dflt
gets=/svc/hosts/a=30 /svc/hosts/bb=10 /svc/hosts/ccc=20 
getvs=10,20,30
ls=a,bb,ccc lsdir=hosts root=svc/svc
exists=true,false
base=c dir=/a/b split=b join=a-b
json=10 jsonArray=y
map=v
getenv=set,fallback
datetime=true
toUpper=AB toLower=ab contains=true replace=bba trimSuffix=file
lookupIP=127.0.0.1 lookupIPV4=127.0.0.1 lookupIPV6=0
lookupSRV=0
fileExists=true,false
base64=aGk=,hi
parseBool=true
reverse=ccc,bb,a
sortByLength=a,bb,ccc
sortKVByLength=abbccc
arith=3,2,6,3,1,42
seq=123
trimPrefix=/x default=d toJson={"a":1}
toPrettyJson=12 hostname=true
`

func TestEveryFunctionThroughRealEtcd(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/site/svc/name", "web")
	srv.Set(t, "/site/svc/conf", `{"weight": 10, "pooled": "yes"}`)
	srv.Set(t, "/site/svc/list", `["x", "y"]`)
	srv.Set(t, "/site/svc/hosts/a", "30")
	srv.Set(t, "/site/svc/hosts/bb", "10")
	srv.Set(t, "/site/svc/hosts/ccc", "20")
	srv.Set(t, "/elsewhere/x", "not in the view")
	t.Setenv("CONFSYNC_FUNCTIONS_TEST", "set")
	dir, out := writeConfdir(t, map[string]string{
		"conf.d/f.toml":    "[template]\nsrc = \"f.tmpl\"\ndest = \"{{out}}/f\"\nprefix = \"/site\"\nkeys = [\"/svc\"]\n",
		"templates/f.tmpl": everyFunction,
	})
	res := runCmd(t, "render", "-confdir", dir, "-node", srv.URL())
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	got := readFile(t, filepath.Join(out, "f"))
	if got != everyFunctionWant {
		t.Fatalf("got:\n%s\nwant:\n%s", got, everyFunctionWant)
	}
	// Every function of the reference appears in the template above.
	doc, err := os.ReadFile("../../agent/tmpl/FUNCTIONS.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile("(?m)^### `([a-zA-Z0-9]+)`").FindAllStringSubmatch(string(doc), -1) {
		if !regexp.MustCompile(`[({ ]` + m[1] + `[ )]`).MatchString(everyFunction) {
			t.Errorf("function %s is documented but not exercised here", m[1])
		}
	}
}
