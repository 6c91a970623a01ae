// Package deploy holds no code, only tests of what deploy/kubernetes and
// README.md and docs/ tell a user to run: the Kubernetes manifests are decoded strictly
// into the Kubernetes API types and checked against each other, and every
// Corefile among them, elsewhere under deploy/, in README.md and in docs/ is started on
// the real CoreDNS binary, built by scripts/build-static.sh as scripts/image.sh
// builds it, on loopback only.
package deploy
