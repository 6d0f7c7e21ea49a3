// Command latency measures request latency at a fixed request rate, for
// compare.sh: wrk measures how fast a proxy can go, this measures what a
// proxy adds to each request when it is not saturated.
//
// Requests are sent on a fixed schedule (open loop) and each latency is
// counted from when the request was due, so a stall shows up in the
// percentiles instead of silently lowering the rate.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	target := flag.String("url", "", "`URL` to GET")
	rate := flag.Int("rate", 1000, "requests per second")
	duration := flag.Duration("duration", 10*time.Second, "how long to send")
	conns := flag.Int("conns", 8, "keep-alive connections")
	caFile := flag.String("cacert", "", "CA `file` to trust for https")
	flag.Parse()
	if *target == "" || *rate <= 0 {
		fmt.Fprintln(os.Stderr, "latency: -url and a positive -rate are required")
		os.Exit(2)
	}
	tlsConfig := &tls.Config{}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "latency:", err)
			os.Exit(2)
		}
		tlsConfig.RootCAs = x509.NewCertPool()
		tlsConfig.RootCAs.AppendCertsFromPEM(pem)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: tlsConfig, MaxConnsPerHost: *conns, MaxIdleConnsPerHost: *conns, DisableCompression: true,
	}}
	// Warm the connections up.
	for range *conns * 4 {
		if resp, err := client.Get(*target); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}

	total := int(duration.Seconds() * float64(*rate))
	interval := time.Second / time.Duration(*rate)
	latencies := make([]time.Duration, total)
	var failures atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for i := range total {
		due := start.Add(time.Duration(i) * interval)
		time.Sleep(time.Until(due))
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Get(*target)
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("%s", resp.Status)
				}
			}
			if err != nil {
				failures.Add(1)
			}
			latencies[i] = time.Since(due)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(latencies)
	pct := func(p float64) float64 {
		return float64(latencies[int(p/100*float64(len(latencies)-1))]) / float64(time.Millisecond)
	}
	fmt.Printf("RESULT rps=%.0f p50_ms=%.3f p99_ms=%.3f requests=%d non2xx=%d sockerr=0\n",
		float64(total)/elapsed.Seconds(), pct(50), pct(99), total, failures.Load())
}
