"""The frontend's own pages: the index of deployments, deployments.json and the 404 pages,
made from the routing table (pages) and written to site_dir (writer)."""
