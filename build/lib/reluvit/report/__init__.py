"""Reports: the roll-up of run summaries into one table, and the paper's figures drawn from it."""
