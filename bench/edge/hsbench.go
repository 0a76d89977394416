// hsbench: TLS handshake client for Veil's edge benchmarks (Go, stdlib only).
//
// Three modes, chosen by the first argument:
//
//	hsbench load  -addr 127.0.0.1:18443 -sni www.bench.test -c 50 -d 10s
//	    -c workers, each in a loop: TCP connect, full TLS handshake, send
//	    close_notify, read until the server's close (or EOF), close.  No
//	    application data is sent.  No session is ever resumed: there is no
//	    client session cache, so no ticket or session id is offered.  Key
//	    exchange is X25519 only.  Prints one JSON object.
//
//	hsbench first -addr ... -names a.test,b.test -passes 2 -cafile roots.pem
//	    One handshake at a time, for every name in order, then again for every
//	    name (pass 2, ...).  Each is timed from the start of the TCP connect to
//	    the end of the handshake; the chain is verified against -cafile and the
//	    host name checked.  Prints one JSON object with every handshake.
//
//	hsbench idle -addr ... -sni ... -n 2000 -hold 12s
//	    Opens -n TLS connections (16 at a time), each makes one keep-alive
//	    GET and reads the whole response, then stays open and idle.  Prints
//	    one JSON line once all are open (or the open phase ran out of time),
//	    then holds them until stdin is closed or -hold passes, then closes all.
//
// Every mode stops by itself: load after -d (at most 10 s) plus a 2 s grace for
// the connections in flight, first after -timeout per handshake, idle after
// -hold (at most 15 s).
package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: hsbench load|first|idle [flags]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "load":
		load(os.Args[2:])
	case "first":
		first(os.Args[2:])
	case "idle":
		idle(os.Args[2:])
	default:
		fmt.Fprintln(os.Stderr, "usage: hsbench load|first|idle [flags]")
		os.Exit(2)
	}
}

// clientConfig: TLS 1.2+, X25519 only, ALPN http/1.1, no session cache.
func clientConfig(sni, cafile string) *tls.Config {
	cfg := &tls.Config{
		ServerName:       sni,
		MinVersion:       tls.VersionTLS12,
		CurvePreferences: []tls.CurveID{tls.X25519},
		NextProtos:       []string{"http/1.1"},
	}
	if cafile == "" {
		// Like wrk/h2load/tlsconn: the chain is not checked, but the server's
		// CertificateVerify signature still is (it is part of the handshake).
		cfg.InsecureSkipVerify = true
	} else {
		pem, err := os.ReadFile(cafile)
		if err != nil {
			fatal(err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			fatal(fmt.Errorf("no certificate in %s", cafile))
		}
		cfg.RootCAs = pool
	}
	return cfg
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "hsbench:", err)
	os.Exit(1)
}

func tlsVersion(v uint16) string {
	switch v {
	case tls.VersionTLS13:
		return "TLSv1.3"
	case tls.VersionTLS12:
		return "TLSv1.2"
	}
	return fmt.Sprintf("0x%04x", v)
}

func keyKind(c *x509.Certificate) string {
	switch k := c.PublicKey.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA-%d", k.N.BitLen())
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return "unknown"
}

func errKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "other"
}

// ---------------------------------------------------------------------------
// load: full handshakes per second

type loadWorker struct {
	ok, resumed int
	errors      map[string]int
	closes      map[string]int
	lat         []time.Duration
	desc        string
	firstErr    string
}

type loadResult struct {
	Handshakes int            `json:"handshakes"`
	Seconds    float64        `json:"seconds"`
	Rate       float64        `json:"handshakes_per_s"`
	Resumed    int            `json:"resumed"`
	Errors     map[string]int `json:"errors"`
	Closes     map[string]int `json:"closes"`
	P50ms      float64        `json:"p50_ms"`
	P99ms      float64        `json:"p99_ms"`
	TLS        string         `json:"tls"`
	FirstError string         `json:"first_error,omitempty"`
}

func load(argv []string) {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:18443", "host:port")
	sni := fs.String("sni", "www.bench.test", "server name")
	conc := fs.Int("c", 50, "concurrent connections")
	dur := fs.Duration("d", 10*time.Second, "duration (at most 10s)")
	cafile := fs.String("cafile", "", "verify the chain against these roots (default: no chain check)")
	fs.Parse(argv)
	if *dur > 10*time.Second {
		*dur = 10 * time.Second
	}
	cfg := clientConfig(*sni, *cafile)
	start := time.Now()
	deadline := start.Add(*dur)
	workers := make([]*loadWorker, *conc)
	var wg sync.WaitGroup
	for i := range workers {
		w := &loadWorker{errors: map[string]int{}, closes: map[string]int{}}
		workers[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				w.one(cfg, *addr, deadline)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	res := loadResult{Errors: map[string]int{}, Closes: map[string]int{}, Seconds: elapsed}
	var lat []time.Duration
	for _, w := range workers {
		res.Handshakes += w.ok
		res.Resumed += w.resumed
		for k, v := range w.errors {
			res.Errors[k] += v
		}
		for k, v := range w.closes {
			res.Closes[k] += v
		}
		lat = append(lat, w.lat...)
		if res.TLS == "" {
			res.TLS = w.desc
		}
		if res.FirstError == "" {
			res.FirstError = w.firstErr
		}
	}
	res.Rate = float64(res.Handshakes) / elapsed
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000
	}
	res.P50ms, res.P99ms = pct(0.50), pct(0.99)
	json.NewEncoder(os.Stdout).Encode(res)
}

func (w *loadWorker) fail(stage string, err error) {
	w.errors[stage+"_"+errKind(err)]++
	if w.firstErr == "" {
		w.firstErr = stage + ": " + err.Error()
	}
}

// one connection: connect, handshake, close_notify, wait for the server's
// close, close.  A handshake counts once it has completed, whatever the close.
func (w *loadWorker) one(cfg *tls.Config, addr string, deadline time.Time) {
	t0 := time.Now()
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		w.fail("connect", err)
		time.Sleep(10 * time.Millisecond)
		return
	}
	defer raw.Close()
	raw.SetDeadline(deadline.Add(2 * time.Second))
	c := tls.Client(raw, cfg)
	if err := c.Handshake(); err != nil {
		w.fail("handshake", err)
		return
	}
	w.lat = append(w.lat, time.Since(t0))
	w.ok++
	st := c.ConnectionState()
	if st.DidResume {
		w.resumed++
	}
	if w.desc == "" && len(st.PeerCertificates) > 0 {
		w.desc = fmt.Sprintf("%s %s, %s leaf, chain of %d, ALPN %q", tlsVersion(st.Version),
			tls.CipherSuiteName(st.CipherSuite), keyKind(st.PeerCertificates[0]),
			len(st.PeerCertificates), st.NegotiatedProtocol)
	}
	// close_notify, then read until the server closes too: this makes sure the
	// server has read our Finished (TLS 1.3 servers also send their session
	// tickets here, which this client ignores: it has no session cache).
	if err := c.CloseWrite(); err != nil {
		w.closes["closewrite_"+errKind(err)]++
		return
	}
	raw.SetReadDeadline(time.Now().Add(2 * time.Second))
	var buf [512]byte
	for {
		_, err := c.Read(buf[:])
		if err == nil {
			continue
		}
		if err == io.EOF {
			w.closes["close_notify"]++ // the server answered with close_notify
		} else {
			w.closes[errKind(err)]++
		}
		return
	}
}

// ---------------------------------------------------------------------------
// first: time to first (and later) handshake for given names

type handshake struct {
	Name     string  `json:"name"`
	Pass     int     `json:"pass"`
	OK       bool    `json:"ok"`
	Ms       float64 `json:"ms"`
	Error    string  `json:"error,omitempty"`
	Serial   string  `json:"serial,omitempty"`
	Issuer   string  `json:"issuer,omitempty"`
	Key      string  `json:"key,omitempty"`
	SAN      string  `json:"san,omitempty"`
	Chain    int     `json:"chain,omitempty"`
	TLS      string  `json:"tls,omitempty"`
	Verified bool    `json:"verified"`
	Start    float64 `json:"start_unix"`
}

func first(argv []string) {
	fs := flag.NewFlagSet("first", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:18443", "host:port")
	names := fs.String("names", "", "comma-separated server names, in order")
	passes := fs.Int("passes", 2, "how many times to go through the names")
	cafile := fs.String("cafile", "", "roots to verify the chain against (required)")
	timeout := fs.Duration("timeout", 30*time.Second, "per handshake")
	gap := fs.Duration("gap", 500*time.Millisecond, "pause between handshakes")
	fs.Parse(argv)
	if *names == "" || *cafile == "" {
		fatal(errors.New("first: -names and -cafile are required"))
	}
	var out []handshake
	for pass := 1; pass <= *passes; pass++ {
		for _, name := range strings.Split(*names, ",") {
			out = append(out, timedHandshake(*addr, name, pass, clientConfig(name, *cafile), *timeout))
			time.Sleep(*gap)
		}
	}
	json.NewEncoder(os.Stdout).Encode(map[string]interface{}{"handshakes": out})
}

func timedHandshake(addr, name string, pass int, cfg *tls.Config, timeout time.Duration) handshake {
	h := handshake{Name: name, Pass: pass}
	t0 := time.Now()
	h.Start = float64(t0.UnixNano()) / 1e9
	raw, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		h.Error = "connect: " + err.Error()
		return h
	}
	defer raw.Close()
	raw.SetDeadline(t0.Add(timeout))
	c := tls.Client(raw, cfg)
	err = c.Handshake()
	h.Ms = float64(time.Since(t0).Microseconds()) / 1000
	if err != nil {
		h.Error = "handshake: " + err.Error()
		return h
	}
	st := c.ConnectionState()
	h.OK, h.Verified = true, len(st.VerifiedChains) > 0
	leaf := st.PeerCertificates[0]
	h.Serial = leaf.SerialNumber.Text(16)
	h.Issuer = leaf.Issuer.CommonName
	h.Key = keyKind(leaf)
	h.SAN = strings.Join(leaf.DNSNames, " ")
	h.Chain = len(st.PeerCertificates)
	h.TLS = tlsVersion(st.Version) + " " + tls.CipherSuiteName(st.CipherSuite)
	c.CloseWrite()
	return h
}

// ---------------------------------------------------------------------------
// idle: many open, idle TLS connections

func idle(argv []string) {
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:18443", "host:port")
	sni := fs.String("sni", "www.bench.test", "server name and Host")
	n := fs.Int("n", 2000, "connections")
	cafile := fs.String("cafile", "", "roots to verify the chain against (default: no chain check)")
	open := fs.Duration("open", 10*time.Second, "time allowed to open them all")
	hold := fs.Duration("hold", 12*time.Second, "keep them open at most this long (at most 15s)")
	fs.Parse(argv)
	if *hold > 15*time.Second {
		*hold = 15 * time.Second
	}
	cfg := clientConfig(*sni, *cafile)
	req := []byte(fmt.Sprintf("GET / HTTP/1.1\r\nHost: %s\r\n\r\n", *sni))
	start := time.Now()
	openBy := start.Add(*open)
	var mu sync.Mutex
	conns := make([]net.Conn, 0, *n)
	errs := map[string]int{}
	statuses := map[int]int{}
	firstErr := ""
	todo := make(chan struct{}, *n)
	for i := 0; i < *n; i++ {
		todo <- struct{}{}
	}
	close(todo)
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range todo {
				if time.Now().After(openBy) {
					return
				}
				c, status, err := openOne(*addr, cfg, req, openBy)
				mu.Lock()
				if err != nil {
					errs[err.Error()[:min(len(err.Error()), 40)]]++
					if firstErr == "" {
						firstErr = err.Error()
					}
				} else {
					conns = append(conns, c)
					statuses[status]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	json.NewEncoder(os.Stdout).Encode(map[string]interface{}{
		"opened": len(conns), "wanted": *n, "errors": errs, "statuses": statuses,
		"first_error": firstErr, "open_seconds": time.Since(start).Seconds()})
	os.Stdout.Sync()
	done := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(done) }()
	select {
	case <-done:
	case <-time.After(*hold):
	}
	for _, c := range conns {
		c.Close()
	}
}

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}

func openOne(addr string, cfg *tls.Config, req []byte, by time.Time) (net.Conn, int, error) {
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, 0, err
	}
	raw.SetDeadline(by.Add(2 * time.Second))
	c := tls.Client(raw, cfg)
	if err := c.Handshake(); err != nil {
		raw.Close()
		return nil, 0, err
	}
	if _, err := c.Write(req); err != nil {
		raw.Close()
		return nil, 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		raw.Close()
		return nil, 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.Close {
		raw.Close()
		return nil, 0, fmt.Errorf("server asked to close after the response (status %d)", resp.StatusCode)
	}
	raw.SetDeadline(time.Time{})
	return c, resp.StatusCode, nil
}
