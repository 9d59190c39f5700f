module local/vsolab/krpbuild

go 1.26.5

require github.com/brancz/kube-rbac-proxy v0.18.1 // indirect
