// Small harness programs of the one-node Kubernetes run (run.sh). The Kubernetes components
// themselves are built from the module graph of ../kube-apiserver.
module netsy/tests/k8s-e2e

go 1.26.0
