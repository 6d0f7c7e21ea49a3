// Command pki writes a throwaway CA, a server certificate for
// localhost/127.0.0.1 and a client certificate into a directory, for
// end-to-end runs: go run ./internal/tools/pki DIR
package main

import (
	"fmt"
	"os"

	"github.com/confsync/confsync/internal/testpki"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: pki DIR")
		os.Exit(2)
	}
	p, err := testpki.Write(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(p.CAFile, p.ServerCert, p.ServerKey, p.ClientCert, p.ClientKey)
}
