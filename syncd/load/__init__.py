"""Reading `taskdefs/`: safe YAML with positions, one-pass validation, every problem as
`path:line:col`. Reads files (or blobs from git) and touches no store."""
