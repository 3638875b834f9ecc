"""What an operator reads: status, reports, the live progress table, the dry run. Views read
the journal and the engine's snapshots; they never change a run."""
