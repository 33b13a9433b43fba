// Command csi-registrar registers a CSI driver's socket with the kubelet, as the
// node-driver-registrar sidecar does (that program is not served by the Go module proxy on this
// machine). It serves the kubelet's plugin-registration API on a socket in the kubelet's
// plugins_registry directory; the kubelet's plugin watcher finds the socket, asks for the
// driver's name and endpoint, and then talks CSI to the driver directly.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	registration "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type registrar struct {
	registration.UnimplementedRegistrationServer
	name     string
	endpoint string
}

func (r *registrar) GetInfo(context.Context, *registration.InfoRequest) (*registration.PluginInfo, error) {
	return &registration.PluginInfo{
		Type:              registration.CSIPlugin,
		Name:              r.name,
		Endpoint:          r.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (r *registrar) NotifyRegistrationStatus(_ context.Context, s *registration.RegistrationStatus) (*registration.RegistrationStatusResponse, error) {
	if !s.PluginRegistered {
		// The kubelet tries again later while this socket exists.
		klog.ErrorS(nil, "the kubelet did not register the driver", "driver", r.name, "error", s.Error)
		return &registration.RegistrationStatusResponse{}, nil
	}
	klog.InfoS("registered with the kubelet", "driver", r.name, "endpoint", r.endpoint)
	return &registration.RegistrationStatusResponse{}, nil
}

func main() {
	name := flag.String("driver-name", "", "the CSI driver's name")
	endpoint := flag.String("csi-address", "", "the driver's CSI socket path, as the kubelet reaches it")
	registry := flag.String("registry-dir", "/var/lib/kubelet/plugins_registry", "the kubelet's plugin registry directory")
	klog.InitFlags(nil)
	flag.Parse()
	if *name == "" || *endpoint == "" {
		fmt.Fprintln(os.Stderr, "csi-registrar: --driver-name and --csi-address are required")
		os.Exit(2)
	}
	// Like node-driver-registrar: offer the driver to the kubelet only once its CSI socket
	// accepts connections, so the kubelet's first attempt can reach it.
	if err := waitForSocket(*endpoint, 60*time.Second); err != nil {
		klog.ErrorS(err, "the driver's CSI socket", "path", *endpoint)
		os.Exit(1)
	}
	socket := filepath.Join(*registry, *name+"-reg.sock")
	_ = os.Remove(socket)
	l, err := net.Listen("unix", socket)
	if err != nil {
		klog.ErrorS(err, "listen", "socket", socket)
		os.Exit(1)
	}
	srv := grpc.NewServer()
	registration.RegisterRegistrationServer(srv, &registrar{name: *name, endpoint: *endpoint})
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
		<-sig
		srv.Stop()
		_ = os.Remove(socket)
	}()
	klog.InfoS("serving plugin registration", "socket", socket)
	if err := srv.Serve(l); err != nil {
		klog.ErrorS(err, "serve")
		os.Exit(1)
	}
}

// waitForSocket dials the unix socket at path until it accepts a connection or timeout passes.
func waitForSocket(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no connection within %s: %w", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
