// pause: the sandbox ("pause") container of the one-node cluster. It holds the pod's
// namespaces and does nothing else: it waits for SIGINT or SIGTERM and exits 0. Built
// statically here so no registry is needed (imagePullPolicy: Never everywhere).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	// As PID 1 of the pod it also inherits orphans; reap them so none stays a zombie.
	chld := make(chan os.Signal, 16)
	signal.Notify(chld, syscall.SIGCHLD)
	for {
		select {
		case <-stop:
			os.Exit(0)
		case <-chld:
			for {
				var ws syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
		}
	}
}
