"""What a person reads: live progress, reports, plan and cost tables, --explain."""
