// Command watchers holds many idle etcd v2 watches (GET ...?wait=true)
// open through a proxy, one connection each, as pybal and confd hosts do,
// so compare.sh can measure what they cost the proxy.
//
// It prints "ready N" once N watches have their response headers, then
// keeps them open until stdin closes or it is signalled. A watch that ends
// early is reported on stderr and makes it exit 1.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	target := flag.String("url", "", "watch `URL`, e.g. https://127.0.0.1:4001/v2/keys/bench/watched?wait=true")
	n := flag.Int("n", 5000, "number of watches")
	caFile := flag.String("cacert", "", "CA `file` to trust for https")
	parallel := flag.Int("parallel", 100, "watches opened at once (TLS handshakes in flight)")
	flag.Parse()
	if *target == "" {
		fmt.Fprintln(os.Stderr, "watchers: -url is required")
		os.Exit(2)
	}
	tlsConfig := &tls.Config{}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "watchers:", err)
			os.Exit(2)
		}
		tlsConfig.RootCAs = x509.NewCertPool()
		tlsConfig.RootCAs.AppendCertsFromPEM(pem)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() { io.Copy(io.Discard, os.Stdin); stop() }()

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfig, DisableCompression: true}}
	var opened, failed atomic.Int64
	sem := make(chan struct{}, *parallel)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < *n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, *target, nil)
			resp, err := client.Do(req)
			<-sem
			if err != nil {
				if ctx.Err() == nil {
					failed.Add(1)
					fmt.Fprintln(os.Stderr, "watchers: open:", err)
				}
				return
			}
			if resp.StatusCode != http.StatusOK {
				failed.Add(1)
				fmt.Fprintln(os.Stderr, "watchers: open:", resp.Status)
				resp.Body.Close()
				return
			}
			if opened.Add(1) == int64(*n) {
				fmt.Printf("ready %d in %s\n", *n, time.Since(start).Round(time.Millisecond))
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if ctx.Err() == nil {
				failed.Add(1)
				fmt.Fprintln(os.Stderr, "watchers: a watch ended early")
			}
		}()
	}
	<-ctx.Done()
	wg.Wait()
	if failed.Load() > 0 {
		fmt.Fprintf(os.Stderr, "watchers: %d of %d watches failed\n", failed.Load(), *n)
		os.Exit(1)
	}
}
