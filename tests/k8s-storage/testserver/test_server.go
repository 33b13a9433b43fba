// Package testserver is our stand-in for k8s.io/apiserver/pkg/storage/etcd3/testserver.
//
// run.sh builds the upstream storage tests with `go test -overlay`, which swaps upstream's
// test_server.go for this file. The exported API (NewTestConfig, RunEtcd) keeps upstream's
// signatures so the upstream tests compile unchanged, but instead of an embedded etcd every
// RunEtcd starts one netsy process ($NETSY_BIN) on free loopback ports with a fresh data
// directory, waits until its /health answers 200, and returns a client pointing at it. The
// process is stopped when the test ends.
//
// The *embed.Config only carries the settings upstream tests change; no etcd is started from it:
//   - WatchProgressNotifyInterval -> --watch-progress-notify-interval
//   - ClientTLSInfo / https URLs  -> the five NETSY_TLS_* files and an https endpoint
//   - Dir                         -> --data-dir
//
// Everything else (QuotaBackendBytes, UnsafeNoFsync, peer URLs, ...) is ignored.
//
// The file is also a package of our own module, so `go vet ./...` there checks it.
package testserver

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/kubernetes"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	storagetesting "k8s.io/apiserver/pkg/storage/testing"
)

const (
	// How long a netsy node may take to answer /health with 200.
	startTimeout = 30 * time.Second
	// How long a stopping node gets after SIGTERM before it is killed.
	stopTimeout = 10 * time.Second
	// Attempts with fresh ports when a node dies before it is healthy (a port taken meanwhile).
	startAttempts = 3
	// Lines of the node's log shown when a test fails.
	logTailLines = 40
)

// NewTestConfig returns the configuration upstream tests may adjust before RunEtcd.
func NewTestConfig(t testing.TB) *embed.Config {
	cfg := embed.NewConfig()
	cfg.Dir = t.TempDir()
	if err := os.Chmod(cfg.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// startMu serialises port picking and start-up inside one test binary.
var startMu sync.Mutex

// RunEtcd starts a netsy node configured from cfg (NewTestConfig(t) when nil) and returns a
// client connected to it, wrapped in upstream's recorders exactly as upstream's RunEtcd does
// (some tests count the reads they cause). The node is stopped when the test ends.
func RunEtcd(t testing.TB, cfg *embed.Config) *kubernetes.Client {
	t.Helper()
	if cfg == nil {
		cfg = NewTestConfig(t)
	}
	bin := os.Getenv("NETSY_BIN")
	if bin == "" {
		t.Fatal("NETSY_BIN is not set: it must name the netsy binary to test (run.sh sets it)")
	}

	useTLS := !cfg.ClientTLSInfo.Empty() ||
		(len(cfg.ListenClientUrls) > 0 && cfg.ListenClientUrls[0].Scheme == "https")
	scheme := "http"
	if useTLS {
		scheme = "https"
	}

	startMu.Lock()
	var node *netsyNode
	var err error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		node, err = startNode(t, bin, cfg, attempt)
		if err == nil {
			break
		}
		t.Logf("netsy start attempt %d/%d failed: %v", attempt, startAttempts, err)
	}
	startMu.Unlock()
	if err != nil {
		t.Fatalf("netsy did not start: %v", err)
	}

	var clientTLS *tls.Config
	if useTLS {
		if clientTLS, err = cfg.ClientTLSInfo.ClientConfig(); err != nil {
			t.Fatal(err)
		}
	}
	client, err := kubernetes.New(clientv3.Config{
		TLS:         clientTLS,
		Endpoints:   []string{scheme + "://" + node.clientAddr},
		DialTimeout: 10 * time.Second,
		Logger:      zaptest.NewLogger(t, zaptest.Level(zapcore.ErrorLevel)).Named("etcd-client"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })

	recorder := storagetesting.NewKubernetesRecorder(client.Kubernetes)
	client.KV = storagetesting.NewKVRecorder(client.KV, recorder)
	client.Kubernetes = recorder
	return client
}

// netsyNode is one running netsy process.
type netsyNode struct {
	cmd        *exec.Cmd
	clientAddr string
	healthURL  string
	logPath    string
	exited     chan struct{} // closed when the process has exited
	exitErr    error         // valid after exited is closed
}

// startNode picks free loopback ports, starts netsy and waits for its /health. On success the
// node is stopped (and its log shown if the test failed) at test cleanup.
func startNode(t testing.TB, bin string, cfg *embed.Config, attempt int) (*netsyNode, error) {
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	dataDir := cfg.Dir
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	// A failed attempt may have left files behind; each attempt gets its own directory.
	dataDir = filepath.Join(dataDir, fmt.Sprintf("netsy-%d", attempt))
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, err
	}
	logPath, err := logFilePath(t, attempt)
	if err != nil {
		return nil, err
	}
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}

	node := &netsyNode{
		clientAddr: fmt.Sprintf("127.0.0.1:%d", ports[0]),
		healthURL:  fmt.Sprintf("http://127.0.0.1:%d/health", ports[2]),
		logPath:    logPath,
		exited:     make(chan struct{}),
	}
	args := []string{
		"--data-dir", dataDir,
		"--bind-client", node.clientAddr,
		"--bind-peer", fmt.Sprintf("127.0.0.1:%d", ports[1]),
		"--bind-health", fmt.Sprintf("127.0.0.1:%d", ports[2]),
	}
	// Like etcd, zero (embed.NewConfig's value) means "server default" (10m).
	if cfg.WatchProgressNotifyInterval > 0 {
		args = append(args, "--watch-progress-notify-interval",
			fmt.Sprintf("%dms", cfg.WatchProgressNotifyInterval.Milliseconds()))
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = netsyEnv(cfg)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// If the test binary dies (e.g. go test's -timeout panic skips cleanups), take netsy along.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, err
	}
	node.cmd = cmd
	go func() {
		node.exitErr = cmd.Wait()
		logFile.Close()
		close(node.exited)
	}()

	if err := node.waitHealthy(); err != nil {
		node.stop()
		return nil, fmt.Errorf("%w\n%s", err, tail(logPath, logTailLines))
	}
	t.Cleanup(func() {
		stopErr := node.stop()
		if stopErr != nil {
			t.Errorf("netsy did not stop cleanly: %v", stopErr)
		}
		if t.Failed() {
			t.Logf("last lines of the netsy log (%s):\n%s", logPath, tail(logPath, logTailLines))
		}
	})
	return node, nil
}

// logFilePath is where a node's output goes: under $NETSY_TEST_LOG_DIR (kept after the run,
// one file per test and attempt) when set, else in the test's temporary directory.
func logFilePath(t testing.TB, attempt int) (string, error) {
	dir := os.Getenv("NETSY_TEST_LOG_DIR")
	if dir == "" {
		return filepath.Join(t.TempDir(), fmt.Sprintf("netsy-%d.log", attempt)), nil
	}
	name := strings.Map(func(r rune) rune {
		if r == '/' || r == ' ' || r == ':' || r == os.PathSeparator {
			return '_'
		}
		return r
	}, t.Name())
	if len(name) > 150 {
		name = name[:150]
	}
	f, err := os.CreateTemp(dir, fmt.Sprintf("%s-%d-*.log", name, attempt))
	if err != nil {
		return "", err
	}
	f.Close()
	return f.Name(), nil
}

// netsyEnv is the test binary's environment without any NETSY_* variable (so a developer's
// shell cannot change the node), plus TLS settings when the test asks for TLS.
func netsyEnv(cfg *embed.Config) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NETSY_") {
			env = append(env, kv)
		}
	}
	env = append(env, "NETSY_LOG_FORMAT=json")
	// netsy takes all five files or none; the test's one certificate serves as both the
	// server's and the node's outbound (client) identity.
	if info := cfg.ClientTLSInfo; !info.Empty() {
		env = append(env,
			"NETSY_TLS_CA_CERT="+info.TrustedCAFile,
			"NETSY_TLS_SERVER_CERT="+info.CertFile, "NETSY_TLS_SERVER_KEY="+info.KeyFile,
			"NETSY_TLS_CLIENT_CERT="+info.CertFile, "NETSY_TLS_CLIENT_KEY="+info.KeyFile)
	}
	return env
}

// waitHealthy polls /health until it answers 200, the process exits, or startTimeout passes.
func (n *netsyNode) waitHealthy() error {
	httpClient := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		resp, err := httpClient.Get(n.healthURL)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-n.exited:
			return fmt.Errorf("netsy exited before it was healthy: %v", n.exitErr)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("netsy was not healthy after %s", startTimeout)
}

// stop sends SIGTERM, waits up to stopTimeout, then kills. It reports a node that had already
// died, or that had to be killed.
func (n *netsyNode) stop() error {
	select {
	case <-n.exited:
		return fmt.Errorf("netsy had exited during the test: %v", n.exitErr)
	default:
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
		var exitErr *exec.ExitError
		if n.exitErr != nil && !errors.As(n.exitErr, &exitErr) {
			return n.exitErr
		}
		return nil
	case <-time.After(stopTimeout):
		_ = n.cmd.Process.Kill()
		<-n.exited
		return fmt.Errorf("netsy ignored SIGTERM for %s and was killed", stopTimeout)
	}
}

// freePorts returns count distinct loopback ports that were free a moment ago.
func freePorts(count int) ([]int, error) {
	var ports []int
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	for range count {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("no free loopback port: %w", err)
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// tail returns the last n lines of a node's log, leaving out the frames of a Rust backtrace
// (a panic's own line is kept), or a note why it cannot.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if isBacktraceFrame(line) {
			continue
		}
		lines = append(lines, line)
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// isBacktraceFrame matches "  12: symbol" and "      at path:line" lines of a Rust backtrace.
func isBacktraceFrame(line string) bool {
	t := strings.TrimSpace(line)
	if t == line { // frames are indented
		return false
	}
	if strings.HasPrefix(t, "at ") {
		return true
	}
	i := strings.IndexByte(t, ':')
	if i <= 0 {
		return false
	}
	for _, r := range t[:i] {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}
