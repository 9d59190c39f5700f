module local/vsolab/helmbuild

go 1.26.5

require helm.sh/helm/v3 v3.22.0 // indirect
