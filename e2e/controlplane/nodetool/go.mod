module e2e.local/controlplane/nodetool

go 1.26.0
