"""Where snapshots come from and registrations go: the records and the Registry protocol (base),
the backends (file, etcd2 and etcd3, with etcd_common), the URL that picks one (open), and the
key tree that turns etcd's keys into a snapshot (keytree). Docstring only: import the modules."""
