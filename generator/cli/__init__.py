"""The command line: `devtest-router <command>` and its exit codes."""
