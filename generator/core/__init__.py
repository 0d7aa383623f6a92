"""The pure core: registry snapshot -> validated deployments -> routing table -> nginx text,
checked against the table. Plain data in and out."""
