"""Where snapshots come from and registrations go: the Registry protocol, the file registry,
etcd's v2 and v3 APIs, and the key tree that turns etcd's keys into a snapshot."""
