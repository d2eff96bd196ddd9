"""Running a sweep: the controller's state machine, attempts on providers' nodes, run state in SQLite, events, ledger."""
